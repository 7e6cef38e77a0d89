"""The adaptation check: does fine-tuning this start on these few pairs help?

The few-label rule (`training/few_label.py`) was chosen on one target; on
another it helped one lab and harmed the next, and the lab could not tell.
So when a start that already segments is fine-tuned on at most 10 pairs,
`cm-unet finetune` first measures, on the lab's own pairs, what each budget
would do:

- Folds: leave-one-out over the k training pairs (k-fold, `MAX_FOLDS`
  folds of a seeded permutation, beyond `MAX_FOLDS` pairs). A fold trains
  only on its other pairs and scores only its held-out ones.
- Candidates: the start untouched (0 steps), and `CHECK_BUDGETS` (50, 100
  and 200 steps at lr 2e-3; 50 and 100 at 5e-4: the rule's budgets and
  their halves). Per fold and learning rate ONE fine-tune runs to the
  largest budget and scores the held-out pairs on the way, so a shorter
  budget is estimated as the first steps of the longest run's warm-up +
  cosine schedule (its learning rate not yet decayed to 0, as the final
  run's would be). The pairs are decoded once, and the start scores each
  pair once, for every fold.
- Scores: Dice and clDice (`evaluation.metrics`) of the whole held-out
  angiogram at the run's threshold, as `cm-unet evaluate` scores it.
- Choice: the highest mean Dice over folds; within `NEAR_TIE` of it the
  fewest steps, so the start is kept unless a budget beats it by more than
  `NEAR_TIE`. A kept start is written as the run's model unchanged
  (`finetune.keep_start`). When the folds' per-fold differences spread
  wider than the mean difference chosen on, a warning says so.
- One training pair leaves no pair to score, and one frame's fine-tune
  was measured to help or harm by source (`ONE_PAIR` gives the numbers):
  the start is kept unchanged, unchecked, and the record says so
  (`--no-check` trains the rule's budget).

The estimate, the choice, the reason and the check's wall time go to
`adaptation.json` in the run folder and to its card (`README.md`); a rerun
on that folder reads them back and never redoes the check.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from cm_unet_keras.config import read_recipe
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write, atomic_write_json
from cm_unet_keras.data.pipeline import load_labelled
from cm_unet_keras.evaluation.metrics import cldice, dice
from cm_unet_keras.models.full_image import predict_normalized
from cm_unet_keras.models.unet import CMUNet
from cm_unet_keras.training import few_label
from cm_unet_keras.training.finetune import (
    finetune,
    freeze_batchnorm_layers,
    item_sampler,
    keep_start,
    make_optimizer,
    split_records,
)
from cm_unet_keras.training.losses import DiceBCELoss
from cm_unet_keras.training.runtime import set_precision
from cm_unet_keras.training.transfer import load_initial_weights

# Learning rate -> the budgets (steps) scored on one run to the largest.
CHECK_BUDGETS = {2e-3: (50, 100, 200), 5e-4: (50, 100)}
# Leave-one-out up to this many pairs; beyond, this many folds.
MAX_FOLDS = 5
# Mean Dice within this of the best counts as a tie, and the fewer steps win
# (the few-label screen took the shortest budget within 0.005).
NEAR_TIE = 0.005
# What a shorter budget's estimate is, said in the record and the card.
SHARED_RUN_NOTE = ("each learning rate's budgets share one fine-tune per fold, run to the largest with its "
                   "warm-up + cosine schedule and scored on the way: a shorter budget is scored before its "
                   "learning rate has decayed to 0, as its own run's would")
RECORD = "adaptation.json"
CARD = "README.md"


def fold_plan(n_pairs, seed, max_folds=MAX_FOLDS):
    """The held-out pair indices of each fold: one pair each (leave-one-out)
    up to `max_folds` pairs, else `max_folds` groups of a permutation by `seed`."""
    if n_pairs <= max_folds:
        return [[index] for index in range(n_pairs)]
    order = np.random.default_rng(seed).permutation(n_pairs)
    return [sorted(int(index) for index in group) for group in np.array_split(order, max_folds)]


def frame_scores(model, items, threshold):
    """[(Dice, clDice)] of `model` on each whole `LabelledAngiogram`, thresholded at `threshold`."""
    scores = []
    for item in items:
        vessel_mask = predict_normalized(model, item.angiogram, fov=item.fov).numpy()[..., 0] >= threshold
        scores.append((dice(vessel_mask, item.vessel_mask[..., 0]), cldice(vessel_mask, item.vessel_mask[..., 0])))
    return scores


def start_model(config):
    """The start (`config.init`) in a U-Net of `config`'s shape, and the layers it loaded."""
    model = CMUNet(base_filters=config.base_filters, depth=config.depth, conventions=config.conventions)
    return model, load_initial_weights(model, config.init)["loaded"]


