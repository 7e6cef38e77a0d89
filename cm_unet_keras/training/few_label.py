"""The few-label default: how long, and how fast, to fine-tune each kind of start.

A lab adapting a start to its own scanner has a handful of masks. The best
budget depends on the start: a random start needs its 2,000 steps, a
pretrained one peaks early and then over-fits the few pairs, and a start
that already segments vessels needs only a short nudge. `cm-unet finetune`
applies the rule when `--epochs`, `--steps-per-epoch` and `--lr` are not
given (on the command line or in a recipe) and the adaptation check
(`training/adaptation_check.py`: a start that segments, 2-10 pairs) does
not choose instead, and prints what it chose; a
larger `--epochs` on a run folder made under the rule extends that run at
the rule's learning rate.

| start (`--init`) | labelled pairs | budget | learning rate |
|---|---|---|---|
| none (random initialisation) | any | 2,000 steps (the default) | 2e-3 (the default) |
| pretrained only (a pretraining run, `cmunet_small_pretrained`) | <= 3 | 500 steps | 2e-3 |
| pretrained only | 4-10 | 2,000 steps (the default) | 2e-3 |
| a segmenting model (`cmunet_small_general`, a fine-tuned run) | 1-2 | 100 steps | 5e-4 |
| a segmenting model | 3-10 | 200 steps | 2e-3 |
| any start | > 10 | 2,000 steps (the default) | 2e-3 (the default) |

"Labelled pairs" are the pairs that train: `--limit` of them less the
validation share, counted by the split the run makes (`split_records`).
The budgets were chosen on selection pairs (CIMAT training pairs not drawn
for the run), never on the scored ones; the screen and its numbers are in
`docs/adaptation.md` ("The few-label default"), produced by
`benchmarks/adaptation.py --stage screen` (the "Screen" table of
`benchmarks/adaptation/results.md` in the source tree).
"""

import dataclasses

FEW_LABELS = 10
"""At most this many labelled pairs is a "handful": the rule applies."""

PRETRAINED_STEPS, PRETRAINED_LR = 500, 2e-3
# Beyond this many pairs a pretrained-only start keeps the 2,000-step default.
PRETRAINED_MAX_PAIRS = 3
FINETUNED_STEPS, FINETUNED_LR = 200, 2e-3
# One or two pairs: a segmenting start is nudged more gently.
VERY_FEW_LABELS = 2
VERY_FEW_STEPS, VERY_FEW_LR = 100, 5e-4
# Where the message sends a user to read how the rule was chosen: the
# documentation page, not a benchmark's results file.
RULE_SOURCE = "docs/adaptation.md"
# The settings a user gives to opt out of the rule.
OVERRIDES = ("epochs", "steps_per_epoch", "lr")


def start_kind(init):
    """"scratch", "pretrained" (encoder and decoder pretrained, head never
    trained) or "finetuned" (a model that segments) for an `--init` value."""
    from cm_unet_keras.models.loading import pretrained_weights_path
    from cm_unet_keras.models.presets import is_pretrained_preset, resolve_model_path

    if not init:
        return "scratch"
    if pretrained_weights_path(init) is not None or str(resolve_model_path(init)).endswith(".weights.h5"):
        return "pretrained"
    return "pretrained" if is_pretrained_preset(init) else "finetuned"


def few_label_settings(kind, n_pairs):
    """(steps, lr, why) of the rule for a start of `kind` fine-tuned on
    `n_pairs` labelled pairs; steps None keeps the configuration's own."""
    if kind == "scratch":
        return None, None, f"{n_pairs} labelled pairs from a random start"
    most = PRETRAINED_MAX_PAIRS if kind == "pretrained" else FEW_LABELS
    if n_pairs > most:
        return None, None, f"{n_pairs} labelled pairs (more than {most} for this start)"
    if kind == "pretrained":
        return PRETRAINED_STEPS, PRETRAINED_LR, f"{n_pairs} labelled pairs from a pretrained-only start"
    steps, lr = (VERY_FEW_STEPS, VERY_FEW_LR) if n_pairs <= VERY_FEW_LABELS else (FINETUNED_STEPS, FINETUNED_LR)
    return steps, lr, f"{n_pairs} labelled pairs from a start that already segments"


def apply_few_label_rule(config, n_pairs, given=(), recorded=None):
    """`(config, message)`: `config` with the rule's budget and learning rate.

    Args:
        config: the `FinetuneConfig` of the run.
        n_pairs: the labelled pairs that train (`training_pair_count`).
        given: the fields the user set; any of `OVERRIDES` among them keeps
            the configuration's own budget and learning rate.
        recorded: the `config.yaml` (a dict) of the run folder being rerun,
            if any. When it records a run made under the rule and only
            `epochs` is given, the rule's learning rate and epoch length are
            kept and `config.epochs` extends the run.

    The message says what was chosen and why.
    """
    steps, lr, why = few_label_settings(start_kind(config.init), n_pairs)
    user = [name for name in OVERRIDES if name in set(given)]
    ruled = None if steps is None else dataclasses.replace(
        config, epochs=max(1, round(steps / config.steps_per_epoch)), lr=lr)
    if ruled is not None and user == ["epochs"] and _made_under(recorded, ruled):
        return dataclasses.replace(ruled, epochs=config.epochs), (
            f"few-label rule kept from the run's record: {why}: lr {lr:g}, {ruled.steps_per_epoch} steps "
            f"an epoch; --epochs {config.epochs} (recorded: {ruled.epochs})")
    if user:
        return config, f"few-label rule not applied: {', '.join('--' + n.replace('_', '-') for n in user)} given"
    if ruled is None:
        total = config.epochs * config.steps_per_epoch
        return config, f"few-label rule: {why}: {total} steps at lr {config.lr:g} (the configuration's)"
    return ruled, (f"few-label rule: {why}: {ruled.epochs * ruled.steps_per_epoch} steps at lr {lr:g} "
                   f"({RULE_SOURCE}; --epochs/--lr override)")


def _made_under(recorded, ruled):
    """Whether a run folder's recorded settings are those the rule chose."""
    return bool(recorded) and all(recorded.get(name) == getattr(ruled, name) for name in OVERRIDES)


def training_pair_count(config, records):
    """How many of the labelled `records` train: those `split_records` keeps
    for training under `config.limit`, `config.val_fraction` and `config.seed`,
    the split `finetune` makes."""
    from cm_unet_keras.training.finetune import split_records

    return len(split_records(records, config.val_fraction, config.seed, config.limit)[0])
