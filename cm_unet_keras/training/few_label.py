"""The few-label default: how long, and how fast, to fine-tune each kind of start.

A lab adapting a start to its own scanner has a handful of masks. The best
budget depends on the start: a random start needs its 2,000 steps, a
pretrained one peaks early and then over-fits the few pairs, and a start
that already segments vessels needs only a short nudge. The rule below was
chosen on selection pairs (training pairs not drawn for the run), never on
the scored ones, by `benchmarks/adaptation.py --stage screen`
(`benchmarks/adaptation/screen.md`); `cm-unet finetune` applies it when
`--epochs` and `--lr` are not given (on the command line or in a recipe)
and prints what it chose.

| start (`--init`) | labelled pairs | budget | learning rate |
|---|---|---|---|
| none (random initialisation) | any | 2,000 steps (the default) | 2e-3 (the default) |
| pretrained only (a pretraining run, `cmunet_small_pretrained`) | <= 10 | 500 steps | 2e-3 |
| a segmenting model (`cmunet_small_general`, a fine-tuned run) | <= 10 | FINETUNED_STEPS steps | FINETUNED_LR |
| any start | > 10 | 2,000 steps (the default) | 2e-3 (the default) |
"""

import dataclasses

FEW_LABELS = 10
"""At most this many labelled pairs is a "handful": the rule applies."""

PRETRAINED_STEPS, PRETRAINED_LR = 500, 2e-3
FINETUNED_STEPS, FINETUNED_LR = 500, 2e-3
RULE_SOURCE = "benchmarks/adaptation/screen.md"


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
    if kind == "scratch" or n_pairs > FEW_LABELS:
        return None, None, (f"{n_pairs} labelled pairs from a random start" if kind == "scratch"
                            else f"{n_pairs} labelled pairs (more than {FEW_LABELS})")
    steps, lr = (PRETRAINED_STEPS, PRETRAINED_LR) if kind == "pretrained" else (FINETUNED_STEPS, FINETUNED_LR)
    start = "a pretrained-only start" if kind == "pretrained" else "a start that already segments"
    return steps, lr, f"{n_pairs} labelled pairs from {start}"


def apply_few_label_rule(config, n_pairs, given=()):
    """`(config, message)`: `config` with the rule's budget and learning rate
    unless `given` names `epochs`, `steps_per_epoch` or `lr` (set by the user,
    who then keeps them). The message says what was chosen and why."""
    kind = start_kind(config.init)
    steps, lr, why = few_label_settings(kind, n_pairs)
    user = sorted({"epochs", "steps_per_epoch", "lr"} & set(given))
    if user:
        return config, f"few-label rule not applied: {', '.join('--' + n.replace('_', '-') for n in user)} given"
    if steps is None:
        total = config.epochs * config.steps_per_epoch
        return config, f"few-label rule: {why}: {total} steps at lr {config.lr:g} (the configuration's)"
    epochs = max(1, round(steps / config.steps_per_epoch))
    chosen = dataclasses.replace(config, epochs=epochs, lr=lr)
    return chosen, (f"few-label rule: {why}: {epochs * config.steps_per_epoch} steps at lr {lr:g} "
                    f"({RULE_SOURCE}; --epochs/--lr override)")


def training_pair_count(config, n_records):
    """How many of `n_records` labelled pairs train: `config.limit` of them,
    less the share `config.val_fraction` sets aside."""
    count = min(config.limit or n_records, n_records)
    return count - int(round(count * config.val_fraction))
