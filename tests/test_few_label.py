"""The few-label default of `cm-unet finetune --init` (issues 25 and 32).

The expected budgets and learning rates are the documented table's
(docs/adaptation.md), written out here, not read from the module.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from cm_unet_keras.cli import main
from cm_unet_keras.config import FinetuneConfig
from cm_unet_keras.data.layouts import index_pairs
from cm_unet_keras.models.unet import CMUNet
from cm_unet_keras.training import few_label
from cm_unet_keras.training.few_label import apply_few_label_rule, start_kind, training_pair_count

ROOT = Path(__file__).resolve().parents[1]

# docs/adaptation.md, "The few-label default": (start, labelled pairs,
# budget in steps, learning rate), row by row.
DOCUMENTED_TABLE = [
    ("none", "any", 2000, 2e-3),
    ("pretrained only", "<= 3", 500, 2e-3),
    ("pretrained only", "4-10", 2000, 2e-3),
    ("segmenting", "1-2", 100, 5e-4),
    ("segmenting", "3-10", 200, 2e-3),
    ("any", "> 10", 2000, 2e-3),
]
# An --init of each kind of start in the table.
STARTS = {"none": None, "pretrained only": "cmunet_small_pretrained", "segmenting": "cmunet_small_general"}


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "tiny.keras"
    CMUNet(base_filters=4, depth=2).save(path)
    return path


@pytest.fixture(scope="module")
def cimat_records(shared_data):
    return index_pairs(shared_data / "xca_vessels" / "train")


def test_each_kind_of_start_is_told_apart(tiny_segmenter):
    assert start_kind(None) == "scratch"
    assert start_kind("cmunet_small_pretrained") == "pretrained"
    assert start_kind("cmunet_small_general") == "finetuned"
    assert start_kind(str(tiny_segmenter)) == "finetuned"


def test_the_defaults_are_the_documented_2000_steps_at_2e_3():
    config = FinetuneConfig()
    assert (config.epochs, config.steps_per_epoch, config.lr) == (20, 100, 2e-3)


@pytest.mark.parametrize("start, pairs, steps, lr", [
    ("none", 1, 2000, 2e-3), ("none", 3, 2000, 2e-3), ("none", 10, 2000, 2e-3),
    ("pretrained only", 1, 500, 2e-3), ("pretrained only", 3, 500, 2e-3),
    ("pretrained only", 4, 2000, 2e-3), ("pretrained only", 10, 2000, 2e-3),
    ("segmenting", 1, 100, 5e-4), ("segmenting", 2, 100, 5e-4),
    ("segmenting", 3, 200, 2e-3), ("segmenting", 10, 200, 2e-3),
    ("pretrained only", 11, 2000, 2e-3), ("segmenting", 11, 2000, 2e-3), ("segmenting", 40, 2000, 2e-3),
])
def test_the_rule_gives_the_documented_budget_and_rate(start, pairs, steps, lr):
    chosen, message = apply_few_label_rule(FinetuneConfig(init=STARTS[start]), pairs)
    assert (chosen.epochs * chosen.steps_per_epoch, chosen.lr) == (steps, lr)
    assert f"{pairs} labelled pairs" in message and f"{steps} steps at lr {lr:g}" in message


def test_the_rule_keeps_what_the_user_gives():
    config = FinetuneConfig(init="cmunet_small_general", epochs=3, lr=1e-2)
    for given in ({"lr"}, {"epochs"}, {"steps_per_epoch"}, {"epochs", "lr"}):
        kept, message = apply_few_label_rule(config, 1, given=given)
        assert kept == config and message.startswith("few-label rule not applied") and "given" in message
    # Beyond a handful a user's own settings stand, given or not.
    assert apply_few_label_rule(config, 11)[0] == config


def _table_rows(text, heading):
    """(start, labelled pairs, steps, lr) of the markdown table after `heading`."""
    table = text[text.index(heading):].split("| start (`--init`) |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        start, pairs, budget, lr = [cell.strip() for cell in line.strip("|").split("|")]
        kind = next(kind for word, kind in (("pretrained only", "pretrained only"), ("segment", "segmenting"),
                                            ("none", "none"), ("any", "any")) if word in start)
        steps = int(re.match(r"([\d,]+) steps", budget).group(1).replace(",", ""))
        rows.append((kind, pairs.replace("any start", "any"), steps, float(lr.split()[0])))
    return rows


def test_the_docs_and_the_module_give_the_same_table():
    docs = (ROOT / "docs" / "adaptation.md").read_text()
    assert _table_rows(docs, "## The few-label default") == DOCUMENTED_TABLE
    assert _table_rows(few_label.__doc__, "A lab adapting") == DOCUMENTED_TABLE


def test_the_rule_cites_pages_that_exist():
    assert few_label.RULE_SOURCE == "docs/adaptation.md" and (ROOT / few_label.RULE_SOURCE).is_file()
    cited = set(re.findall(r"`?((?:benchmarks|docs)/[\w/.-]+\.md)", few_label.__doc__))
    assert cited and all((ROOT / path).is_file() for path in cited), cited


@pytest.mark.parametrize("limit, val_fraction, trained", [
    # The split holds out max(1, round(n x fraction)) of n pairs, at most n - 1.
    (None, 0.0, 40), (3, 0.0, 3), (4, 0.1, 3), (3, 0.1, 2), (10, 0.2, 8), (2, 0.5, 1), (1, 0.5, 1),
])
def test_training_pairs_are_counted_by_the_split(cimat_records, limit, val_fraction, trained):
    config = FinetuneConfig(limit=limit, val_fraction=val_fraction)
    assert len(cimat_records) == 40
    assert training_pair_count(config, cimat_records) == trained


def test_four_pairs_with_a_tenth_for_validation_train_three_for_500_steps(cimat_records):
    # Issue 32: the rule saw 4 pairs and gave a pretrained start 2,000 steps.
    config = FinetuneConfig(init="cmunet_small_pretrained", limit=4, val_fraction=0.1)
    chosen, message = apply_few_label_rule(config, training_pair_count(config, cimat_records))
    assert (chosen.epochs * chosen.steps_per_epoch, chosen.lr) == (500, 2e-3)
    assert "3 labelled pairs" in message


def test_extending_a_run_made_under_the_rule_keeps_its_rate():
    record = {"init": "cmunet_small_general", "epochs": 1, "steps_per_epoch": 100, "lr": 5e-4}
    config = FinetuneConfig(init="cmunet_small_general", epochs=3)
    extended, message = apply_few_label_rule(config, 1, given={"epochs"}, recorded=record)
    assert (extended.epochs, extended.steps_per_epoch, extended.lr) == (3, 100, 5e-4)
    assert "kept from the run's record" in message and "--epochs 3" in message
    # A record made with the user's own rate is not the rule's: the rerun's
    # settings stand (and the record check refuses them if they differ).
    own = dict(record, lr=1e-3)
    assert apply_few_label_rule(config, 1, given={"epochs"}, recorded=own)[0] == config
    assert apply_few_label_rule(config, 1, given={"epochs", "lr"}, recorded=record)[0] == config
    # A new run folder: --epochs alone still opts out of the rule.
    assert apply_few_label_rule(config, 1, given={"epochs"})[0] == config


def _read(run, name):
    text = (run / name).read_text()
    return yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)


def test_finetune_under_the_rule_then_extended(shared_data, tiny_segmenter, tmp_path, capsys):
    # 3 pairs with a tenth for validation: 1 validates, 2 train, so the
    # segmenting start gets the 1-2 pair row (100 steps at 5e-4); --no-check:
    # the rule, not the adaptation check (tests/test_adaptation_check.py).
    run = tmp_path / "rule"
    base = ["finetune", "--pairs", str(shared_data / "xca_vessels" / "train"), "--limit", "3",
            "--val-fraction", "0.1", "--base-filters", "4", "--depth", "2", "--patch-size", "32",
            "--init", str(tiny_segmenter), "--out", str(run), "--quiet", "--no-check"]
    assert main(base) == 0
    assert "few-label rule: 2 labelled pairs from a start that already segments: 100 steps at lr 0.0005 " \
           "(docs/adaptation.md" in capsys.readouterr().err
    split = _read(run, "split.json")
    assert (len(split["train"]), len(split["val"])) == (2, 1)
    recorded = _read(run, "config.yaml")
    assert (recorded["epochs"], recorded["steps_per_epoch"], recorded["lr"]) == (1, 100, 5e-4)
    record = (run / "config.yaml").read_bytes()

    # docs/usage.md: a larger --epochs extends the run, at the recorded rate.
    assert main(base + ["--epochs", "2"]) == 0
    assert "few-label rule kept from the run's record" in capsys.readouterr().err
    state = _read(run, "state.json")
    assert (state["epochs_done"], state["epochs"]) == (2, 2)
    assert state["epochs_changed"] == [{"after_epoch": 1, "from": 1, "to": 2}]
    assert (run / "config.yaml").read_bytes() == record

    # Another rate given on the same folder is refused, the record kept.
    code = main(base + ["--epochs", "3", "--lr", "2e-3"])
    printed = capsys.readouterr().err
    assert code == 2 and "few-label rule not applied: --epochs, --lr given" in printed
    assert "lr 0.0005 -> 0.002" in printed and _read(run, "state.json")["epochs_done"] == 2