class _ScoreEvery(keras.callbacks.Callback):
    """Scores the held-out items after each epoch whose step count is a budget."""

    def __init__(self, items, threshold, steps_per_epoch, budgets):
        super().__init__()
        self.items, self.threshold, self.steps_per_epoch, self.budgets = items, threshold, steps_per_epoch, budgets
        self.scores = {}

    def on_epoch_end(self, epoch, logs=None):
        steps = (epoch + 1) * self.steps_per_epoch
        if steps in self.budgets:
            self.scores[steps] = frame_scores(self.model, self.items, self.threshold)


class FoldTrainer:
    """Fine-tunes the start at one learning rate, fold after fold.

    One U-Net and one optimizer are built and compiled once; each fold
    starts from the start's weights and a zeroed optimizer state (what a new
    AdamW holds), so the traced training and prediction functions are reused.
    """

    def __init__(self, config, start_weights, loaded, lr, budgets):
        self.config, self.start_weights, self.budgets = config, start_weights, set(budgets)
        self.total, self.every = max(budgets), math.gcd(*budgets)
        self.model = CMUNet(base_filters=config.base_filters, depth=config.depth, conventions=config.conventions)
        if config.freeze_batchnorm:
            freeze_batchnorm_layers(self.model)
        self.model.compile(optimizer=make_optimizer(dataclasses.replace(config, lr=lr), self.total, loaded),
                           loss=DiceBCELoss(config.dice_weight, config.cldice_weight), jit_compile=False)

    def curve(self, train_items, held_items):
        """{steps: [(Dice, clDice) per held-out item]} of one fine-tune from
        the start on `train_items`, run to the largest budget."""
        self.model.set_weights(self.start_weights)
        for variable in self.model.optimizer.variables:
            variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
        keras.utils.set_random_seed(self.config.seed)
        scorer = _ScoreEvery(held_items, self.config.threshold, self.every, self.budgets)
        self.model.fit(item_sampler(self.config, train_items).dataset(self.config.batch_size),
                       epochs=self.total // self.every, steps_per_epoch=self.every, callbacks=[scorer],
                       shuffle=False, verbose=0)
        return scorer.scores


def run_check(config, records, budgets=None, log=print):
    """Estimate, by leave-one-out (or k-fold) over `records`, what each
    candidate budget does to the start `config.init` (see the module docstring).

    Args:
        config: the run's `FinetuneConfig` (its start, shape, patches, loss,
            threshold and seed; its budget and learning rate are not used).
        records: the labelled pairs that train (at least 2).
        budgets: {lr: (steps, ...)}; `CHECK_BUDGETS` by default.
        log: a print-like function for progress lines.

    Returns:
        the record (`adaptation.json`): `pairs`, `method`, `folds` (each
        fold's `held_out` and `trained_on` names), `candidates` (per-fold
        Dice and clDice, their mean and range), `chosen`, `reason`,
        `warning` and `seconds`.
    """
    started = time.perf_counter()
    budgets = budgets or CHECK_BUDGETS
    precision = set_precision(config.precision)
    items = load_labelled(records, clahe=config.clahe)  # decoded once for every fold
    model, loaded = start_model(config)
    start_weights = model.get_weights()
    start_scores = frame_scores(model, items, config.threshold)  # each pair scored once
    folds = fold_plan(len(items), config.seed)
    trainers = {lr: FoldTrainer(config, start_weights, loaded, lr, steps) for lr, steps in budgets.items()}
    per_fold = {(0, None): []}
    record_folds = []
    for number, held in enumerate(folds, 1):
        train_items = [item for index, item in enumerate(items) if index not in held]
        held_items = [items[index] for index in held]
        record_folds.append({"held_out": [item.name for item in held_items],
                             "trained_on": [item.name for item in train_items]})
        per_fold[(0, None)].append([start_scores[index] for index in held])
        for lr, trainer in trainers.items():
            for budget, scores in trainer.curve(train_items, held_items).items():
                per_fold.setdefault((budget, lr), []).append(scores)
        log(f"adaptation check: fold {number}/{len(folds)} done ({time.perf_counter() - started:.0f} s)")
    candidates = [summarise(steps, lr, scores) for (steps, lr), scores in sorted(
        per_fold.items(), key=lambda entry: (entry[0][0], -(entry[0][1] or 0)))]
    chosen, reason, warning = choose(candidates)
    return {"pairs": [item.name for item in items], "method": method_note(len(items), len(folds)),
            "note": SHARED_RUN_NOTE, "threshold": config.threshold, "precision": precision, "near_tie": NEAR_TIE,
            "folds": record_folds,
            "candidates": candidates, "chosen": {"steps": chosen["steps"], "lr": chosen["lr"]},
            "reason": reason, "warning": warning, "seconds": round(time.perf_counter() - started, 1)}


