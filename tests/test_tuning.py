"""Hyperparameter search: leak-free folds, shared initial weights, resume, best.yaml."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import keras
import keras_tuner
import numpy as np
import pytest

from cm_unet_keras import CMUNet, tuning
from cm_unet_keras.cli import main
from cm_unet_keras.config import FinetuneConfig, build_config, write_recipe
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import AngiogramRecord
from cm_unet_keras.evaluation.evaluate import evaluate_model
from cm_unet_keras.inference.predict import load_model
from cm_unet_keras.training import finetune as finetune_module
from cm_unet_keras.tuning import (
    DEFAULT_SPACE,
    FinetuneHyperModel,
    TuneConfig,
    changed_settings,
    load_space,
    make_folds,
    resolve_space,
    tune,
)

ROOT = Path(__file__).resolve().parents[1]
# KerasTuner's oracle still calls threading's camelCase names: not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:currentThread:DeprecationWarning", "ignore:getName:DeprecationWarning"
)
SPACE = (
    "lr: {type: float, min: 1.0e-4, max: 1.0e-2, sampling: log}\n"
    "dice_weight: {type: float, min: 0.0, max: 1.0}\n"
)


def _base_config(**overrides):
    values = dict(base_filters=4, depth=2, epochs=2, steps_per_epoch=2, batch_size=2, patch_size=32,
                  precision="float32")
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def dataset(synthetic_dataset, tmp_path_factory):
    synthetic = synthetic_dataset(6, size=64, seed=11)
    folder = tmp_path_factory.mktemp("tuning")
    space = folder / "space.yaml"
    space.write_text(SPACE)
    keras.utils.set_random_seed(123)
    init = folder / "init.keras"
    CMUNet(base_filters=4, depth=2).save(init)
    return SimpleNamespace(folder=synthetic.folder, records=synthetic.records, space=str(space), init=str(init))


class Recorder:
    """Counts `FinetuneHyperModel.fit` calls and keeps each fresh fold's starting weights."""

    def __init__(self, monkeypatch):
        self.fits = 0
        self.starts = {}  # id(model) -> weights when its training begins
        fit, set_trainable = FinetuneHyperModel.fit, finetune_module.set_encoder_trainable

        def counting_fit(hypermodel, *args, **kwargs):
            self.fits += 1
            return fit(hypermodel, *args, **kwargs)

        def recording_set_trainable(model, trainable):
            # Called before the first compile of a fresh (not resumed) run.
            self.starts.setdefault(id(model), [w.copy() for w in model.get_weights()])
            return set_trainable(model, trainable)

        monkeypatch.setattr(FinetuneHyperModel, "fit", counting_fit)
        monkeypatch.setattr(finetune_module, "set_encoder_trainable", recording_set_trainable)


class Interrupted(BaseException):
    """Stands for a kill: KerasTuner turns an Exception into a failed trial."""


@pytest.fixture(scope="module")
def search(dataset, tmp_path_factory):
    """A 2-trial, 2-fold search killed in its second trial, resumed, then rerun."""
    out = tmp_path_factory.mktemp("search") / "tune"
    base = _base_config(init=dataset.init)
    settings = TuneConfig(algorithm="random", max_trials=2, folds=2, space=dataset.space, seed=0)
    seen = []

    def kill_in_second_trial(message):
        # Logged after epoch 1 of a fold is checkpointed; trial 0 passes it first.
        if "fold 2/2] epoch 1/" in message:
            seen.append(message)
            if len(seen) == 2:
                raise Interrupted

    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder = Recorder(monkeypatch)
        with pytest.raises(Interrupted):
            tune(base, settings, dataset.records, out, log=kill_in_second_trial, verbose=0)
        fits_when_killed = recorder.fits
        # Saved at trial 0's end: a killed call keeps its time.
        seconds_when_killed = json.loads((out / "wall_seconds.json").read_text())["seconds"]
        resumed = tune(base, settings, dataset.records, out, log=lambda m: None, verbose=0)
        fits_after_resume = recorder.fits
        rerun = tune(base, settings, dataset.records, out, log=lambda m: None, verbose=0)
    return SimpleNamespace(
        out=out, base=base, settings=settings, recorder=recorder, resumed=resumed, rerun=rerun,
        fits_when_killed=fits_when_killed, fits_after_resume=fits_after_resume,
        seconds_when_killed=seconds_when_killed,
        trials=list(csv.DictReader((out / "trials.csv").open())),
    )


def test_make_folds_partitions_the_pairs():
    records = [AngiogramRecord(f"r{i}", f"r{i}.png", f"r{i}_gt.png") for i in range(10)]
    for k in (2, 3, 5, 10):
        folds = make_folds(records, k, seed=4)
        assert len(folds) == k
        vals = [{r.name for r in val} for _, val in folds]
        assert set().union(*vals) == {r.name for r in records}
        assert sum(len(v) for v in vals) == len(records)  # disjoint
        for (train, val), names in zip(folds, vals):
            assert not {r.name for r in train} & names
            assert len(train) + len(val) == len(records)
    assert make_folds(records, 3, seed=4) == make_folds(records, 3, seed=4)
    assert make_folds(records, 3, seed=4) != make_folds(records, 3, seed=5)
    with pytest.raises(ValueError, match="folds"):
        make_folds(records, 11, seed=0)


