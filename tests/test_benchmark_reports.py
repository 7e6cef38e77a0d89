"""The stored benchmark reports are what the benchmarks' code makes of the
stored runs: each benchmark's `--report` path, run on a copy of its stored
runs, writes its stored report byte for byte (issue 32, item 8: two
selection reports had described another protocol than the one they ran).

A change to a report writer, or to a rule a report applies (the few-label
budgets), fails here until the stored reports are regenerated and the
change is seen in their diff."""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_CIMAT_START = "runs/adaptation/starts/general_no_cimat/model.keras"

# Every model whose failure maps were looked at: its notes, and the report and card line made of them.
FAILURE_LABELS = sorted(path.stem for path in (ROOT / "benchmarks" / "failure_modes").glob("*.json"))
assert "w16_s4000_p384b2_scratch" in FAILURE_LABELS, "the stored failure-mode notes are missing"
# (script, its output folder, --report arguments as the stored report names them, files compared)
REPORTS = [
    ("benchmarks/selection.py", "benchmarks/selection",
     [["--target", "cimat"], ["--target", "arcade", "--draw-seeds", "3"],
      ["--target", "cimat", "--count", "10", "--start", NO_CIMAT_START],
      ["--target", "cimat", "--count", "3", "--start", NO_CIMAT_START, "--train-seeds", "1"]],
     ["results.md", "results.json", "arcade/results.md", "arcade/results.json",
      "cimat_k10_general_no_cimat/results.md", "cimat_k10_general_no_cimat/results.json",
      "cimat_k3_general_no_cimat/results.md", "cimat_k3_general_no_cimat/results.json"]),
    ("benchmarks/adaptation.py", "benchmarks/adaptation", [[]], ["results.md", "results.json", "check.md"]),
    ("benchmarks/adaptation_check_cost.py", "benchmarks/adaptation_check_cost", [[]], ["results.md"]),
    ("benchmarks/batchnorm_screen.py", "benchmarks/batchnorm_screen", [[]], ["results.md"]),
    ("benchmarks/cldice_screen.py", "benchmarks/cldice_screen", [["--seeds", "0", "1", "2", "3"]], ["results.md"]),
    ("benchmarks/finetune_budget.py", "benchmarks/finetune_budget", [[]], ["results.md"]),
    ("benchmarks/pretrain_screen.py", "benchmarks/pretrain_screen", [[]], ["results.md", "pretrainings.json"]),
    ("recipes/general.py", "benchmarks/cross_source", [[]], ["training.md"]),
    ("recipes/arcade_protocol.py", "benchmarks/arcade_protocol", [[]], ["results.md"]),
    ("benchmarks/failure_modes.py", "benchmarks/failure_modes", [["--label", label] for label in FAILURE_LABELS],
     [f"{label}{suffix}" for label in FAILURE_LABELS for suffix in (".md", "_card.txt")]),
]


# Written by a report and read by the next one (the starts as they were when their probes ran).
READ_BACK = {"pretrainings.json"}


def script_module(path):
    """A benchmark or recipe script imported as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"report_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script, folder, calls, files", REPORTS, ids=[Path(r[0]).stem for r in REPORTS])
def test_report_regenerates_from_the_stored_runs(script, folder, calls, files, tmp_path, monkeypatch):
    stored = ROOT / folder
    copy = tmp_path / Path(folder).name
    shutil.copytree(stored, copy)
    for name in files:
        if name not in READ_BACK:
            (copy / name).unlink()  # written anew, or the comparison fails
    module = script_module(ROOT / script)
    monkeypatch.setattr(module, "OUT", copy)
    for arguments in calls:
        module.main(arguments + ["--report"])
    for name in files:
        assert (copy / name).read_bytes() == (stored / name).read_bytes(), (
            f"{folder}/{name} is not what `python {script} {' '.join(arguments)} --report` writes from the stored "
            "runs: regenerate it and read the difference")


@pytest.mark.parametrize("count", [3, 10])
def test_a_selection_report_states_the_start_and_budget_its_runs_used(count):
    # The runs of the generalist without CIMAT trained by the few-label rule
    # for a start that already segments: 200 steps at 2e-3 for 3-10 pairs
    # (README), not the pretrained preset's 500 steps.
    text = (ROOT / f"benchmarks/selection/cimat_k{count}_general_no_cimat/results.md").read_text()
    protocol = " ".join(text[text.index("Protocol:"):].split())  # as Markdown reads it, lines joined
    assert f"every choice of {count} of the 30 CIMAT training pairs is fine-tuned from `{NO_CIMAT_START}`" in protocol
    assert "200 steps at lr 0.002" in protocol
    assert "500 steps" not in protocol and "uncertainty with `cmunet_small_general`" not in protocol
    assert "never their labels" in protocol  # its start was pretrained on the CIMAT training images