def method_note(n_pairs, n_folds):
    """How the pairs were split, in words."""
    if n_folds == n_pairs:
        return f"leave-one-out over the {n_pairs} training pairs ({n_folds} folds, each scoring 1 pair)"
    return f"{n_folds}-fold over the {n_pairs} training pairs (each pair held out once)"


def candidate_name(steps, lr):
    return "start untouched" if not steps else f"{steps} steps at lr {lr:g}"


def summarise(steps, lr, fold_scores):
    """One candidate's record: per-fold Dice and clDice (each fold's mean over
    its held-out pairs), their mean over folds and their range."""
    entry = {"name": candidate_name(steps, lr), "steps": steps, "lr": lr}
    for column, metric in ((0, "dice"), (1, "cldice")):
        values = [float(np.mean([pair[column] for pair in scores])) for scores in fold_scores]
        entry[metric] = [round(value, 4) for value in values]
        entry[f"{metric}_mean"] = round(float(np.mean(values)), 4)
        entry[f"{metric}_range"] = [round(min(values), 4), round(max(values), 4)]
    return entry


def choose(candidates, near_tie=NEAR_TIE):
    """`(chosen, reason, warning)`: the candidate of highest mean Dice, the
    fewest steps within `near_tie` of it (the start is 0 steps); `warning`
    (else None) when the folds' per-fold differences between the chosen and
    the candidate it was chosen against spread wider than their mean."""
    best = max(candidates, key=lambda entry: entry["dice_mean"])
    within = [entry for entry in candidates if entry["dice_mean"] >= best["dice_mean"] - near_tie]
    chosen = min(within, key=lambda entry: (entry["steps"], -entry["dice_mean"]))
    start = next(entry for entry in candidates if not entry["steps"])
    trained = [entry for entry in candidates if entry["steps"]]
    if chosen is start:
        against = max(trained, key=lambda entry: entry["dice_mean"])
        reason = (f"no budget beat the start by more than {near_tie:g} mean Dice (best: {against['name']}, "
                  f"{against['dice_mean']:.3f} against {start['dice_mean']:.3f}): the start is kept unchanged")
    else:
        against = start
        reason = (f"{chosen['name']}: mean Dice {chosen['dice_mean']:.3f} against {start['dice_mean']:.3f} "
                  f"untouched (clDice {chosen['cldice_mean']:.3f} against {start['cldice_mean']:.3f})"
                  + (f"; the fewest steps within {near_tie:g} of the best ({best['name']}, "
                     f"{best['dice_mean']:.3f})" if chosen is not best else ""))
    return chosen, reason, spread_warning(chosen, against)


def spread_warning(chosen, against):
    """A line when the per-fold Dice differences of `chosen` against
    `against` spread (max - min) wider than their mean's size; else None."""
    differences = np.subtract(chosen["dice"], against["dice"])
    spread, mean = float(differences.max() - differences.min()), float(differences.mean())
    if len(differences) < 2 or spread <= abs(mean):
        return None
    return (f"the folds disagree: Dice of {chosen['name']} minus {against['name']} per fold ranges "
            f"{differences.min():+.3f} to {differences.max():+.3f}, a spread of {spread:.3f}, larger than "
            f"the mean difference {mean:+.3f} chosen on; score the model on a frame you held out")


