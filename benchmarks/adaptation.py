"""Your scanner, your few labels: which start adapts best, leave-one-source-out (issue 25).

    python benchmarks/adaptation.py --arcade-train DIR --stage starts   # the generalist without CIMAT
    python benchmarks/adaptation.py --stage screen                      # budgets, on the selection pairs
    python benchmarks/adaptation.py --stage cimat                       # target CIMAT, k = 0, 1, 3, 10
    python benchmarks/adaptation.py --stage arcade                      # target ARCADE, k = 3, 10
    python benchmarks/adaptation.py --stage check --target cimat        # the adaptation check, measured
    python benchmarks/adaptation.py --report                            # results.md, results.json, check.md

A lab with a new scanner annotates k frames and fine-tunes a start on them.
Each target source is left out of the starts it is scored against:

- Target CIMAT (`xca_vessels`, full vessel trees, catheter included):
  `scratch` (random initialisation), `cmunet` (the `cmunet_small_pretrained`
  preset: CM-UNet pretraining, no labels) and `general_no_cimat` (that
  preset fine-tuned on ARCADE's syntax *train* split, 1,000 angiograms
  imported by `recipes/import_arcade_syntax.py`, plus the 140 ARCADE
  training pairs of `recipes/arcade_split.json`: main segments, no CIMAT
  label). Each is fine-tuned on k = 1, 3, 10 of the 30 CIMAT training pairs
  (the study's nested subsets, `experiments.data.labelled_subset`: the same
  pairs for every start at a seed; seeds 0-4 at k <= 3, 0-2 at k = 10) and
  scored on the 10 validation pairs of `recipes/xca_split.json`. k = 0 is
  the start itself (the generalist, zero-shot).
- Target ARCADE (`arcade_vessels/val`, main segments only): `xca` (the
  `cmunet_small_xca` preset: the CM-UNet start fine-tuned on the 30 CIMAT
  pairs, no ARCADE label), `cmunet` and `scratch`, fine-tuned on k = 3, 10
  of the 140 ARCADE training pairs, scored on the 60 validation pairs:
  centerline recall (the share of the annotated segments' skeleton that
  the mask covers) as the headline, pixel sensitivity beside it,
  specificity as a floor.

Budgets (steps, learning rate) per start are the few-label rule of
`cm_unet_keras.training.few_label`, chosen by `--stage screen` on the
selection pairs (the training pairs not drawn for the run), never on the
scored ones. `--reuse-study` takes scratch runs the label-efficiency study
already made under the same protocol (same code, subsets, seeds, budget
and scoring: `benchmarks/label_efficiency/results.json`) instead of
repeating them; they are marked as such in the results.

Runs go to `runs/adaptation/` (each resumes); one JSON line per finished
run in `benchmarks/adaptation/runs.jsonl`.

`--stage check --target cimat|arcade|xcad [--k 1 2 3 5] [--draws 5]
[--no-select]` measures the adaptation check (issue 34, item 4): for each
k and draw of k training pairs of the target (seeds 0..draws-1 of
`labelled_subset`, plus the k frames `cm-unet select --model START --count
k` proposes from the training images), three arms on the same pairs: the
start untouched (`CHECK_STARTS`: CIMAT from `general_no_cimat`, ARCADE
from `xca`, XCAD from `general`; scored once), today's few-label rule
(`adapt(..., check=False)`) and the checked fine-tune (`adapt(...,
check=True)`), each scored on the target's validation pairs (XCAD, k = 1
only: each of its 2 frames adapts, the other scores). One line per arm in
`check.jsonl` (pairs, scores, what was chosen and why, wall time, load,
precision); `--report` writes `check.md` from it: per target and k the
arms' mean Dice, checked - start and checked - rule paired by draw with
95% intervals, the worst draw, and the issue's three targets met or
missed. `check_stage` takes the runs and results folders, the start, the
network's settings and the check's budgets as arguments (a test runs it on
a tiny U-Net). The budgets are chosen by the check on the training pairs
only; the scored pairs never enter a draw (checked before anything trains).
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "adaptation"
RECIPES = ROOT / "recipes"  # the split files
RUNS = ROOT / "runs" / "adaptation"
DATA = ROOT.parent / "shared" / "data"
STEPS_PER_EPOCH = 100
GENERAL_STEPS = 4000  # the budget of the previous general preset (benchmarks/cross_source/training.md)
SEEDS = {0: (), 1: (0, 1, 2, 3, 4), 3: (0, 1, 2, 3, 4), 10: (0, 1, 2)}
ARCADE_SEEDS = {3: (0, 1, 2), 10: (0, 1, 2)}
SCREEN_SEEDS = (0, 1)
FIRST_MACHINE = "x86_64, 2 cores"  # where the first runs ran, before each run recorded it


# --- data -------------------------------------------------------------------

def arcade_syntax_train(folder):
    from cm_unet_keras.data.layouts import index_images_masks

    folder = Path(folder)
    if not (folder / "images").is_dir():
        raise SystemExit(f"{folder}: no images/ folder; import ARCADE's syntax train split with "
                         "recipes/import_arcade_syntax.py first")
    return index_images_masks(folder / "images", folder / "masks")


# --- starts -----------------------------------------------------------------

def start_name(start):
    """A start as the reports name it: a preset's name, or a path inside the
    checkout relative to it (never this machine's absolute path)."""
    path = Path(str(start))
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(start)


def general_no_cimat_path():
    return RUNS / "starts" / "general_no_cimat" / "model.keras"


def train_general_no_cimat(arcade_train_dir, data_root, log=print):
    """The CIMAT-free generalist: `cmunet_small_pretrained` fine-tuned on
    ARCADE's syntax train split and the 140 ARCADE training pairs, the
    previous general preset's recipe (`recipes/general.py`, variant "both":
    no augmentation, last epoch of 4,000 steps)."""
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.experiments.data import arcade_parts
    from cm_unet_keras.training.finetune import finetune

    records = arcade_syntax_train(arcade_train_dir) + arcade_parts(data_root, RECIPES)[0]
    config = FinetuneConfig(base_filters=16, depth=4, epochs=GENERAL_STEPS // STEPS_PER_EPOCH,
                            steps_per_epoch=STEPS_PER_EPOCH, init="cmunet_small_pretrained", select="last",
                            val_fraction=0.0, seed=0)
    started = time.perf_counter()
    fit = finetune(config, records, general_no_cimat_path().parent, verbose=0,
                   log=lambda line: log(f"[general_no_cimat] {line}"))
    log(f"general_no_cimat: {len(records)} pairs, {GENERAL_STEPS} steps, {time.perf_counter() - started:.0f} s")
    return fit


def start_init(start):
    """The `--init` of a start (None: random initialisation)."""
    if start == "general_no_cimat":
        path = general_no_cimat_path()
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run --stage starts first")
        return str(path)
    return {"scratch": None, "cmunet": "cmunet_small_pretrained", "xca": "cmunet_small_xca",
            "general": "cmunet_small_general"}[start]


def finetune_config(start, steps, lr, seed):
    from cm_unet_keras.config import FinetuneConfig

    return FinetuneConfig(base_filters=16, depth=4, epochs=steps // STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH,
                          lr=lr, seed=seed, init=start_init(start), select="last", val_fraction=0.0)


def budget(start, k):
    """(steps, lr) of the package's few-label rule for a start and k pairs."""
    from cm_unet_keras.training.few_label import few_label_settings

    kind = {"scratch": "scratch", "cmunet": "pretrained"}.get(start, "finetuned")
    steps, lr, _ = few_label_settings(kind, k)
    return (steps or 2000), (lr or 2e-3)


# --- runs -------------------------------------------------------------------

def finished(name, out=None):
    from cm_unet_keras.experiments.store import read_jsonl

    return read_jsonl(Path(out or OUT) / name, lambda row: row["key"])


def record(name, row, out=None):
    from cm_unet_keras.experiments.report import machine
    from cm_unet_keras.experiments.store import append_jsonl

    if row.get("ran", "this benchmark") == "this benchmark":  # a reused run keeps its own record
        row = dict(row, machine=machine())
    out = Path(out or OUT)
    out.mkdir(parents=True, exist_ok=True)
    append_jsonl(out / name, row)


def screen_run(start, k, steps, lr, seed, data_root, log=print):
    """Fine-tune `start` on k CIMAT training pairs; Dice on the other training
    pairs (the selection pairs) after the last epoch. The validation pairs
    are not read."""
    from cm_unet_keras.experiments.data import cimat_parts, selection_split
    from cm_unet_keras.training.finetune import finetune

    key = f"{start}_k{k}_s{steps}_lr{lr:g}_seed{seed}"
    if key in finished("screen.jsonl"):
        return
    train, _ = cimat_parts(data_root, RECIPES)
    labelled, selection = selection_split(train, k, seed)
    chosen = {r.name for r in labelled}
    started = time.perf_counter()
    if steps == 0:
        from cm_unet_keras.evaluation.evaluate import evaluate_model
        from cm_unet_keras.inference.predict import load_model

        dice = evaluate_model(load_model(start_init(start)), selection, threshold=0.5)["mean"]["dice"]
        record("screen.jsonl", {"key": key, "start": start, "k": k, "steps": 0, "lr": lr, "seed": seed,
                                "labelled": sorted(chosen), "n_selection": len(selection), "selection_dice": dice,
                                "seconds": round(time.perf_counter() - started, 1), "curve": [], "best_val_dice": None})
        log(f"{key}: selection Dice {dice:.4f} (untouched)")
        return
    fit = finetune(finetune_config(start, steps, lr, seed), labelled, RUNS / "screen" / key, val_records=selection,
                   verbose=0, log=lambda line: log(f"[{key}] {line}"))
    history = json.loads((RUNS / "screen" / key / "state.json").read_text())["history"]
    record("screen.jsonl", {"key": key, "start": start, "k": k, "steps": steps, "lr": lr, "seed": seed,
                            "labelled": sorted(chosen), "n_selection": len(selection),
                            "selection_dice": history[-1]["val_dice"], "seconds": round(time.perf_counter() - started, 1),
                            "curve": [[row["epoch"] * STEPS_PER_EPOCH, row["val_dice"]] for row in history],
                            "best_val_dice": fit["best_val_dice"]})
    log(f"{key}: selection Dice {history[-1]['val_dice']:.4f}")


def sweep_run(target, start, k, seed, data_root, log=print):
    """Fine-tune `start` on k pairs of `target`'s training part (k = 0: the
    start as it is) and score it on `target`'s validation part."""
    from cm_unet_keras.evaluation.evaluate import evaluate_model
    from cm_unet_keras.experiments.data import labelled_subset, target_parts
    from cm_unet_keras.experiments.runs import finetune_and_evaluate
    from cm_unet_keras.inference.predict import load_model

    steps, lr = budget(start, k) if k else (0, None)
    key = f"{target}_{start}_k{k}_seed{seed}"
    done = [r for r in finished("runs.jsonl").values() if r["key"].startswith(key)]
    if any((r["steps"], r["lr"]) == (steps, lr) for r in done):
        return
    if done:  # a run under an earlier rule is kept beside this one
        key += f"_s{steps}_lr{lr:g}"
    train, validation = target_parts(target, data_root, RECIPES)
    started = time.perf_counter()
    if k == 0:
        labelled = []
        report = evaluate_model(load_model(start_init(start)), validation, threshold=0.5)
    else:
        labelled = labelled_subset(train, k, seed)
        _, report = finetune_and_evaluate(finetune_config(start, steps, lr, seed), labelled, validation,
                                          RUNS / "sweep" / key, verbose=0, log=lambda line: log(f"[{key}] {line}"))
    record("runs.jsonl", {"key": key, "target": target, "start": start, "k": k, "seed": seed, "steps": steps, "lr": lr,
                          "labelled": sorted(r.name for r in labelled), "n_scored": len(validation),
                          "metrics": report["mean"], "metrics_std": report["std"],
                          "seconds": round(time.perf_counter() - started, 1), "ran": "this benchmark"})
    log(f"{key}: " + ", ".join(f"{name} {value:.4f}" for name, value in report["mean"].items()))


# The study's inits that are this benchmark's starts at its budgets: scratch
# at 2,000 steps, and cmunet@500, the study's `cmunet` pretraining (the same
# weights as the `cmunet_small_pretrained` preset, which was extracted from
# it) fine-tuned 500 steps.
STUDY_STARTS = {("scratch", 2000): "scratch", ("cmunet@500", 500): "cmunet", ("cmunet", 2000): "cmunet"}


def reuse_study(path):
    """Runs of the label-efficiency study at this benchmark's protocol (the
    rule's budget and lr 2e-3, the same nested subsets, seeds and validation
    pairs) as records of this benchmark, marked as reused."""
    done = finished("runs.jsonl")
    for row in json.loads(Path(path).read_text()):
        start = STUDY_STARTS.get((row["init"], row.get("steps") or 2000))
        if start is None or row["n_labels"] not in SEEDS or budget(start, row["n_labels"])[0] != (row.get("steps") or 2000):
            continue
        key = f"cimat_{start}_k{row['n_labels']}_seed{row['seed']}"
        steps = row.get("steps") or 2000
        if any(r["key"].startswith(key) and r["steps"] == steps for r in done.values()):
            continue
        if key in done:  # a run under an earlier rule holds the plain key
            key += f"_s{steps}_lr0.002"
        record("runs.jsonl", {"key": key, "target": "cimat", "start": start, "k": row["n_labels"],
                              "seed": row["seed"], "steps": steps, "lr": 2e-3, "labelled": row["labelled"],
                              "n_scored": row["n_holdout"], "metrics": row["metrics"],
                              "metrics_std": row["metrics_std"], "seconds": row.get("seconds"),
                              "ran": f"reused from {Path(path).relative_to(ROOT)}"})


def xcad_run(fold, data_root, log=print):
    """A new source with one labelled frame: the shipped `cmunet_small_general`
    fine-tuned by the few-label rule on one `xcad_sample` pair and scored on
    the other (fold 0 trains on the first), beside the preset untouched on
    that frame. Two frames: a smoke test of the rule on a third source, not
    a measurement."""
    from cm_unet_keras.evaluation.evaluate import evaluate_model
    from cm_unet_keras.experiments.data import xcad_pairs
    from cm_unet_keras.experiments.runs import finetune_and_evaluate
    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.models.presets import preset_card

    steps, lr = budget("general", 1)
    key = f"xcad_general_fold{fold}_s{steps}_lr{lr:g}"
    if key in finished("runs.jsonl"):
        return
    records = xcad_pairs(data_root)
    labelled, scored = [records[fold]], [records[1 - fold]]
    config = finetune_config("general", steps, lr, fold)
    started = time.perf_counter()
    before = evaluate_model(load_model("cmunet_small_general"), scored, threshold=0.5)["mean"]
    _, report = finetune_and_evaluate(config, labelled, scored, RUNS / "sweep" / key, verbose=0,
                                      log=lambda line: log(f"[{key}] {line}"))
    record("runs.jsonl", {"key": key, "target": "xcad", "start": "general", "k": 1, "seed": fold, "steps": steps,
                          "lr": lr, "labelled": [labelled[0].name], "n_scored": 1, "metrics": report["mean"],
                          "metrics_before": before, "preset_sha256": preset_card("cmunet_small_general")["sha256"],
                          "seconds": round(time.perf_counter() - started, 1), "ran": "this benchmark"})
    log(f"{key}: Dice {before['dice']:.4f} untouched -> {report['mean']['dice']:.4f} after {steps} steps on "
        f"{labelled[0].name}")


# --- the adaptation check, measured (issue 34, item 4) ------------------------

CHECK_FILE, CHECK_REPORT = "check.jsonl", "check.md"
CHECK_KS = (1, 2, 3, 5)
CHECK_DRAWS = 5
# Each target's start: one that never saw a label of the target.
CHECK_STARTS = {"cimat": "general_no_cimat", "arcade": "xca", "xcad": "general"}
ARMS = ("start", "rule", "checked")
WORST_DRAW = -0.015  # issue 34: no draw more than 0.015 Dice below the start


def select_choice(start, train, k):
    """The k of `train`'s images `cm-unet select --model START --count k`
    proposes with its defaults (typical, seed 0, float32): images only."""
    import warnings

    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.selection import choose_frames

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(start)
    names = {choice["record"].name for choice in choose_frames(model, train, k)}
    return sorted((record for record in train if record.name in names), key=lambda record: record.name)


def check_draws(target, k, draws, data_root, start, select=True, out=None):
    """`[(draw, labelled, scored)]` for one target and k: seeds 0..draws-1 of
    `labelled_subset` (nested across k at a seed) and `select`'s choice, each
    scored on the target's validation part; XCAD (k = 1 only): each of its 2
    frames trains once and the other scores."""
    from cm_unet_keras.experiments.data import labelled_subset, target_parts, xcad_pairs

    if target == "xcad":
        if k != 1:
            raise SystemExit(f"XCAD has 2 labelled frames: k = 1 only (one adapts, the other scores), not k = {k}")
        pairs = xcad_pairs(data_root)
        return [(f"fold{fold}", [pairs[fold]], [pairs[1 - fold]]) for fold in (0, 1)]
    train, scored = target_parts(target, data_root, RECIPES)
    plan = [(f"seed{seed}", labelled_subset(train, k, seed), scored) for seed in range(draws)]
    if select:
        made = [row for row in finished(CHECK_FILE, out).values()
                if (row["target"], row["k"], row["draw"]) == (target, k, "select")]
        labelled = [r for r in train if r.name in made[0]["labelled"]] if made else select_choice(start, train, k)
        plan.append(("select", labelled, scored))
    return plan


def arm_model(arm, start, labelled, run_dir, overrides, budgets, log):
    """`(model path, chosen, reason, warning)` of one arm: the start as it is,
    or `adapt` (the adaptation check's entry point) with the check off (the
    few-label rule) or on, as `cm-unet finetune --init START` runs it."""
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.training.adaptation_check import adapt, read_record
    from cm_unet_keras.training.few_label import apply_few_label_rule

    if arm == "start":
        return start, {"steps": 0, "lr": None}, "the start untouched", None, None
    config = FinetuneConfig(init=start, val_fraction=0.0, **(overrides or {}))
    fit = adapt(config, labelled, run_dir, check=arm == "checked", budgets=budgets, note=log, verbose=0, log=log)
    recorded = read_record(run_dir)
    if recorded is not None:
        return (fit["model_path"], recorded["chosen"], recorded["reason"], recorded.get("warning"),
                check_estimates(recorded))
    ruled, message = apply_few_label_rule(config, len(labelled))
    return fit["model_path"], {"steps": ruled.epochs * ruled.steps_per_epoch, "lr": ruled.lr}, message, None, None


def check_estimates(record):
    """The check's own estimate of each candidate (`adaptation.json`'s
    candidates): steps, lr and the held-out Dice per fold; None when the
    check did not run (one pair)."""
    if not record.get("checked"):
        return None
    return [{"steps": c["steps"], "lr": c["lr"], "dice": c["dice"]} for c in record["candidates"]]


def check_run(target, arm, k, draw, labelled, scored, start, runs, out, overrides=None, budgets=None, log=print):
    """One arm on one draw, scored on `scored`; a line of `check.jsonl`. The
    start is scored once per scored set (its key names no draw but XCAD's)."""
    import os

    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.evaluation.evaluate import evaluate_model
    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.models.precision import resolve_precision

    key = f"{target}_start" + (f"_{draw}" if target == "xcad" else "") if arm == "start" else \
        f"{target}_k{k}_{draw}_{arm}"
    if key in finished(CHECK_FILE, out):
        return
    load, started = os.getloadavg(), time.perf_counter()
    model_path, chosen, reason, warning, estimates = arm_model(
        arm, start, labelled, Path(runs) / key, overrides, budgets, lambda line: log(f"[{key}] {line}"))
    model = load_model(model_path)
    report = evaluate_model(model, scored, threshold=0.5)
    record(CHECK_FILE, {
        "key": key, "target": target, "arm": arm, "k": None if arm == "start" else k,
        "draw": draw if arm != "start" or target == "xcad" else None, "start": start_name(start),
        "labelled": [] if arm == "start" else sorted(r.name for r in labelled), "scored": [r.name for r in scored],
        "metrics": report["mean"], "per_image_dice": [row["dice"] for row in report["per_image"]],
        "chosen": chosen, "reason": reason, "warning": warning, "estimates": estimates,
        # The policy it trained in (None: the start), and the one its layers scored in (as saved).
        "precision": None if arm == "start" else resolve_precision(FinetuneConfig(**(overrides or {})).precision),
        "scored_in": model.dtype_policy.name, "seconds": round(time.perf_counter() - started, 1),
        "load_before": [round(value, 2) for value in load], "load_after": [round(v, 2) for v in os.getloadavg()],
        "ran": "this benchmark"}, out)
    log(f"{key}: Dice {report['mean']['dice']:.4f}, clDice {report['mean']['cldice']:.4f} ({reason})")


def check_stage(target, ks=CHECK_KS, draws=CHECK_DRAWS, data_root=DATA, start=None, select=True, runs=None,
                out=None, overrides=None, budgets=None, log=print):
    """Every draw of `target` at each k, the three arms on the same pairs.

    `start` (default: `CHECK_STARTS[target]`), `runs` and `out` (the run
    folders and `check.jsonl`'s folder), `overrides` (FinetuneConfig fields:
    a small network for a test) and `budgets` (the check's candidates) may
    be changed; the pairs are checked apart before anything trains.
    """
    start = start or start_init(CHECK_STARTS[target])
    runs = Path(runs or RUNS / "check")
    for k in ks:
        for draw, labelled, scored in check_draws(target, k, draws, data_root, start, select, out):
            shared = {r.name for r in labelled} & {r.name for r in scored}
            if shared:
                raise SystemExit(f"{target} k={k} {draw}: {sorted(shared)} would both train and score")
            for arm in ARMS:
                check_run(target, arm, k, draw, labelled, scored, start, runs, out, overrides, budgets, log)


# --- plans ------------------------------------------------------------------

# (start, k, steps, lr): the screen's grid. cmunet and scratch at k = 3 were
# screened before (benchmarks/pretrain_screen/results.md: cmunet peaks at
# 500 steps, scratch needs 2,000); the generalist is new.
SCREEN = (
    ("general_no_cimat", 3, 200, 2e-3), ("general_no_cimat", 3, 500, 2e-3), ("general_no_cimat", 3, 1000, 2e-3),
    ("general_no_cimat", 3, 500, 5e-4),
    ("general_no_cimat", 10, 500, 2e-3), ("general_no_cimat", 10, 2000, 2e-3),
    ("cmunet", 10, 500, 2e-3), ("cmunet", 10, 2000, 2e-3),
    # One labelled pair: the k = 3 choice (200 steps at 2e-3) lost Dice on the
    # validation pairs against the untouched start, so k = 1 was screened too
    # (steps 0: the start untouched, scored on the same selection pairs).
    ("general_no_cimat", 1, 0, 0.0), ("general_no_cimat", 1, 200, 2e-3), ("general_no_cimat", 1, 100, 5e-4),
    ("general_no_cimat", 1, 200, 5e-4),
)
STARTS = {"cimat": ("general_no_cimat", "cmunet", "scratch"), "arcade": ("xca", "cmunet", "scratch")}
ZERO_SHOT = {"cimat": ("general_no_cimat",), "arcade": ("xca",)}
HEADLINE = {"cimat": "dice", "arcade": "centerline_recall"}


def sweep_plan(target, starts=None, ks=None):
    seeds = SEEDS if target == "cimat" else ARCADE_SEEDS
    plan = [(start, 0, 0) for start in ZERO_SHOT[target] if not starts or start in starts]
    for k in sorted(k for k in seeds if k):
        for start in starts or STARTS[target]:
            plan += [(start, k, seed) for seed in seeds[k]]
    return [run for run in plan if not ks or run[1] in ks]


# --- report -----------------------------------------------------------------

def current(rows):
    """The rows run at the few-label rule as it is now (not an earlier rule's)."""
    return [r for r in rows if not r["k"] or (r["steps"], r["lr"]) == budget(r["start"], r["k"])]


def paired(rows, target, a, b, k, key):
    by = {(r["start"], r["seed"]): r["metrics"].get(key) for r in current(rows)
          if r["target"] == target and r["k"] == k}
    return [by[(a, s)] - by[(b, s)] for (start, s) in sorted(by) if start == a and by.get((b, s)) is not None
            and by[(a, s)] is not None]


def summary_table(rows, target, keys):
    from cm_unet_keras.experiments.report import mean_interval

    lines = [f"| start | k | runs | {' | '.join(keys)} | steps, lr |", "|---" * (len(keys) + 4) + "|"]
    for start in STARTS[target]:
        budgets = sorted({(r["k"], r["steps"], r["lr"] or 0) for r in rows if r["target"] == target and r["start"] == start},
                         key=lambda b: (b[0], -b[1]))
        for k, steps, lr in budgets:
            group = [r for r in rows if r["target"] == target and r["start"] == start and r["k"] == k
                     and (r["steps"], r["lr"] or 0) == (steps, lr)]
            cells = []
            for key in keys:
                values = [r["metrics"][key] for r in group if r["metrics"].get(key) is not None]
                mean = mean_interval(values)[0] if values else float("nan")
                cells.append(f"{mean:.3f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}")
            reused = sum(1 for r in group if r["ran"] != "this benchmark")
            earlier = k and (steps, lr) != budget(start, k)
            budget_text = "zero-shot" if k == 0 else f"{steps}, {lr:g}" + (" (an earlier rule)" if earlier else "")
            lines.append(f"| {start} | {k} | {len(group)}{f' ({reused} reused)' if reused else ''} | "
                         f"{' | '.join(cells)} | {budget_text} |")
    return lines


def interval_cell(differences):
    """Paired differences: mean [Student-t 95% interval] (wins / pairs)."""
    from cm_unet_keras.experiments.report import mean_interval

    mean, low, high = mean_interval(differences)
    interval = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
    return f"{mean:+.3f}{interval} ({sum(d > 0 for d in differences)}/{len(differences)})"


def paired_table(rows, target, key):
    starts = STARTS[target]
    pairs = [(a, b) for i, a in enumerate(starts) for b in starts[i + 1:]]
    lines = ["| k | " + " | ".join(f"{a} - {b}" for a, b in pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
    for k in sorted({r["k"] for r in rows if r["target"] == target and r["k"]}):
        cells = []
        for a, b in pairs:
            differences = paired(rows, target, a, b, k, key)
            if not differences:
                cells.append("-")
                continue
            cells.append(interval_cell(differences))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def write_report(command):
    from cm_unet_keras.experiments.report import recorded

    rows = list(finished("runs.jsonl").values())
    screen = list(finished("screen.jsonl").values())
    ran_on = recorded(rows + screen, "machine", FIRST_MACHINE)
    lines = ["# Adaptation to a new source with k labelled frames, leave-one-source-out (issue 25)", "",
             f"Written by `{command}`; machine: {ran_on}. Mean +- sample sd over seeds (a seed draws the k",
             "pairs: the study's nested subsets, the same for every start). Paired differences: mean [Student-t 95%",
             "interval] (seeds where the first start wins / seeds); the runs of a seed share their k pairs.", ""]
    for target, keys in (("cimat", ("dice", "cldice", "sensitivity", "specificity")),
                         ("arcade", ("centerline_recall", "sensitivity", "specificity", "dice"))):
        if not any(r["target"] == target for r in rows):
            continue
        scored = "the 10 validation pairs of `recipes/xca_split.json`" if target == "cimat" else \
            "the 60 validation pairs of `recipes/arcade_split.json` (main segments only)"
        present = [key for key in keys if any(key in r["metrics"] for r in rows if r["target"] == target)]
        lines += [f"## Target {target.upper()}: scored on {scored}", ""] + summary_table(rows, target, present)
        lines += ["", f"Paired differences in {HEADLINE[target]}:", ""] + paired_table(rows, target, HEADLINE[target])
        lines += [""]
    xcad = [r for r in rows if r["target"] == "xcad"]
    if xcad:
        lines += ["## A third source with one labelled frame: XCAD (2 frames, a smoke test, not a measurement)", "",
                  "The shipped `cmunet_small_general` (SHA-256 prefix "
                  f"{xcad[0]['preset_sha256'][:12]}) fine-tuned by the few-label rule on one `xcad_sample` pair, scored "
                  "on the other, beside the preset untouched on that frame.", "",
                  "| trained on | steps, lr | Dice untouched | Dice adapted | clDice untouched | clDice adapted |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(xcad, key=lambda r: (-r["steps"], r["seed"])):
            lines.append(f"| {r['labelled'][0]} | {r['steps']}, {r['lr']:g} | {r['metrics_before']['dice']:.3f} | "
                         f"{r['metrics']['dice']:.3f} | {r['metrics_before']['cldice']:.3f} | {r['metrics']['cldice']:.3f} |")
        lines += [""]
    if screen:
        lines += ["## Screen: budgets on the selection pairs (CIMAT training pairs not drawn; validation never read)",
                  "", "| start | k | steps | lr | seeds | selection Dice |", "|---|---|---|---|---|---|"]
        for start, k, steps, lr in SCREEN:
            group = [r["selection_dice"] for r in screen if (r["start"], r["k"], r["steps"], r["lr"]) == (start, k, steps, lr)]
            if group:
                lines.append(f"| {start} | {k} | {steps} | {lr:g} | {len(group)} | {np.mean(group):.3f} "
                             f"({', '.join(f'{v:.3f}' for v in group)}) |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    (OUT / "results.json").write_text(json.dumps({"runs": rows, "screen": screen}, indent=1) + "\n")
    print("\n".join(lines))


def check_dice(rows, target, k):
    """`{draw: {arm: Dice}}` of the draws of `target` at `k` that have all
    three arms; the start's Dice is the one on the draw's own scored pairs."""
    starts = {tuple(r["scored"]): r["metrics"]["dice"] for r in rows if r["target"] == target and r["arm"] == "start"}
    draws = {}
    for r in rows:
        if r["target"] == target and r["k"] == k and r["arm"] != "start":
            draws.setdefault(r["draw"], {"start": starts.get(tuple(r["scored"]))})[r["arm"]] = r["metrics"]["dice"]
    return {draw: arms for draw, arms in draws.items() if all(arms.get(arm) is not None for arm in ARMS)}


def check_verdicts(dice):
    """The issue's three targets at one k from `check_dice`'s draws: mean
    checked - start >= 0 over the random draws; no draw (select's included)
    below the start by more than 0.015; where the rule gains on average,
    mean checked - rule >= 0 (None: the rule does not gain)."""
    random = [arms for draw, arms in dice.items() if draw != "select"]
    gain = np.mean([arms["checked"] - arms["start"] for arms in random])
    worst = min(arms["checked"] - arms["start"] for arms in dice.values())
    rule_gain = np.mean([arms["rule"] - arms["start"] for arms in random])
    over_rule = np.mean([arms["checked"] - arms["rule"] for arms in random])
    return {"average": bool(gain >= 0), "worst": bool(worst >= WORST_DRAW),
            "rule_gain": bool(over_rule >= 0) if rule_gain > 0 else None}


def check_table(rows, target):
    """The lines of one target's table, and `{k: verdicts}`."""
    lines = ["| k | draws | Dice start | Dice rule | Dice checked | checked - start | checked - rule | "
             "worst draw, checked - start | select: checked - start | targets 1, 2, 3 |", "|---" * 10 + "|"]
    verdicts = {}
    word = {True: "met", False: "missed", None: "n/a"}
    for k in sorted({r["k"] for r in rows if r["target"] == target and r["k"]}):
        dice = check_dice(rows, target, k)
        random = {draw: arms for draw, arms in dice.items() if draw != "select"}
        if not random:
            continue
        verdicts[k] = check_verdicts(dice)
        means = [np.mean([arms[arm] for arms in random.values()]) for arm in ARMS]
        worst = min(dice, key=lambda draw: dice[draw]["checked"] - dice[draw]["start"])
        chosen = dice.get("select")
        select_cell = f"{chosen['checked'] - chosen['start']:+.3f}" if chosen else "-"
        lines.append(
            f"| {k} | {len(random)} | {means[0]:.3f} | {means[1]:.3f} | {means[2]:.3f} | "
            f"{interval_cell([a['checked'] - a['start'] for a in random.values()])} | "
            f"{interval_cell([a['checked'] - a['rule'] for a in random.values()])} | "
            f"{dice[worst]['checked'] - dice[worst]['start']:+.3f} ({worst}) | {select_cell} | "
            f"{', '.join(word[verdicts[k][name]] for name in ('average', 'worst', 'rule_gain'))} |")
    return lines, verdicts


def verdict_lines(verdicts):
    """One line per target of the issue: met at every k, or where missed."""
    texts = {"average": "1. at no k worse than the start on average (mean checked - start >= 0)",
             "worst": f"2. no draw more than {-WORST_DRAW:g} Dice below the start",
             "rule_gain": "3. at least the rule's gain where the rule gains (mean checked - rule >= 0 there)"}
    lines = []
    for name, text in texts.items():
        missed = [k for k, verdict in verdicts.items() if verdict[name] is False]
        judged = [k for k, verdict in verdicts.items() if verdict[name] is not None]
        state = "n/a (the rule gains at no k)" if not judged else \
            f"**missed** at k = {', '.join(map(str, missed))}" if missed else \
            f"met (k = {', '.join(map(str, judged))})"
        lines.append(f"- {text}: {state}")
    return lines


def estimated_gain(estimates, steps, lr):
    """The check's held-out estimate of a budget's Dice minus the start's
    (means over its folds); None when that budget was not a candidate."""
    by_budget = {(c["steps"], c["lr"]): float(np.mean(c["dice"])) for c in estimates}
    if (steps, lr) not in by_budget or (0, None) not in by_budget:
        return None
    return by_budget[(steps, lr)] - by_budget[(0, None)]


def foresight_lines(rows, target):
    """Does the check foresee what fine-tuning does to the scored pairs? Per
    k, over the draws whose checked arm recorded its estimates: the check's
    held-out estimate of the rule's budget minus the start, against what
    the rule's arm measured on the scored pairs (rule - start), with their
    Pearson r and the draws where the two have the same sign."""
    by_arm = {(r["target"], r["k"], r["draw"], r["arm"]): r for r in rows}
    lines = ["| k | draws | estimated rule - start | measured rule - start | r | same sign |", "|---" * 6 + "|"]
    for k in sorted({r["k"] for r in rows if r["target"] == target and r["k"] and r["k"] > 1}):
        pairs = []
        for draw, arms in check_dice(rows, target, k).items():
            checked, rule = by_arm[(target, k, draw, "checked")], by_arm[(target, k, draw, "rule")]
            if not checked.get("estimates"):
                continue
            estimate = estimated_gain(checked["estimates"], rule["chosen"]["steps"], rule["chosen"]["lr"])
            if estimate is not None:
                pairs.append((estimate, arms["rule"] - arms["start"]))
        if len(pairs) < 3:
            continue
        estimated, measured = (np.array(column) for column in zip(*pairs))
        r = f"{np.corrcoef(estimated, measured)[0, 1]:+.2f}" if estimated.std() > 0 and measured.std() > 0 else "-"
        lines.append(f"| {k} | {len(pairs)} | {estimated.mean():+.3f} | {measured.mean():+.3f} | {r} | "
                     f"{int(np.sum(np.sign(estimated) * np.sign(measured) > 0))}/{len(pairs)} |")
    return lines if len(lines) > 2 else []


def check_report_lines(rows, command):
    """`check.md`: per target and k, the three arms' Dice, paired differences
    over draws with Student-t 95% intervals, the worst draw and the targets."""
    from cm_unet_keras.experiments.report import recorded

    lines = ["# The adaptation check, measured leave-one-source-out (issue 34, item 4)", "",
             f"Written by `{command}`; machine: {recorded(rows, 'machine', FIRST_MACHINE)}; precision: "
             f"{recorded([r for r in rows if r['arm'] != 'start'], 'precision', 'unrecorded')} (training), "
             f"{recorded(rows, 'scored_in', 'unrecorded')} (scoring). Three arms on the same k training pairs of a draw: "
             "the start untouched, today's few-label rule (`adapt(..., check=False)`, `--no-check`) and the checked "
             "fine-tune (`adapt(..., check=True)`, `cm-unet finetune`'s default), each scored with Dice on the "
             "target's validation pairs (XCAD: the other frame). Draws: seeds of the study's nested subsets, and "
             "`select` (`cm-unet select --model START --count k`'s choice). Paired differences over the random "
             "draws: mean [Student-t 95% interval] (draws where the first arm is higher / draws); the worst draw "
             "and target 2 include `select`'s.", "",
             "Targets (issue 34): 1. at no k worse than the start on average; 2. no draw more than "
             f"{-WORST_DRAW:g} Dice below the start; 3. at least today's rule's gain where the rule gains (n/a: "
             "the rule does not gain at that k).", ""]
    for target in CHECK_STARTS:
        starts = sorted({start_name(r["start"]) for r in rows if r["target"] == target})
        table, verdicts = check_table(rows, target)
        if not verdicts:
            continue
        seconds = [r["seconds"] for r in rows if r["target"] == target]
        lines += [f"## Target {target.upper()}, from {', '.join(f'`{s}`' for s in starts)}", ""] + table + [""]
        lines += verdict_lines(verdicts) + [""]
        foresight = foresight_lines(rows, target)
        if foresight:
            lines += ["Does the check foresee the gain? Its held-out estimate (leave-one-out over the draw's own k "
                      "pairs, mean over folds) of a budget's Dice minus the start's, against the same "
                      "difference measured on the scored pairs, for the rule's budget (draws whose estimates are "
                      "recorded):", ""] + foresight + [""]
        lines += [f"{len(seconds)} runs, {sum(seconds) / 3600:.2f} h in all.", ""]
    return lines


def write_check_report(command, out=None):
    """`check.md` from `check.jsonl` (nothing when no check run is recorded)."""
    rows = list(finished(CHECK_FILE, out).values())
    if not rows:
        return None
    text = "\n".join(check_report_lines(rows, command)) + "\n"
    (Path(out or OUT) / CHECK_REPORT).write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("starts", "screen", "cimat", "arcade", "xcad", "check"), action="append",
                        default=[])
    parser.add_argument("--target", choices=tuple(CHECK_STARTS), action="append", default=[],
                        help="--stage check: the target(s) left out")
    parser.add_argument("--draws", type=int, default=CHECK_DRAWS, help="--stage check: random draws per k")
    parser.add_argument("--no-select", dest="select", action="store_false",
                        help="--stage check: no draw of `cm-unet select`'s choice")
    parser.add_argument("--arcade-train", help="ARCADE syntax train split imported by recipes/import_arcade_syntax.py")
    parser.add_argument("--starts", nargs="+", help="only these starts (default: every start of the target)")
    parser.add_argument("--k", type=int, nargs="+", help="only these k")
    parser.add_argument("--reuse-study", nargs="?", const=str(ROOT / "benchmarks" / "label_efficiency" / "results.json"))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if "starts" in args.stage:
        if not args.arcade_train:
            parser.error("--stage starts needs --arcade-train DIR")
        train_general_no_cimat(args.arcade_train, args.data, log)
    if args.reuse_study:
        reuse_study(args.reuse_study)
    if "screen" in args.stage:
        for start, k, steps, lr in SCREEN:
            if (not args.starts or start in args.starts) and (not args.k or k in args.k):
                for seed in (0, 1, 2) if k == 1 else SCREEN_SEEDS if k <= 3 else SCREEN_SEEDS[:1]:
                    screen_run(start, k, steps, lr, seed, args.data, log)
    for target in ("cimat", "arcade"):
        if target in args.stage:
            for start, k, seed in sweep_plan(target, args.starts, args.k):
                sweep_run(target, start, k, seed, args.data, log)
    if "xcad" in args.stage:
        for fold in (0, 1):
            xcad_run(fold, args.data, log)
    if "check" in args.stage:
        if not args.target:
            parser.error("--stage check needs --target cimat, arcade or xcad")
        for target in args.target:
            ks = args.k or ((1,) if target == "xcad" else CHECK_KS)
            check_stage(target, ks, args.draws, args.data, select=args.select, log=log)
    if args.report:
        command = "python benchmarks/adaptation.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_report(command)
        write_check_report(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
