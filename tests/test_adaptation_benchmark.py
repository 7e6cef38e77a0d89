"""The measurement of the adaptation check (issue 34, item 4):
`benchmarks/adaptation.py --stage check` runs the start, today's rule and
the checked fine-tune on the same draws, never scores a pair it trained on,
and its report judges the issue's three targets from the numbers."""

import importlib.util
import json
from pathlib import Path

import cv2
import keras
import pytest

from cm_unet_keras.models.unet import CMUNet

ROOT = Path(__file__).resolve().parents[1]
TINY = {"base_filters": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "precision": "float32"}


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("adaptation_benchmark", ROOT / "benchmarks" / "adaptation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cropped_cimat(shared_data, tmp_path_factory):
    """A data root whose `xca_vessels/train` holds the 64x64 centre of each of the 40 CIMAT pairs."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "xca_vessels" / "train"
    folder.mkdir(parents=True)
    for path in sorted((shared_data / "xca_vessels" / "train").glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert image is not None, f"unreadable shared image {path}"
        cv2.imwrite(str(folder / path.name), image[118:182, 118:182])
    return root


def test_the_check_stage_runs_three_arms_on_the_same_pairs_and_scores_others(benchmark, cropped_cimat, tmp_path):
    from cm_unet_keras.experiments.data import cimat_parts

    train, validation = cimat_parts(cropped_cimat, ROOT / "recipes")
    keras.utils.set_random_seed(0)
    start = tmp_path / "tiny.keras"  # a 2-level, width-4 U-Net: a start of the right kind, in seconds
    CMUNet(base_filters=TINY["base_filters"], depth=TINY["depth"]).save(start)
    out = tmp_path / "results"
    # One random draw end to end (select's draw is the same code path once its pairs are chosen: below).
    benchmark.check_stage("cimat", ks=(2,), draws=1, data_root=cropped_cimat, start=str(start), select=False,
                          runs=tmp_path / "runs", out=out, overrides=TINY, budgets={2e-3: (2, 4)},
                          log=lambda line: None)
    rows = [json.loads(line) for line in (out / "check.jsonl").read_text().splitlines()]
    by_key = {row["key"]: row for row in rows}
    assert set(by_key) == {"cimat_start", "cimat_k2_seed0_rule", "cimat_k2_seed0_checked"}
    validation_names = sorted(record.name for record in validation)
    rule, checked = by_key["cimat_k2_seed0_rule"], by_key["cimat_k2_seed0_checked"]
    assert rule["labelled"] == checked["labelled"] and len(rule["labelled"]) == 2
    assert set(rule["labelled"]) <= {record.name for record in train}
    assert sorted(rule["scored"]) == sorted(checked["scored"]) == sorted(by_key["cimat_start"]["scored"]) \
        == validation_names
    assert not set(rule["labelled"]) & set(validation_names)
    assert rule["chosen"] == {"steps": 100, "lr": 5e-4}  # today's rule for 2 pairs from a segmenting start
    assert (rule["precision"], checked["precision"], by_key["cimat_start"]["precision"]) == ("float32", "float32", None)
    assert checked["chosen"] in ({"steps": 0, "lr": None}, {"steps": 2, "lr": 2e-3}, {"steps": 4, "lr": 2e-3})
    draws = benchmark.check_draws("cimat", 2, 1, cropped_cimat, str(start), select=True, out=out)
    assert [name for name, _, _ in draws] == ["seed0", "select"]
    assert rule["labelled"] == [record.name for record in draws[0][1]]
    chosen = [record.name for record in draws[1][1]]  # select's choice: 2 training images, none scored
    assert len(chosen) == 2 and set(chosen) <= {record.name for record in train}
    assert all(scored == validation for _, _, scored in draws)
    # The checked arm's record is the check's own; a kept start scores as the start does.
    checked = by_key["cimat_k2_seed0_checked"]
    recorded = json.loads((tmp_path / "runs" / "cimat_k2_seed0_checked" / "adaptation.json").read_text())
    assert recorded["chosen"] == checked["chosen"] and sorted(recorded["pairs"]) == checked["labelled"]
    # Its estimates travel with the row (the report asks whether they foresaw the gain); the rule has none.
    assert checked["estimates"] == [{"steps": c["steps"], "lr": c["lr"], "dice": c["dice"]}
                                    for c in recorded["candidates"]]
    assert [(c["steps"], c["lr"]) for c in checked["estimates"]] == [(0, None), (2, 2e-3), (4, 2e-3)]
    assert all(len(c["dice"]) == 2 for c in checked["estimates"]) and rule["estimates"] is None
    if not checked["chosen"]["steps"]:
        assert checked["metrics"]["dice"] == pytest.approx(by_key["cimat_start"]["metrics"]["dice"], abs=1e-6)
    # A rerun finds every row and trains nothing; the report is written from the rows.
    benchmark.check_stage("cimat", ks=(2,), draws=1, data_root=cropped_cimat, start=str(start), select=False,
                          runs=tmp_path / "runs", out=out, overrides=TINY, budgets={2e-3: (2, 4)},
                          log=lambda line: pytest.fail(f"a finished run ran again: {line}"))
    text = benchmark.write_check_report("test", out)
    assert (out / "check.md").read_text() == text and "## Target CIMAT" in text


def _row(target, arm, draw, k, dice, scored=("v1", "v2")):
    return {"key": f"{target}_{arm}_{draw}_{k}", "target": target, "arm": arm, "k": None if arm == "start" else k,
            "draw": draw, "start": "s", "scored": list(scored), "metrics": {"dice": dice}, "seconds": 60.0,
            "precision": "float32", "machine": "test machine"}


def test_the_report_judges_the_three_targets_from_the_rows(benchmark):
    rows = [_row("cimat", "start", None, None, 0.700)]
    # k = 2: the rule gains (+0.02 mean) and the check gains as much; no draw below the start.
    for draw, rule, checked in (("seed0", 0.72, 0.72), ("seed1", 0.73, 0.73), ("seed2", 0.71, 0.71)):
        rows += [_row("cimat", "rule", draw, 2, rule), _row("cimat", "checked", draw, 2, checked)]
    # k = 3: the check gains on average (+0.005) but one draw falls 0.02 below the start,
    # and it gains less than the rule (+0.03).
    for draw, rule, checked in (("seed0", 0.73, 0.725), ("seed1", 0.73, 0.71), ("seed2", 0.73, 0.68)):
        rows += [_row("cimat", "rule", draw, 3, rule), _row("cimat", "checked", draw, 3, checked)]
    # k = 5: the rule loses (n/a for target 3), the check keeps the start; select's draw falls 0.016 below.
    for draw, rule, checked in (("seed0", 0.69, 0.70), ("seed1", 0.68, 0.70), ("select", 0.68, 0.684)):
        rows += [_row("cimat", "rule", draw, 5, rule), _row("cimat", "checked", draw, 5, checked)]
    verdicts = {k: benchmark.check_verdicts(benchmark.check_dice(rows, "cimat", k)) for k in (2, 3, 5)}
    assert verdicts[2] == {"average": True, "worst": True, "rule_gain": True}
    assert verdicts[3] == {"average": True, "worst": False, "rule_gain": False}
    assert verdicts[5] == {"average": True, "worst": False, "rule_gain": None}
    text = "\n".join(benchmark.check_report_lines(rows, "test"))
    assert "- 1. at no k worse than the start on average (mean checked - start >= 0): met (k = 2, 3, 5)" in text
    assert "- 2. no draw more than 0.015 Dice below the start: **missed** at k = 3, 5" in text
    assert "**missed** at k = 3\n" in text.split("- 3.")[1] + "\n"
    table = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| 3 ")}
    assert "| 3 | 3 | 0.700 | 0.730 | 0.705 | +0.005" in table["| 3"] and "-0.020 (seed2)" in table["| 3"]
    assert "ARCADE" not in text  # no row, no section


def test_a_start_row_pairs_only_with_draws_scored_on_the_same_pairs(benchmark):
    rows = [_row("xcad", "start", "fold0", None, 0.70, scored=("b",)), _row("xcad", "start", "fold1", None, 0.60,
                                                                              scored=("a",))]
    rows += [_row("xcad", "rule", "fold0", 1, 0.74, scored=("b",)), _row("xcad", "checked", "fold0", 1, 0.74,
                                                                        scored=("b",))]
    rows += [_row("xcad", "rule", "fold1", 1, 0.58, scored=("a",)), _row("xcad", "checked", "fold1", 1, 0.58,
                                                                        scored=("a",))]
    dice = benchmark.check_dice(rows, "xcad", 1)
    assert dice == {"fold0": {"start": 0.70, "rule": 0.74, "checked": 0.74},
                    "fold1": {"start": 0.60, "rule": 0.58, "checked": 0.58}}
    assert benchmark.check_verdicts(dice) == {"average": True, "worst": False, "rule_gain": True}


def test_the_report_asks_whether_the_checks_estimate_foresaw_the_rules_gain(benchmark):
    rows = [_row("arcade", "start", None, None, 0.500)]
    # The check's held-out estimate of the rule's budget (100 steps at 5e-4) minus the start, per draw,
    # against what the rule measured on the scored pairs: +0.10/-0.05 (wrong sign), -0.02/+0.04 (wrong),
    # +0.03/+0.06 (right).
    for draw, estimate, rule in (("seed0", 0.10, 0.45), ("seed1", -0.02, 0.54), ("seed2", 0.03, 0.56)):
        checked = dict(_row("arcade", "checked", draw, 2, 0.50), chosen={"steps": 0, "lr": None},
                       estimates=[{"steps": 0, "lr": None, "dice": [0.4, 0.6]},
                                  {"steps": 100, "lr": 5e-4, "dice": [0.4 + estimate, 0.6 + estimate]}])
        rows += [dict(_row("arcade", "rule", draw, 2, rule), chosen={"steps": 100, "lr": 5e-4}), checked]
    lines = benchmark.foresight_lines(rows, "arcade")
    assert lines[2].startswith("| 2 | 3 | +0.037 | +0.017 | -0.") and lines[2].endswith(" | 1/3 |")
    text = "\n".join(benchmark.check_report_lines(rows, "test"))
    assert "Does the check foresee the gain?" in text and lines[2] in text
    # Draws without recorded estimates (rows written before they were kept) are left out, not guessed.
    for row in rows:
        row.pop("estimates", None)
    assert benchmark.foresight_lines(rows, "arcade") == []