def settings_for(config, chosen):
    """`config` set to train the chosen budget (`steps` > 0) at its learning
    rate; 0 steps (the start kept) gives `epochs` 0."""
    steps = chosen["steps"]
    if not steps:
        return dataclasses.replace(config, epochs=0)
    steps_per_epoch = math.gcd(steps, config.steps_per_epoch)
    return dataclasses.replace(config, epochs=steps // steps_per_epoch, steps_per_epoch=steps_per_epoch,
                               lr=chosen["lr"])


# --- the run's settings, its record and its card ----------------------------------
def why_no_check(config, n_pairs, given, check, recorded_config):
    """Why the check does not run for this run (None: it runs)."""
    if not check:
        return "--no-check given"
    if set(few_label.OVERRIDES) & set(given):
        return "the budget was given"
    if recorded_config is not None:
        return "the run folder holds a run made without it"
    if few_label.start_kind(config.init) != "finetuned":
        return "it checks starts that already segment"
    if n_pairs > few_label.FEW_LABELS:
        return f"more than {few_label.FEW_LABELS} training pairs"
    if config.conventions is not None or config.frozen_encoder_epochs:
        return "it checks one-output runs without a frozen encoder phase"
    return None


# One pair leaves none to score, and one frame's fine-tune was measured to help or harm by source.
ONE_PAIR = ("1 training pair leaves none to score, so nothing can show that fine-tuning on it helps here, and "
            "measured it went both ways: from cmunet_small_general one XCAD frame lowered the other's Dice by 0.105 "
            "on average (both folds); one CIMAT pair moved a start without CIMAT by +0.003 on average but by "
            "-0.076 in one of 5 draws; one ARCADE pair lifted cmunet_small_xca by +0.016 on average (5 draws) "
            "but lowered it by 0.042 in one (docs/adaptation.md). The start is kept unchanged: label a second "
            "frame so the check can choose, or give --no-check to train the few-label rule's budget on this one")


def choose_settings(config, records, given=(), run_dir=None, check=True, budgets=None, log=print):
    """`(config, message, record)`: the settings a fine-tune of `records` runs with.

    The run folder's `adaptation.json`, when there is one, decides (the
    check is never redone). Otherwise the check runs when it is due
    (`why_no_check`) on the pairs that train (`split_records`), else the
    few-label rule applies. `record` is the new record to write (None when
    none is due); `message` says what was chosen and why.
    """
    recorded = read_record(run_dir) if run_dir is not None else None
    if recorded is not None:
        return (*from_record(config, recorded, given, run_dir), None)
    config_path = Path(run_dir) / "config.yaml" if run_dir is not None else None
    recorded_config = read_recipe(config_path) if config_path is not None and config_path.is_file() else None
    train_records = split_records(records, config.val_fraction, config.seed, config.limit)[0]
    ruled, message = few_label.apply_few_label_rule(config, len(train_records), given, recorded_config)
    why_not = why_no_check(config, len(train_records), given, check, recorded_config)
    if why_not is not None:  # the rule's message already names a budget the user gave
        told = config.init and not set(few_label.OVERRIDES) & set(given)
        return ruled, message + (f" (no adaptation check: {why_not})" if told else ""), None
    if len(train_records) < 2:
        chosen = {"steps": 0, "lr": ruled.lr}
        record = {"checked": False, "pairs": [record.name for record in train_records], "chosen": chosen,
                  "reason": ONE_PAIR, "warning": None}
        return settings_for(config, chosen), f"adaptation check: {ONE_PAIR}", record
    record = {"checked": True, **run_check(config, train_records, budgets, log)}
    return settings_for(config, record["chosen"]), check_message(record), record


def from_record(config, recorded, given, run_dir):
    """`(config, message)` of a rerun on a run folder the check (or its
    1-pair fallback) made: its choice again, or a larger `--epochs` of it."""
    user = [name for name in few_label.OVERRIDES if name in set(given)]
    flags = ", ".join("--" + name.replace("_", "-") for name in user)
    chosen = settings_for(config, recorded["chosen"])
    if not recorded["chosen"]["steps"]:
        if user:
            raise InvalidInputError(run_dir, f"keeps its start unchanged ({RECORD}: {recorded['reason']}); "
                                             f"{flags} cannot resume or extend it: give a new --out to fine-tune "
                                             "with your settings")
        return chosen, f"adaptation check kept from the run's record ({RECORD}): the start is kept unchanged"
    name = candidate_name(recorded["chosen"]["steps"], recorded["chosen"]["lr"])
    if user == ["epochs"]:
        return dataclasses.replace(chosen, epochs=config.epochs), (
            f"adaptation check kept from the run's record ({RECORD}: {name}); --epochs {config.epochs} "
            f"(recorded: {chosen.epochs})")
    if user:  # the run folder's record check refuses them if they differ
        return config, f"adaptation check not applied: {flags} given (the run's {RECORD} chose {name})"
    return chosen, f"adaptation check kept from the run's record ({RECORD}): {name}"


