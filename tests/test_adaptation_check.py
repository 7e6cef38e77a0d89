"""The adaptation check of `cm-unet finetune` (issue 34, items 1 and 2).

Real pixels: CIMAT pairs of the shared data, cropped to 96x96 so that tiny
networks train in seconds. Expected choices come from hand-built scores,
not from the module's own constants.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cm_unet_keras.cli import main
from cm_unet_keras.config import FinetuneConfig
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import index_pairs
from cm_unet_keras.evaluation.evaluate import evaluate_model
from cm_unet_keras.inference.predict import load_model
from cm_unet_keras.models.unet import CMUNet
from cm_unet_keras.training import adaptation_check
from cm_unet_keras.training.adaptation_check import (
    adapt,
    choose,
    choose_settings,
    fold_plan,
    from_record,
    run_check,
    settings_for,
)

TINY = dict(base_filters=4, depth=2, patch_size=32, batch_size=2, precision="float32")
CIMAT_NAMES = ["1", "2", "3", "4"]


@pytest.fixture(scope="module")
def crops(shared_data, tmp_path_factory):
    """Four CIMAT pairs, the 96x96 centre of each (vessels and background)."""
    folder = tmp_path_factory.mktemp("crops")
    for name in CIMAT_NAMES:
        for suffix in ("", "_gt"):
            image = cv2.imread(str(shared_data / "xca_vessels" / "train" / f"{name}{suffix}.png"), cv2.IMREAD_GRAYSCALE)
            assert image is not None, f"shared data lacks xca_vessels/train/{name}{suffix}.png"
            cv2.imwrite(str(folder / f"{name}{suffix}.png"), image[102:198, 102:198])
    return folder


@pytest.fixture(scope="module")
def tiny_start(tmp_path_factory):
    path = tmp_path_factory.mktemp("start") / "tiny.keras"
    CMUNet(base_filters=4, depth=2).save(path)
    return path


def _candidate(steps, lr, dice):
    return {"name": f"{steps}" if steps else "start untouched", "steps": steps, "lr": lr, "dice": list(dice),
            "dice_mean": float(np.mean(dice)), "cldice_mean": float(np.mean(dice))}


def test_fold_plan_is_leave_one_out_then_five_folds():
    assert fold_plan(3, seed=0) == [[0], [1], [2]]
    assert fold_plan(5, seed=0) == [[0], [1], [2], [3], [4]]
    folds = fold_plan(10, seed=0)
    assert len(folds) == 5 and all(len(fold) == 2 for fold in folds)
    assert sorted(index for fold in folds for index in fold) == list(range(10))


def test_the_choice_prefers_fewer_steps_and_the_start_within_a_near_tie():
    start = _candidate(0, None, [0.70, 0.70])
    # A budget 0.02 better wins; of two within 0.005 of the best, the shorter.
    chosen, reason, _ = choose([start, _candidate(50, 2e-3, [0.703, 0.703]), _candidate(100, 2e-3, [0.72, 0.72])])
    assert chosen["steps"] == 100 and "0.720 against 0.700" in reason
    chosen, _, _ = choose([start, _candidate(50, 2e-3, [0.718, 0.718]), _candidate(100, 2e-3, [0.72, 0.72])])
    assert chosen["steps"] == 50
    # 0.004 better is a tie: the start is kept.
    chosen, reason, _ = choose([start, _candidate(100, 2e-3, [0.704, 0.704])])
    assert chosen is start and "kept unchanged" in reason


def test_a_warning_when_the_folds_spread_wider_than_the_gain():
    start = _candidate(0, None, [0.70, 0.70, 0.70])
    # Per-fold gains +0.10, -0.02, +0.04: mean +0.04, spread 0.12.
    _, _, warning = choose([start, _candidate(100, 2e-3, [0.80, 0.68, 0.74])])
    assert warning and "-0.020 to +0.100" in warning and "+0.040" in warning
    _, _, warning = choose([start, _candidate(100, 2e-3, [0.75, 0.74, 0.75])])
    assert warning is None


def test_a_budget_becomes_epochs_of_the_run():
    config = FinetuneConfig(steps_per_epoch=100, lr=2e-3)
    assert (lambda c: (c.epochs, c.steps_per_epoch, c.lr))(settings_for(config, {"steps": 50, "lr": 5e-4})) == \
        (1, 50, 5e-4)
    assert (lambda c: (c.epochs, c.steps_per_epoch, c.lr))(settings_for(config, {"steps": 200, "lr": 2e-3})) == \
        (2, 100, 2e-3)
    assert settings_for(config, {"steps": 0, "lr": None}).epochs == 0


def test_folds_train_only_on_their_other_pairs(crops, tiny_start, monkeypatch):
    trained = []
    real_sampler = adaptation_check.item_sampler

    def recording_sampler(config, items, *args):  # the real sampler, its pairs noted
        trained.append(sorted(item.name for item in items))
        return real_sampler(config, items, *args)

    monkeypatch.setattr(adaptation_check, "item_sampler", recording_sampler)
    records = index_pairs(crops)[:3]
    config = FinetuneConfig(init=str(tiny_start), **TINY)
    record = run_check(config, records, budgets={2e-3: (2, 4)}, log=lambda line: None)
    assert trained == [["2", "3"], ["1", "3"], ["1", "2"]]  # one run per fold, never its held-out pair
    assert [fold["held_out"] for fold in record["folds"]] == [["1"], ["2"], ["3"]]
    assert [fold["trained_on"] for fold in record["folds"]] == trained
    assert [entry["name"] for entry in record["candidates"]] == ["start untouched", "2 steps at lr 0.002",
                                                                 "4 steps at lr 0.002"]
    for entry in record["candidates"]:
        assert len(entry["dice"]) == len(entry["cldice"]) == 3
        assert entry["dice_mean"] == pytest.approx(np.mean(entry["dice"]), abs=1e-4)
        assert entry["dice_range"] == [min(entry["dice"]), max(entry["dice"])]
    # The start is scored on each whole frame as `cm-unet evaluate` scores it.
    report = evaluate_model(load_model(str(tiny_start)), records, threshold=config.threshold)
    assert record["candidates"][0]["dice"] == pytest.approx([row["dice"] for row in report["per_image"]], abs=1e-4)
    assert record["candidates"][0]["cldice"] == pytest.approx([row["cldice"] for row in report["per_image"]],
                                                              abs=1e-4)


def test_the_start_is_kept_when_training_destroys_it(crops, tmp_path):
    # cmunet_small_general segments these frames; lr 10 wrecks it in 2 steps.
    config = FinetuneConfig(init="cmunet_small_general", patch_size=32, batch_size=2, precision="float32")
    run = tmp_path / "kept"
    notes = []
    result = adapt(config, index_pairs(crops)[:2], run, budgets={10.0: (2,)}, note=notes.append, verbose=0)
    record = json.loads((run / "adaptation.json").read_text())
    start, wrecked = record["candidates"]
    assert wrecked["dice_mean"] < start["dice_mean"] - 0.1
    assert record["chosen"] == {"steps": 0, "lr": None} and "kept unchanged" in record["reason"]
    assert result["epochs_done"] == 0 and not (run / "state.json").exists()
    kept = load_model(str(run / "model.keras"))  # predict reads the folder as any run's
    preset = load_model("cmunet_small_general")
    assert all(np.array_equal(a, b) for a, b in zip(kept.get_weights(), preset.get_weights()))
    assert kept.segmentation_settings.source == str(run / "config.yaml")
    assert "## Adaptation check" in (run / "README.md").read_text()

    # A rerun reads the record back; it never checks again, nor trains the kept start.
    written = (run / "adaptation.json").read_bytes()
    notes.clear()
    adapt(config, index_pairs(crops)[:2], run, budgets={10.0: (2,)}, note=notes.append, verbose=0)
    assert notes == ["adaptation check kept from the run's record (adaptation.json): the start is kept unchanged"]
    assert (run / "adaptation.json").read_bytes() == written
    with pytest.raises(InvalidInputError, match="keeps its start unchanged"):
        choose_settings(config, index_pairs(crops)[:2], given={"epochs"}, run_dir=run)


def test_a_rerun_extends_the_recorded_choice():
    record = {"checked": True, "chosen": {"steps": 100, "lr": 5e-4}, "reason": "r"}
    config = FinetuneConfig(init="cmunet_small_general", epochs=3, lr=2e-3)
    extended, message = from_record(config, record, {"epochs"}, "run")
    assert (extended.epochs, extended.steps_per_epoch, extended.lr) == (3, 100, 5e-4)
    assert "--epochs 3 (recorded: 1)" in message
    resumed, _ = from_record(config, record, set(), "run")
    assert (resumed.epochs, resumed.steps_per_epoch, resumed.lr) == (1, 100, 5e-4)
    # Another rate is the user's: kept, for the run folder's record check to refuse.
    assert from_record(config, record, {"lr"}, "run")[0] == config


def test_no_check_and_a_given_budget_skip_it(crops, tiny_start):
    config = FinetuneConfig(init=str(tiny_start), **TINY)
    records = index_pairs(crops)[:2]
    chosen, message, record = choose_settings(config, records, check=False)
    assert record is None and "(no adaptation check: --no-check given)" in message
    assert (chosen.epochs * chosen.steps_per_epoch, chosen.lr) == (100, 5e-4)  # the rule's 1-2 pair row
    chosen, message, record = choose_settings(FinetuneConfig(init=str(tiny_start), epochs=3, **TINY), records,
                                              given={"epochs"})
    assert record is None and chosen.epochs == 3 and "not applied: --epochs given" in message
    # A pretrained-only start is not checked: its untouched head cannot be kept.
    _, message, record = choose_settings(FinetuneConfig(init="cmunet_small_pretrained", **TINY), records)
    assert record is None and "it checks starts that already segment" in message


def _finetune(crops, start, run, *more):
    return main(["finetune", "--pairs", str(crops), "--init", str(start), "--out", str(run), "--base-filters", "4",
                 "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--precision", "float32", "--quiet",
                 *more])


def test_one_pair_keeps_the_start_unchecked_unless_told(crops, tiny_start, tmp_path, capsys):
    run = tmp_path / "one"
    assert _finetune(crops, tiny_start, run, "--limit", "1") == 0
    err = capsys.readouterr().err
    assert "1 training pair leaves none to score" in err and "--no-check" in err
    record = json.loads((run / "adaptation.json").read_text())
    assert record["checked"] is False and record["chosen"]["steps"] == 0
    assert "Not checked: 1 training pair" in (run / "README.md").read_text()
    # The kept model is the start, weight for weight.
    kept, start = load_model(str(run / "model.keras")), load_model(str(tiny_start))
    assert all(np.array_equal(a, b) for a, b in zip(kept.get_weights(), start.get_weights()))
    # --no-check trains the rule's budget on the one pair.
    ruled = tmp_path / "one_rule"
    assert _finetune(crops, tiny_start, ruled, "--limit", "1", "--no-check") == 0
    assert json.loads((ruled / "state.json").read_text())["epochs_done"] == 1
    assert not (ruled / "adaptation.json").exists()


def test_no_check_on_the_command_line_trains_the_rule(crops, tiny_start, tmp_path, capsys):
    run = tmp_path / "rule"
    assert _finetune(crops, tiny_start, run, "--limit", "2", "--no-check") == 0
    assert "few-label rule: 2 labelled pairs" in capsys.readouterr().err
    assert not (run / "adaptation.json").exists()
    # A rerun without the flag does not check a run made without it.
    assert _finetune(crops, tiny_start, run, "--limit", "2") == 0
    assert "no adaptation check: the run folder holds a run made without it" in capsys.readouterr().err
    assert not (run / "adaptation.json").exists()


def test_finetune_checks_then_trains_what_it_chose(crops, tiny_start, tmp_path, capsys):
    run = tmp_path / "checked"
    assert _finetune(crops, tiny_start, run, "--limit", "2") == 0
    printed = capsys.readouterr().err
    assert "adaptation check (leave-one-out over the 2 training pairs" in printed and "fold 2/2" in printed
    record = json.loads((run / "adaptation.json").read_text())
    assert {"pairs", "method", "folds", "candidates", "chosen", "reason", "warning", "seconds"} <= set(record)
    assert [entry["steps"] for entry in record["candidates"]] == [0, 50, 50, 100, 100, 200]
    recorded = (run / "config.yaml").read_text()
    steps, lr = record["chosen"]["steps"], record["chosen"]["lr"]
    if steps:  # the run trained the chosen budget at the chosen rate
        state = json.loads((run / "state.json").read_text())
        assert state["epochs_done"] * int(_field(recorded, "steps_per_epoch")) == steps
        assert float(_field(recorded, "lr")) == lr
    else:
        assert _field(recorded, "epochs") == "0"
    assert f"Chosen: {record['reason']}." in (run / "README.md").read_text()
    written = (run / "adaptation.json").read_bytes()
    assert _finetune(crops, tiny_start, run, "--limit", "2") == 0
    printed = capsys.readouterr().err
    assert "kept from the run's record" in printed and "fold 1/2" not in printed
    assert (run / "adaptation.json").read_bytes() == written


def _field(yaml_text, name):
    return next(line.split(":", 1)[1].strip() for line in yaml_text.splitlines() if line.startswith(f"{name}:"))
