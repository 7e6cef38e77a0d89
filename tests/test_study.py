"""The label-efficiency study (issue 4): the `--quick` recipe end to end, its
resume, its protocol rules, the Frangi baseline, and presets."""

import dataclasses
import hashlib
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cm_unet_keras.config import StudyConfig
from cm_unet_keras.evaluation.metrics import METRIC_KEYS
from cm_unet_keras.experiments import study
from cm_unet_keras.experiments.data import labelled_subset, study_data
from cm_unet_keras.experiments.frangi import FRANGI, evaluate_frangi, tune_frangi
from cm_unet_keras.experiments.presets import cpu_config, quick_config, study_config
from cm_unet_keras.experiments.report import (
    drop_difference,
    mean_interval,
    relative_drop,
    relative_drop_interval,
    write_results,
)
from cm_unet_keras.models import presets
from cm_unet_keras.models.loading import load_preset

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "recipes" / "xca_split.json"
SCRIPT = ROOT / "recipes" / "label_efficiency.py"


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory, shared_data):
    """One `--quick` run of the recipe script, shared by the tests below.

    The script runs as `python recipes/label_efficiency.py` would run it, in
    this process: a fresh interpreter would import TensorFlow again (15 s on
    a 2-core CPU) for the same code."""
    out = tmp_path_factory.mktemp("label_efficiency")
    argv = [str(SCRIPT), "--quick", "--out", str(out), "--data", str(shared_data), "--verbose", "0"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exited.value.code == 0
    return out


def test_quick_recipe_writes_the_three_result_files(quick_study):
    for name in ("results.json", "results.md", "dice_vs_labels.png"):
        assert (quick_study / name).is_file(), name
    records = json.loads((quick_study / "results.json").read_text())
    config = quick_config()
    expected = {(init, n) for init in ["frangi", *config.inits] for n in config.n_labels}
    assert {(r["init"], r["n_labels"]) for r in records} == expected
    for record in records:
        assert {"init", "n_labels", "seed", "metrics"} <= set(record)
        assert set(record["metrics"]) == set(METRIC_KEYS)
        assert 0.0 <= record["metrics"]["dice"] <= 1.0
        assert record["n_holdout"] == config.max_holdout
    markdown = (quick_study / "results.md").read_text()
    assert "drop N=3 -> 2" in markdown and "CM-UNet: 0.738 -> 0.627 (15.0%)" in markdown
    assert "Wall time" in markdown


def test_sweep_resumes_without_redoing_finished_runs(quick_study, shared_data):
    runs = quick_study / "runs"
    jsonl = runs / study.RESULTS_JSONL
    lines = jsonl.read_text().splitlines()
    records, new = study.run_sweep(quick_config(), shared_data, SPLIT, runs, log=lambda *_: None)
    assert new == 0 and len(records) == len(lines)
    assert jsonl.read_text().splitlines() == lines

    # A run lost from the records (killed before its line was written) is the only one redone.
    frangi_line = next(i for i, line in enumerate(lines) if json.loads(line)["init"] == "frangi")
    jsonl.write_text("\n".join(lines[:frangi_line] + lines[frangi_line + 1:]) + "\n")
    records, new = study.run_sweep(quick_config(), shared_data, SPLIT, runs, log=lambda *_: None)
    assert new == 1 and len(records) == len(lines)

    # A call for one init reports every finished run of the folder, its own first.
    one_init = dataclasses.replace(quick_config(), inits=("scratch",), frangi=False)
    records, new = study.run_sweep(one_init, shared_data, SPLIT, runs, log=lambda *_: None)
    assert new == 0 and len(records) == len(lines) and {r["init"] for r in records} == {"frangi", "cmunet", "scratch"}
    planned = sum(len(study.study_seeds(one_init, n)) for n in one_init.n_labels)
    assert {r["init"] for r in records[:planned]} == {"scratch"}


def test_a_later_pretraining_call_keeps_the_earlier_variants_times(quick_study, shared_data, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(quick_study / "runs", runs)
    record = runs / "pretraining.json"
    earlier = json.loads(record.read_text())
    assert set(earlier) == {"cmunet"} and earlier["cmunet"]["seconds"] > 0
    # As if another variant had been pretrained by an earlier call.
    record.write_text(json.dumps({**earlier, "mae_only": {"run_dir": "elsewhere", "epochs_done": 2, "seconds": 60.0}}))
    config = dataclasses.replace(quick_config(), inits=("cmunet", "scratch"))
    result = study.run_study(config, shared_data, SPLIT, runs, tmp_path / "out", stage="all", log=lambda *_: None,
                             verbose=0)
    assert result["new_runs"] == 0  # everything was finished: cmunet's pretraining is only read back
    kept = json.loads(record.read_text())
    assert set(kept) == {"cmunet", "mae_only"} and kept["cmunet"]["epochs_done"] == earlier["cmunet"]["epochs_done"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "- pretraining (mae_only): 1.0 min" in markdown and "- pretraining (cmunet): " in markdown


def test_subsets_are_nested_and_never_touch_the_reported_pairs(shared_data):
    train, holdout = study_data(shared_data, SPLIT)
    assert (len(train), len(holdout)) == (30, 10)
    for seed in (0, 1, 2):
        three, ten = (set(r.name for r in labelled_subset(train, n, seed)) for n in (3, 10))
        assert three <= ten and not ten & {r.name for r in holdout}
    assert labelled_subset(train, 10, 0) != labelled_subset(train, 10, 1)


def test_every_run_trains_on_all_its_pairs_and_keeps_the_last_epoch():
    config = cpu_config()
    config.finetune.val_fraction, config.finetune.select = 0.2, "best"  # whatever the shared config says
    few = study.run_config(config, "cmunet", 3, seed=1, pretrain_dir="runs/pretrain")
    many = study.run_config(config, "scratch", 30, seed=2, pretrain_dir="runs/pretrain")
    for run in (few, many):
        assert run.val_fraction == 0.0 and run.select == "last"
    assert few.init == str(Path("runs/pretrain/cmunet")) and few.seed == 1 and many.init is None
    assert config.finetune.val_fraction == 0.2 and config.finetune.select == "best"  # shared config untouched


def test_frangi_baseline_scores_a_real_pair(shared_data):
    train, holdout = study_data(shared_data, SPLIT)
    params = tune_frangi(train[:2], StudyConfig.frangi_sigma_sets, StudyConfig.frangi_thresholds)
    report = evaluate_frangi(params, holdout[:1])
    assert params["train_dice"] > 0.3
    assert report["mean"]["dice"] > 0.2
    assert set(report["mean"]) == set(METRIC_KEYS)


def _write_preset(root, name, files, card):
    folder = root / name
    folder.mkdir(parents=True)
    for file in files:
        shutil.copy(file, folder / Path(file).name)
    digest = hashlib.sha256((folder / card["file"]).read_bytes()).hexdigest()
    (folder / "card.json").write_text(json.dumps({**card, "sha256": digest}))


def test_from_preset_loads_finetuned_and_pretrained_presets(quick_study, tmp_path):
    runs = quick_study / "runs"
    _write_preset(tmp_path, "tiny_xca", [runs / "sweep" / "scratch_n3_s0" / "model.keras"], {"file": "model.keras"})
    pretrained = runs / "pretrain" / "cmunet"
    _write_preset(tmp_path, "tiny_pretrained", [pretrained / "pretrained.weights.h5", pretrained / "pretrainer.json"],
                  {"file": "pretrained.weights.h5", "kind": "pretrained"})
    assert presets.available_presets(tmp_path) == ["tiny_pretrained", "tiny_xca"]

    finetuned = load_preset("tiny_xca", tmp_path)
    image = np.zeros((1, 32, 32, 1), np.float32)
    assert finetuned(image).shape == (1, 32, 32, 1)
    unet = load_preset("tiny_pretrained", tmp_path)
    assert unet.depth == 2 and unet(image).shape == (1, 32, 32, 1)

    (tmp_path / "tiny_xca" / "model.keras").write_bytes(b"swapped")
    with pytest.raises(ValueError, match="does not match its card"):
        load_preset("tiny_xca", tmp_path)


def test_cpu_study_has_more_seeds_at_few_labels_and_a_longer_budget_at_many():
    config = cpu_config()
    plan = study.sweep_plan(config)
    for n, expected in ((3, 5), (10, 3), (30, 3)):
        assert {seed for _, m, seed in plan if m == n} == set(range(expected))
    assert {init for init, _, _ in plan} == {FRANGI, "cmunet", "scratch", "mae_only"}
    steps = {n: (lambda c: c.epochs * c.steps_per_epoch)(study.run_config(config, "scratch", n, 0, "p"))
             for n in (3, 10, 30)}
    assert steps == {3: 2000, 10: 2000, 30: 4000}
    assert config.pretrain.views == "crops" and config.pretrain.epochs * config.pretrain.steps_per_epoch == 6000


def test_intervals_of_the_paired_difference_and_of_the_relative_drop():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027; sd 1; n 3.
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 / np.sqrt(3), rel=1e-4) and mean - low == high - mean
    assert mean_interval([0.5])[1:] == (None, None)
    records = [{"init": "cmunet", "n_labels": n, "seed": s, "metrics": {"dice": d}}
               for n, values in ((30, [0.80, 0.78, 0.79]), (3, [0.70, 0.72, 0.66, 0.69, 0.73]))
               for s, d in enumerate(values)]
    drop = relative_drop(records, "cmunet", 30, 3)
    low, high = relative_drop_interval(records, "cmunet", 30, 3)
    assert low < drop < high and 0.0 < low and high < 0.25
    # The same seed values with less spread give a narrower interval.
    tight = [dict(r, metrics={"dice": 0.79 if r["n_labels"] == 30 else 0.70}) for r in records]
    tight_low, tight_high = relative_drop_interval(tight, "cmunet", 30, 3)
    assert tight_high - tight_low < 1e-9 < high - low


def test_drop_difference_pairs_the_seeds_of_both_inits():
    # Scratch drops 20% at every seed; cmunet 10%: a -10 point difference whatever the seeds drawn.
    high = {0: 0.80, 1: 0.70, 2: 0.75}
    records = [{"init": init, "n_labels": n, "seed": s, "metrics": {"dice": d * (1.0 - loss if n == 3 else 1.0)}}
               for init, loss in (("scratch", 0.2), ("cmunet", 0.1)) for n in (30, 3) for s, d in high.items()]
    point, low, high_bound = drop_difference(records, "cmunet", 30, 3)
    # Each N is resampled on its own, so the ratio of its draws scales the -10 points: within 0.7/0.8 and 0.8/0.7.
    assert point == pytest.approx(-0.1) and -0.1 * 0.8 / 0.7 - 1e-9 <= low < point < high_bound <= -0.1 * 0.7 / 0.8 + 1e-9
    # Unpaired, each init's own drop interval is wide (the seeds differ by 0.1 Dice) and the two overlap.
    cmunet_interval = relative_drop_interval(records, "cmunet", 30, 3)
    scratch_interval = relative_drop_interval(records, "scratch", 30, 3)
    assert cmunet_interval[1] > scratch_interval[0]
    # Seeds only one init ran are left out; one shared seed gives no interval; one N gives nothing.
    assert drop_difference(records + [dict(records[0], init="cmunet", seed=9)], "cmunet", 30, 3)[0] \
        == pytest.approx(-0.1)
    assert drop_difference([r for r in records if r["seed"] == 0], "cmunet", 30, 3)[1:] == (None, None)
    assert drop_difference(records, "cmunet", 3, 3) is None
    from cm_unet_keras.experiments.report import results_markdown

    row = next(line for line in results_markdown(records, {}).splitlines()
               if line.startswith("| cmunet |") and "/3)" in line)
    assert row.rstrip(" |").endswith(f"-10.0% [{low:+.1%}, {high_bound:+.1%}]")


def test_no_drop_is_reported_when_only_one_n_was_run():
    records = [{"init": init, "n_labels": 3, "seed": s, "metrics": {"dice": 0.7 + 0.01 * s}}
               for init in ("cmunet", "scratch") for s in range(3)]
    assert relative_drop(records, "cmunet", 3, 3) is None
    assert relative_drop_interval(records, "cmunet", 3, 3) is None
    from cm_unet_keras.experiments.report import results_markdown

    table = results_markdown(records, {})
    row = next(line for line in table.splitlines() if line.startswith("| cmunet |"))
    assert "0.0%" not in row and row.split("|")[3].strip() == "-"


def test_an_init_at_its_own_budget_starts_from_its_pretraining_and_is_paired_with_scratch(quick_study, shared_data,
                                                                                          tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(quick_study / "runs", runs)
    # One N of the two is enough to check the own budget: it saves a fine-tune.
    config = dataclasses.replace(quick_config(), inits=("cmunet@4",), frangi=False, n_labels=(3,))
    assert study.pretrained_variants(config) == ["cmunet"]
    records, new = study.run_sweep(config, shared_data, SPLIT, runs, log=lambda *_: None, verbose=0)
    assert new == len(config.n_labels)  # one seed: a run per N, the finished cmunet and scratch runs untouched
    own = [r for r in records if r["init"] == "cmunet@4"]
    default_steps = quick_config().finetune.epochs * quick_config().finetune.steps_per_epoch
    assert {r["steps"] for r in own} == {4} and default_steps != 4
    for record in own:
        run_dir = runs / "sweep" / study.run_key("cmunet@4", record["n_labels"], record["seed"])
        state = json.loads((run_dir / "state.json").read_text())
        assert state["epochs_done"] == 4 // quick_config().finetune.steps_per_epoch
        loaded = json.loads((run_dir / "transfer_report.json").read_text())["loaded"]
        assert any(name.startswith("encoder_") for name in loaded)
        cmunet = next(r for r in records if (r["init"], r["n_labels"], r["seed"]) == ("cmunet", record["n_labels"],
                                                                                      record["seed"]))
        assert record["labelled"] == cmunet["labelled"]  # the same subset as the study's cmunet run
    write_results(records, tmp_path / "out", study=config)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "cmunet@4: cmunet fine-tuned for 4 steps at every N" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| cmunet@4 |")]
    assert len(rows) >= 3  # the Dice table, the paired table (against scratch) and the metrics table
    inits_in_order = [line.split("|")[1].strip() for line in markdown.split("## Dice")[1].splitlines()
                      if line.startswith("| ") and not line.startswith("| init")][:4]
    assert inits_in_order == ["frangi", "cmunet", "cmunet@4", "scratch"]


def test_init_names_and_their_budgets_are_checked(tmp_path):
    from cm_unet_keras.cli import build_parser
    from cm_unet_keras.config import split_init

    assert split_init("cmunet@500") == ("cmunet", 500) and split_init("scratch") == ("scratch", None)
    for bad in ("unet", "cmunet@", "cmunet@0", "cmunet@-5", "cmunet@1e3", "frangi"):
        with pytest.raises(ValueError, match="init"):
            split_init(bad)
    with pytest.raises(ValueError, match="not a whole number"):
        study.run_config(cpu_config(), "cmunet@550", 3, 0, tmp_path)
    config = study.run_config(cpu_config(), "cmunet@500", 30, 0, tmp_path)
    assert config.epochs * config.steps_per_epoch == 500 and config.init == str(tmp_path / "cmunet")
    assert study.run_config(cpu_config(), "cmunet", 30, 0, tmp_path).epochs * config.steps_per_epoch == 4000
    args = build_parser().parse_args(["study", "--inits", "cmunet@500", "scratch"])
    assert args.inits == ["cmunet@500", "scratch"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["study", "--inits", "cmunet@lots"])
    with pytest.raises(ValueError, match="unet"):
        study_config("cpu", inits=["unet"])


def test_the_benchmarks_shared_parts_of_the_public_sources(shared_data):
    from cm_unet_keras.experiments.data import SOURCES, selection_split, source_records, target_parts

    recipes = ROOT / "recipes"
    for target, sizes, split in (("cimat", (30, 10), "xca_split.json"), ("arcade", (140, 60), "arcade_split.json")):
        train, validation = target_parts(target, shared_data, recipes)
        assert (len(train), len(validation)) == sizes
        written = json.loads((recipes / split).read_text())
        assert [r.name for r in train] == written["train"] and [r.name for r in validation] == written["holdout"]
        assert source_records(target, shared_data, recipes) == validation
    assert [r.name for r in source_records("xcad", shared_data, recipes)] == ["01251_32", "02208_30"]
    assert SOURCES == ("cimat", "arcade", "xcad")
    with pytest.raises(ValueError, match="xcad"):
        target_parts("xcad", shared_data, recipes)  # two pairs: no training part
    train, _ = target_parts("cimat", shared_data, recipes)
    labelled, selection = selection_split(train, 3, seed=0)
    assert labelled == labelled_subset(train, 3, 0) and len(selection) == 27
    assert {r.name for r in labelled}.isdisjoint(r.name for r in selection)
    assert {r.name for r in labelled} | {r.name for r in selection} == {r.name for r in train}