def check_message(record):
    """The check's estimate, choice and reason, as printed lines."""
    lines = [f"adaptation check ({record['method']}, {record['seconds']:.0f} s): mean [range] over folds"]
    for entry in record["candidates"]:
        lines.append(f"  {entry['name']:22s} Dice {entry['dice_mean']:.3f} [{entry['dice_range'][0]:.3f}, "
                     f"{entry['dice_range'][1]:.3f}]  clDice {entry['cldice_mean']:.3f} "
                     f"[{entry['cldice_range'][0]:.3f}, {entry['cldice_range'][1]:.3f}]")
    lines.append(f"chosen: {record['reason']} ({RECORD}; --no-check for the few-label rule, --epochs/--lr "
                 "to choose yourself)")
    if record["warning"]:
        lines.append(f"warning: {record['warning']}")
    return "\n".join(lines)


def read_record(run_dir):
    """The run folder's `adaptation.json` (a dict), or None."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(path, f"unreadable adaptation record: {error}") from error


def write_record(run_dir, record):
    """`adaptation.json` and the run's card (`README.md`) with its section."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RECORD, record)
    card = render_card(record, run_dir.name)
    atomic_write(run_dir / CARD, lambda path: Path(path).write_text(card))


def render_card(record, run_name):
    """The run's card (Markdown): its start, its pairs and the adaptation check."""
    lines = [f"# Fine-tuning run {run_name}", "",
             f"Start: `{record.get('start')}`; {len(record['pairs'])} training pairs "
             f"({', '.join(record['pairs'])}).", "", "## Adaptation check", ""]
    if not record["checked"]:
        return "\n".join(lines + [f"Not checked: {record['reason']}.", ""])
    lines += [f"Estimated by {record['method']}: Dice and clDice of each held-out angiogram, whole, at "
              f"threshold {record['threshold']:g} ({record['precision']}; {record['seconds']:.0f} s); "
              f"{record['note']}.", "",
              "| candidate | Dice per fold | Dice mean [range] | clDice mean [range] |", "|---|---|---|---|"]
    for entry in record["candidates"]:
        lines.append(f"| {entry['name']} | {', '.join(f'{value:.3f}' for value in entry['dice'])} | "
                     f"{entry['dice_mean']:.3f} [{entry['dice_range'][0]:.3f}, {entry['dice_range'][1]:.3f}] | "
                     f"{entry['cldice_mean']:.3f} [{entry['cldice_range'][0]:.3f}, {entry['cldice_range'][1]:.3f}] |")
    lines += ["", f"Chosen: {record['reason']}."]
    if record["warning"]:
        lines += ["", f"Warning: {record['warning']}."]
    return "\n".join(lines + [""])


def adapt(config, records, run_dir, given=(), check=True, budgets=None, note=print, **finetune_options):
    """Fine-tune `config.init` on `records` into `run_dir` with the settings
    `choose_settings` gives (the check's, the rule's or the user's), or keep
    the start unchanged when the check says no budget beats it.

    `note` receives the choice and the check's progress; `finetune_options`
    go to `finetune` (`log`, `verbose`, `skipped_inputs`...).

    Returns:
        the dict `finetune` (or `keep_start`) returns, with `message`.
    """
    config, message, record = choose_settings(config, records, given, run_dir, check, budgets, note)
    note(message)
    if record is not None:
        write_record(run_dir, {"start": config.init, **record})
    if config.epochs == 0:
        result = keep_start(config, records, run_dir, log=finetune_options.get("log", print),
                            skipped_inputs=finetune_options.get("skipped_inputs"))
    else:
        result = finetune(config, records, run_dir, **finetune_options)
    return {**result, "message": message}