def test_search_writes_every_trial_and_a_best_recipe(search):
    assert [row["trial_id"] for row in search.trials] == ["0", "1"]
    assert all(row["status"] == "COMPLETED" for row in search.trials)
    # Trial 0 is the base configuration: the defaults are measured under the same folds.
    assert float(search.trials[0]["lr"]) == search.base.lr
    assert float(search.trials[0]["dice_weight"]) == search.base.dice_weight
    scores = [float(row["val_dice"]) for row in search.trials]
    for row in search.trials:
        folds = [float(row[f"val_dice_fold{i}"]) for i in range(2)]
        assert float(row["val_dice"]) == pytest.approx(np.mean(folds))
    best = build_config(FinetuneConfig, search.out / "best.yaml")
    best_row = search.trials[int(np.argmax(scores))]
    assert search.resumed["best_val_dice"] == pytest.approx(max(scores))
    assert best.lr == pytest.approx(float(best_row["lr"]))
    assert best.dice_weight == pytest.approx(float(best_row["dice_weight"]))
    assert (best.base_filters, best.depth, best.epochs, best.init) == (4, 2, 2, search.base.init)


def test_rerun_repeats_no_trial_and_no_finished_fold(search):
    assert search.fits_when_killed == 2  # trial 0, and trial 1 killed in its second fold
    assert search.fits_after_resume == 3  # only the unfinished trial ran again
    assert search.recorder.fits == 3  # the last rerun trained nothing
    assert search.rerun["trials"] == 2 and search.rerun["best_trial"] == search.resumed["best_trial"]
    assert search.resumed["seconds_total"] > search.seconds_when_killed + search.resumed["seconds_this_call"] - 1e-6
    assert len(list((search.out / "keras_tuner").glob("trial_*"))) == 2
    # Four fresh fold starts: the killed fold resumed from its checkpoint.
    assert len(search.recorder.starts) == 4
    runs = search.out / search.trials[1]["runs"]
    for fold in range(2):
        history = json.loads((runs / f"fold_{fold}" / "state.json").read_text())["history"]
        assert [row["epoch"] for row in history] == [1, 2]


def test_folds_are_disjoint_cover_the_pairs_and_use_nothing_else(search, dataset):
    names = {record.name for record in dataset.records}
    val_names = []
    for fold in range(2):
        split = json.loads((search.out / search.trials[0]["runs"] / f"fold_{fold}" / "split.json").read_text())
        assert not set(split["train"]) & set(split["val"])
        assert set(split["train"]) | set(split["val"]) == names
        val_names += split["val"]
    assert sorted(val_names) == sorted(names)


def test_every_fold_starts_fresh_from_the_same_initial_weights(search, dataset):
    initial = CMUNet(base_filters=4, depth=2)
    initial.load_weights(search.out / "initial.weights.h5")
    # --init is a whole U-Net: every layer, head included, comes from it.
    source = keras.models.load_model(dataset.init)
    for a, b in zip(initial.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    for weights in search.recorder.starts.values():
        for a, b in zip(weights, initial.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_fold_score_is_the_full_resolution_dice_of_evaluate(search, dataset):
    fold_dir = search.out / search.trials[0]["runs"] / "fold_0"
    val = json.loads((fold_dir / "split.json").read_text())["val"]
    report = evaluate_model(load_model(fold_dir / "model.keras"), [r for r in dataset.records if r.name in val])
    assert report["mean"]["dice"] == pytest.approx(float(search.trials[0]["val_dice_fold0"]), abs=1e-5)


def test_best_recipe_is_accepted_by_finetune(search, dataset, tmp_path):
    code = main([
        "finetune", "--images", str(dataset.folder / "images"), "--masks", str(dataset.folder / "masks"),
        "--config", str(search.out / "best.yaml"), "--out", str(tmp_path / "run"),
        "--epochs", "1", "--steps-per-epoch", "1", "--verbose", "0",
    ])
    assert code == 0
    assert (tmp_path / "run" / "model.keras").is_file()


def test_a_rerun_with_other_settings_is_refused(search, dataset):
    with pytest.raises(InvalidInputError, match="base_config"):
        tune(_base_config(init=dataset.init, epochs=3), search.settings, dataset.records, search.out, verbose=0)


def test_tune_command_runs_hyperband_trials_on_their_own_budget(dataset, tmp_path, monkeypatch, capsys):
    recorder = Recorder(monkeypatch)
    base = tmp_path / "base.yaml"
    base.write_text("batch_size: 2\nsteps_per_epoch: 2\nprecision: float32\n")
    out = tmp_path / "hyperband"
    code = main([
        "tune", "--images", str(dataset.folder / "images"), "--masks", str(dataset.folder / "masks"),
        "--config", str(base), "--space", dataset.space, "--out", str(out), "--algorithm", "hyperband",
        "--hyperband-factor", "2", "--max-trials", "3", "--folds", "1", "--val-fraction", "0.34",
        "--epochs", "2", "--base-filters", "4", "--depth", "2", "--patch-size", "32", "--seed", "0",
    ])
    assert code == 0 and "best cross-validated Dice" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [row["status"] for row in rows] == ["COMPLETED"] * 3
    # Two 1-epoch trials, then the better one promoted to 2 epochs and
    # retrained from the initial weights rather than from its parent's.
    assert [int(row["epochs"]) for row in rows] == [1, 1, 2]
    for row in rows:
        history = json.loads((out / row["runs"] / "fold_0" / "state.json").read_text())["history"]
        assert len(history) == int(row["epochs"])
    initial = CMUNet(base_filters=4, depth=2)
    initial.load_weights(out / "initial.weights.h5")
    assert len(recorder.starts) == 3
    for weights in recorder.starts.values():
        for a, b in zip(weights, initial.get_weights()):
            np.testing.assert_array_equal(a, b)
    best = build_config(FinetuneConfig, out / "best.yaml")
    assert best.batch_size == 2 and best.epochs == int(max(rows, key=lambda r: float(r["val_dice"]))["epochs"])


def test_space_recipe_matches_the_default_space():
    assert load_space(ROOT / "recipes" / "tune_space.yaml") == DEFAULT_SPACE


def test_space_errors_name_the_problem(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("depth: {type: int, min: 2, max: 5}\n")
    with pytest.raises(InvalidInputError, match="cannot be tuned"):
        load_space(bad)
    bad.write_text("lr: {type: float, min: 1.0e-4, maximum: 1.0e-2}\n")
    with pytest.raises(InvalidInputError, match="maximum"):
        load_space(bad)
    with pytest.raises(ValueError, match="outside its search range"):
        resolve_space({"lr": {"type": "float", "min": 1e-5, "max": 1e-3}}, FinetuneConfig(lr=2e-3), "random")
    with pytest.raises(ValueError, match="hyperband"):
        resolve_space({"epochs": {"type": "int", "min": 2, "max": 9}}, FinetuneConfig(), "hyperband")
    space, notes = resolve_space(DEFAULT_SPACE, FinetuneConfig(epochs=6), "random")
    assert "frozen_encoder_epochs" not in space and notes  # no --init: a random encoder is never frozen
    space, _ = resolve_space(DEFAULT_SPACE, FinetuneConfig(epochs=6, init="x.keras"), "random")
    assert space["frozen_encoder_epochs"]["max"] == 5


def test_trial_config_writes_plain_yaml_from_numpy_proposals(tmp_path):
    # The Bayesian oracle proposes numpy floats; best.yaml must still be written.
    hypermodel = FinetuneHyperModel(_base_config(), {"lr": DEFAULT_SPACE["lr"]}, [], tmp_path, tmp_path / "w.weights.h5")
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    hp.values["lr"] = np.float64(3e-4)
    write_recipe(hypermodel.trial_config(hp), tmp_path / "best.yaml")
    assert build_config(FinetuneConfig, tmp_path / "best.yaml").lr == pytest.approx(3e-4)


def test_a_crash_stops_the_search_and_the_rerun_retries_the_trial(dataset, tmp_path, monkeypatch):
    calls = []

    def fake_finetune(config, records, run_dir, **kwargs):
        calls.append(config.lr)
        if len(calls) == 1:
            raise RuntimeError("disk full")
        if len(calls) == 2:
            raise FloatingPointError("loss became nan")  # a diverging fold scores 0
        return {"best_val_dice": 0.5}

    monkeypatch.setattr(tuning.hypermodel, "finetune", fake_finetune)  # what each fold runs
    settings = TuneConfig(algorithm="random", max_trials=1, folds=2, space=dataset.space)
    out = tmp_path / "crash"
    with pytest.raises(keras_tuner.errors.FatalError, match="disk full"):
        tune(_base_config(), settings, dataset.records, out, log=lambda m: None)
    summary = tune(_base_config(), settings, dataset.records, out, log=lambda m: None)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [(row["trial_id"], row["status"]) for row in rows] == [("0", "COMPLETED")]
    assert float(rows[0]["val_dice_fold0"]) == 0.0 and float(rows[0]["val_dice_fold1"]) == 0.5
    assert summary["trials"] == 1 and len(calls) == 3 and len(set(calls)) == 1  # the same trial, retried


def test_a_field_added_to_the_config_keeps_a_search_resumable():
    current = {"base_config": {"lr": 0.002, "deterministic": False}, "space": {}}
    assert changed_settings({"base_config": {"lr": 0.002}, "space": {}}, current) == []
    assert changed_settings({"base_config": {"lr": 0.001}, "space": {}}, current) == ["base_config"]
    assert changed_settings({"base_config": {"lr": 0.002}, "space": {"lr": {}}}, current) == ["space"]
