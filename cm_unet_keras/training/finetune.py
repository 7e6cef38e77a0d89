"""Supervised training and fine-tuning of the U-Net on labelled angiograms.

`finetune(config, records, run_dir)` carves a validation split from the
labelled records, trains on random native-resolution patches, scores every
epoch on the whole validation angiograms (hard Dice at full resolution, as
`cm-unet evaluate` does), keeps the best weights, checkpoints every epoch and
resumes where it stopped when called again with the same `run_dir`. The run
folder, its state, the epoch end and the optimizer are the training spine's
(`training/run.py`); this module adds what fine-tuning scores and keeps.

A run folder is the record of how its model was made: once an epoch is
finished, a rerun resumes only with the settings of its `config.yaml` and
the pairs of its `split.json`, and is refused otherwise
(`config.refuse_changed_settings`). Only `epochs` may change: the run is
extended (or ended) at the new count, its learning-rate schedule rebuilt
for it, and the change recorded in `state.json` (`epochs`,
`epochs_changed`); `config.yaml` and `split.json` keep what the run
started with and are never rewritten.

Run folder:
    model.keras           the kept epoch's U-Net (float32, no optimizer)
    best.weights.h5       the same weights, updated as training goes
    checkpoints/last.keras   last finished epoch, with optimizer (resume)
    state.json            finished epochs, target epochs and changes to it,
                          best score, history
    history.csv           one row per epoch (loss, val_dice, lr)
    curves.png            training curves
    split.json            names of training and validation pairs
    config.yaml           the configuration the run started with
    transfer_report.json  what `init` loaded (when given)
    logs/                 TensorBoard
    adaptation.json, README.md   the adaptation check's estimate and choice,
                          and the run's card (`training/adaptation_check.py`)
"""

import dataclasses
import json
import time
from pathlib import Path

import keras
import numpy as np

from cm_unet_keras.config import SELECT_RULES, refuse_changed_settings, settings_changed
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write, atomic_write_json, save_model_atomic
from cm_unet_keras.data.conventions import check_convention, check_conventions
from cm_unet_keras.data.pipeline import AugmentConfig, PatchSampler, load_labelled
from cm_unet_keras.evaluation.metrics import dice
from cm_unet_keras.models.full_image import predict_normalized
from cm_unet_keras.models.saving import float32_policy
from cm_unet_keras.models.unet import CMUNet, ENCODER_PREFIXES
from cm_unet_keras.training.losses import DiceBCELoss
from cm_unet_keras.training.run import TrainingRun, adamw, start_job
from cm_unet_keras.training.schedules import WarmupCosine
from cm_unet_keras.training.transfer import load_initial_weights

# Columns of history.csv: wall seconds of the epoch's steps and of its validation.
HISTORY_FIELDS = ["epoch", "loss", "val_dice", "lr", "train_seconds", "val_seconds"]
# curves.png: training loss and validation Dice against epochs.
CURVES = [
    ("loss", {"ylabel": "training loss (Dice + BCE)", "yscale": "log"}, {}),
    ("val_dice", {"ylabel": "validation Dice", "ylim": (0, 1)}, {"color": "tab:green"}),
]


def curves_for(config):
    """`CURVES`, the loss panel named after the loss `config` trains with."""
    if not config.cldice_weight:
        return CURVES
    label = f"training loss (Dice + BCE + {config.cldice_weight:g} x (1 - clDice))"
    return [("loss", dict(CURVES[0][1], ylabel=label), CURVES[0][2])] + CURVES[1:]


def split_records(records, val_fraction, seed, limit=None):
    """Pick `limit` labelled pairs, then carve a validation split from them, by `seed`.

    `limit` is the number of labelled pairs used in all: a run "with 10
    labels" sees 10 annotated angiograms, validation included.

    Returns:
        (train_records, val_records)
    """
    records = list(records)
    order = np.random.default_rng(seed).permutation(len(records))
    if limit is not None:
        if limit < 1 or limit > len(records):
            raise ValueError(f"--limit {limit}: only {len(records)} labelled pairs")
        order = order[:limit]
    n_val = 0
    if val_fraction > 0 and len(order) > 1:
        n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    val = [records[i] for i in sorted(order[:n_val])]
    train = [records[i] for i in order[n_val:]]
    return sorted(train, key=lambda r: r.name), val


def validation_dice(model, items, threshold=0.5):
    """Mean hard Dice over whole validation angiograms at native resolution
    (`evaluation.metrics.dice`, as `cm-unet evaluate` reports it); a model
    with one output per convention is scored on each pair's own convention."""
    scores = []
    for item in items:
        channel = 0 if model.conventions is None else model.conventions.index(item.convention)
        probability = predict_normalized(model, item.angiogram, fov=item.fov).numpy()
        scores.append(dice(probability[..., channel] >= threshold, item.vessel_mask[..., 0]))
    return float(np.mean(scores))


def make_schedule(config, total_steps):
    """Warm-up over `config.warmup_fraction` of `total_steps`, then cosine to 0."""
    return WarmupCosine(
        peak=config.lr,
        total_steps=total_steps,
        warmup_steps=round(config.warmup_fraction * total_steps),
        warmup_start_factor=0.01,
    )


def make_optimizer(config, total_steps, transferred_layers=()):
    """AdamW with warm-up + cosine; `transferred_layers` step at `config.pretrained_lr_factor` x lr."""
    return adamw(make_schedule(config, total_steps), config.weight_decay, slow_layers=transferred_layers,
                 slow_factor=config.pretrained_lr_factor)


def set_encoder_trainable(model, trainable):
    for layer in model.layers:
        if layer.name.startswith(ENCODER_PREFIXES):
            layer.trainable = trainable


def freeze_batchnorm_layers(model):
    """Every BatchNorm layer frozen: Keras runs a frozen BatchNorm in
    inference mode (the moving statistics normalise, and stay as loaded)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


class FinetuneRun(TrainingRun):
    """State of one fine-tuning run in `run_dir` (see the module docstring)."""

    def __init__(self, config, run_dir, log=print):
        super().__init__(config, run_dir, log)
        self.last_path = self.run_dir / "checkpoints" / "last.keras"
        self.val_items = []

    def new_state(self):
        return {"epochs_done": 0, "best_val_dice": -1.0, "best_epoch": None, "history": []}

    # --- resume -----------------------------------------------------------
    def load_state(self):
        state = self.read_state()
        if state is not None and self.last_path.is_file():
            self.state = state
            return True
        return False

    def open(self, split):
        """Resume (True) after checking the record, or start the record (False)."""
        if self.load_state():
            self.check_record(split)
            return True
        if self.chief:  # the run's record: written when it starts, never by a rerun
            self.write_record(**{"split.json": split})
        return False

    def check_record(self, split):
        """Refuse a rerun that would make another model than the folder
        records (settings of `config.yaml`, pairs of `split.json`); only
        `epochs` may change."""
        if (self.run_dir / "config.yaml").is_file():
            refuse_changed_settings(self.run_dir, settings_changed(self.config, self.saved_config(), ("epochs",)))
        split_path = self.run_dir / "split.json"
        if split_path.is_file():
            recorded = json.loads(split_path.read_text())
            changed = [
                (f"{part} pairs", _names_note(recorded.get(part, []), split[part]), "")
                for part in ("train", "val") if sorted(recorded.get(part, [])) != sorted(split[part])
            ]
            if changed:
                notes = "; ".join(f"{part}: {note}" for part, note, _ in changed)
                raise InvalidInputError(
                    self.run_dir,
                    f"holds a run made on other pairs than these ({notes}, against its split.json); "
                    "give the same dataset to resume it, or a new --out for a new run",
                )

    def record_epochs(self, log):
        """Make `config.epochs` the run's target, noting a change in the state.

        Returns:
            True when the target changed (the schedule must follow it).
        """
        target = self.state.get("epochs")
        if target is None:  # a fresh run, or one written before targets were recorded
            target = self.saved_config().get("epochs", self.config.epochs)
        changed = self.config.epochs > self.state["epochs_done"] and self.config.epochs != target
        if changed:
            self.state.setdefault("epochs_changed", []).append(
                {"after_epoch": self.state["epochs_done"], "from": target, "to": self.config.epochs}
            )
            log(f"epochs {target} -> {self.config.epochs} after epoch {self.state['epochs_done']} "
                "(recorded in state.json; the learning-rate schedule is rebuilt for it)")
            target = self.config.epochs
        elif self.config.epochs < target:
            log(f"{self.run_dir} already holds {self.state['epochs_done']} of its {target} epochs "
                f"(asked for {self.config.epochs}): nothing to train")
        self.state["epochs"] = target
        return changed

    def reconcile(self, log):
        """Align the state with the loaded checkpoint (see `end_epoch`)."""
        in_checkpoint = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) // self.config.steps_per_epoch
        if in_checkpoint < self.state["epochs_done"]:
            log(f"the run stopped while saving epoch {self.state['epochs_done']}: redoing it from epoch {in_checkpoint}")
            self.state["epochs_done"] = in_checkpoint
            self.state["history"] = self.state["history"][:in_checkpoint]

    # --- the model ------------------------------------------------------------
    def resume_model(self):
        """Load the last checkpoint; returns the layers `init` loaded (their learning rate)."""
        try:
            self.model = keras.models.load_model(self.last_path, safe_mode=True)
        except (ValueError, TypeError, KeyError) as error:
            raise InvalidInputError(
                self.last_path,
                f"cannot resume from this checkpoint ({error}); it was written by another "
                "version or configuration: use a new --out folder",
            ) from error
        self.reconcile(self.log)
        self.log(f"resuming after epoch {self.state['epochs_done']} from {self.last_path}")
        report_path = self.run_dir / "transfer_report.json"
        if report_path.is_file():  # a new phase's optimizer needs them
            return json.loads(report_path.read_text())["loaded"]
        return []

    def new_model(self, initial_weights=None):
        """A seeded U-Net, from `initial_weights` or `config.init`; returns the layers `init` loaded."""
        config = self.config
        self.model = CMUNet(base_filters=config.base_filters, depth=config.depth, conventions=config.conventions)
        if initial_weights is not None:
            self.model.set_weights(initial_weights)
        elif config.init:
            report = load_initial_weights(self.model, config.init)
            if self.chief:
                atomic_write_json(self.run_dir / "transfer_report.json", report)
            self.log(f"initialised {len(report['loaded'])} layers from {config.init}")
            return report["loaded"]
        return []

    def train(self, sampler, strategy, transferred, resumed, verbose):
        """Train the epochs not yet done: first with the encoder frozen
        (`frozen_encoder_epochs`), then all of it."""
        config = self.config
        total_steps = config.epochs * config.steps_per_epoch
        epochs_changed = self.record_epochs(self.log)
        phases = [(0, config.frozen_encoder_epochs, False), (config.frozen_encoder_epochs, config.epochs, True)]
        for phase_start, phase_end, encoder_trainable in phases:
            first_epoch = max(phase_start, self.state["epochs_done"])
            if first_epoch >= phase_end:
                continue
            with strategy.scope():
                if not resumed or first_epoch == phase_start:
                    set_encoder_trainable(self.model, encoder_trainable)
                    if config.freeze_batchnorm:
                        freeze_batchnorm_layers(self.model)
                    self.model.compile(
                        optimizer=make_optimizer(config, total_steps, transferred),
                        loss=DiceBCELoss(config.dice_weight, config.cldice_weight),
                        jit_compile=False,
                    )
                    # A new optimizer starts at step 0: move it to where the
                    # schedule is after the epochs already trained.
                    self.model.optimizer.iterations.assign(first_epoch * config.steps_per_epoch)
                elif epochs_changed:  # the checkpoint's optimizer decays over the old epochs
                    self.model.optimizer.learning_rate = make_schedule(config, total_steps)
                resumed = False
            dataset = sampler.dataset(
                config.batch_size * strategy.num_replicas_in_sync,
                start_sample=first_epoch * config.steps_per_epoch * config.batch_size,
            )
            self.fit(dataset, first_epoch, phase_end, config.steps_per_epoch, verbose)

    # --- epoch end ----------------------------------------------------------
    def end_epoch(self, epoch, logs, seconds):
        config = self.config
        trained = time.perf_counter()
        val_dice = validation_dice(self.model, self.val_items, config.threshold) if self.val_items else float("nan")
        learning_rate = float(self.model.optimizer.learning_rate)
        row = {"epoch": epoch + 1, "loss": float(logs.get("loss", float("nan"))), "val_dice": val_dice, "lr": learning_rate,
               "train_seconds": round(seconds, 2),
               "val_seconds": round(time.perf_counter() - trained, 2)}
        if self.val_items:  # a run that holds nothing out has no validation metric to log
            logs["val_dice"] = val_dice
        self.check_finite(row["loss"], epoch, f"the last good checkpoint {self.last_path} and best weights are kept")
        keep_last = config.select == "last" or not self.val_items
        improved = keep_last or val_dice > self.state["best_val_dice"]
        if improved:
            self.state["best_val_dice"] = val_dice if self.val_items else -1.0
            self.state["best_epoch"] = epoch + 1
        self.state["epochs_done"] = epoch + 1
        self.state["history"].append(row)
        if self.chief:
            if improved:
                atomic_write(self.run_dir / "best.weights.h5", self.save_best_weights)
            # State first, then the checkpoint: a kill between the two leaves a
            # checkpoint one epoch behind the state, which `reconcile` detects
            # (from the optimizer's step count) and redoes; the other order
            # would silently train that epoch twice.
            self.save_state()
            save_model_atomic(self.model, self.last_path)
            self.write_history(HISTORY_FIELDS)
        self.log(
            f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}"
            + (f"  val_dice {val_dice:.4f}" if self.val_items else "")
            + ("  (best)" if improved and not keep_last else "")
        )

    def save_best_weights(self, path):
        # The model's weights only: a compiled model's save_weights would
        # also store the optimizer (3x the size).
        keras.saving.save_weights(self.model, path, objects_to_skip=[self.model.optimizer])


def partial_image_weights(n_complete, n_partial, share=None):
    """Per-item drawing weights: complete pairs first, then partial ones; with
    `share`, partial pairs get that share of the patches, else every pair
    is equally likely."""
    if share is None or n_complete == 0 or n_partial == 0:
        return None
    if not 0.0 < share < 1.0:
        raise ValueError(f"partial_share must be in (0, 1), got {share}")
    return [(1.0 - share) / n_complete] * n_complete + [share / n_partial] * n_partial


def finetune(config, records, run_dir, val_records=None, log=print, verbose="auto", initial_weights=None,
             partial_records=None, skipped_inputs=None):
    """Train a U-Net on labelled angiograms; resume if `run_dir` holds a run.

    Args:
        config: a `FinetuneConfig`.
        records: labelled `AngiogramRecord`s (training, and validation unless
            `val_records` is given).
        run_dir: output folder.
        val_records: an explicit validation split (then `records` are all
            used for training, after `config.limit`).
        log: a print-like function for progress lines.
        verbose: Keras progress bar setting.
        initial_weights: weights to start from, as `CMUNet.get_weights()` of a
            U-Net of the config's shape, instead of `config.init` or the
            seeded random initialisation (a hyperparameter search starts every
            fold of every trial from the same weights). Ignored on resume.
        partial_records: more training pairs whose masks label only some
            vessels (e.g. ARCADE's main segments); their loss weights follow
            `config.partial_background_weight` and
            `config.partial_ignore_vessel_like`, their share of the patches
            `config.partial_share`. Never used for validation.
            A record's `convention` (else `config.convention`) is what its
            mask calls vessel (`records_with_conventions`).
        skipped_inputs: the input files left out as unreadable
            (`[{"path", "problem"}]`, `--skip-invalid`), written to the run
            folder as `skipped_inputs.json`; None writes nothing.

    Returns:
        dict with `best_val_dice`, `best_epoch`, `epochs_done`, `seconds`,
        `model_path`, `n_train`, `n_val`, and `model`: the trained Keras
        model as it is after the last epoch (the best epoch is in
        `model_path`).

    Raises:
        InvalidInputError: `run_dir` holds a run made with other settings
            (any field but `epochs`) or other pairs; the message names them.
    """
    started = time.perf_counter()
    run = _new_run(config, run_dir, log, skipped_inputs)
    policy, strategy = start_job(config.precision, config.seed, config.deterministic)

    if val_records is None:
        train_records, val_records = split_records(records, config.val_fraction, config.seed, config.limit)
    else:
        train_records = split_records(records, 0.0, config.seed, config.limit)[0]
    train_records, val_records, partial_records = records_with_conventions(
        config, train_records, val_records, partial_records)
    for name in outputs_without_own_pairs(config, train_records + (partial_records or [])):
        log(f"warning: no training pair follows the '{name}' convention, so its output learns only what the other "
            "masks imply; where each convention comes from one source it learns the source instead "
            "(docs/usage.md#mask-conventions)")
    split = {"seed": config.seed, "train": [r.name for r in train_records], "val": [r.name for r in val_records]}
    if partial_records:
        split["partial"] = [str(r.image_path) for r in partial_records]
    resumed = run.open(split)
    log(f"{len(train_records)} training and {len(val_records)} validation angiograms"
        + (f" (+ {len(partial_records)} partially labelled)" if partial_records else "") + f"; precision {policy}")
    sampler = patch_sampler(config, train_records, partial_records)
    run.val_items = load_labelled(val_records, clahe=config.clahe)

    with strategy.scope():
        transferred = run.resume_model() if resumed else run.new_model(initial_weights)
    run.train(sampler, strategy, transferred, resumed, verbose)

    model_path = run.run_dir / "model.keras"
    if run.chief:
        export_best(config, run.run_dir, model_path)
        run.write_curves(curves_for(config))
    return {
        "best_val_dice": run.state["best_val_dice"],
        "best_epoch": run.state["best_epoch"],
        "epochs_done": run.state["epochs_done"],
        "seconds": time.perf_counter() - started,
        "model_path": str(model_path),
        "n_train": len(train_records),
        "n_val": len(val_records),
        "model": run.model,
    }


def keep_start(config, records, run_dir, log=print, skipped_inputs=None):
    """Write a run folder whose model is the start (`config.init`) unchanged.

    What the adaptation check (`training/adaptation_check.py`) writes when no
    budget it tried beat the start: `model.keras` (the start, loaded as
    `finetune` loads it, as a float32 U-Net), `config.yaml`, `split.json` and
    `transfer_report.json`, so that `predict`, `evaluate` and `export` read it
    as any run folder; no step trains. A rerun checks the record as
    `finetune` does. `skipped_inputs` as in `finetune`.

    Returns:
        the dict `finetune` returns, with `epochs_done` 0 and `best_epoch` None.
    """
    started = time.perf_counter()
    run = _new_run(config, run_dir, log, skipped_inputs)
    train_records, val_records = split_records(records, config.val_fraction, config.seed, config.limit)
    split = {"seed": config.seed, "train": [r.name for r in train_records], "val": [r.name for r in val_records]}
    if (run.run_dir / "config.yaml").is_file():
        run.check_record(split)
    elif run.chief:
        run.write_record(**{"split.json": split})
    model_path = run.run_dir / "model.keras"
    with float32_policy():
        run.new_model()
        if run.chief:
            save_model_atomic(run.model, model_path)
    log(f"kept the start {config.init} unchanged: no step trained")
    return {"best_val_dice": -1.0, "best_epoch": None, "epochs_done": 0, "seconds": time.perf_counter() - started,
            "model_path": str(model_path), "n_train": len(train_records), "n_val": len(val_records),
            "model": run.model}


def _new_run(config, run_dir, log, skipped_inputs):
    """A checked `config`'s `FinetuneRun` in `run_dir` (made), with the skipped inputs written."""
    check_config(config)
    run = FinetuneRun(config, run_dir, log)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if skipped_inputs is not None and run.chief:
        atomic_write_json(run.run_dir / "skipped_inputs.json", skipped_inputs)
    return run


def check_config(config):
    """Refuse settings `finetune` cannot run (patch size, selection rule, loss weight)."""
    if config.patch_size % 2**config.depth:
        raise ValueError(f"patch_size {config.patch_size} must be a multiple of 2**depth = {2**config.depth}")
    if config.select not in SELECT_RULES:
        raise ValueError(f"select {config.select!r}: choose one of {SELECT_RULES}")
    if not config.cldice_weight >= 0.0:
        raise ValueError(f"cldice_weight {config.cldice_weight} must be >= 0")
    if config.conventions is not None:
        check_conventions(config.conventions)
    if config.convention is not None:
        check_convention(config.convention)


def records_with_conventions(config, train_records, val_records, partial_records):
    """The records, each with its mask convention (`config.convention` for
    those that state none).

    With `config.conventions` the U-Net has one output per convention and
    every training pair supervises each output as far as its mask implies
    (`data.pipeline.implied_targets`); a validation pair is scored on its
    own convention's output, so that convention must be one of them.
    """
    def stated(records):
        return [record if record.convention or config.convention is None
                else dataclasses.replace(record, convention=config.convention) for record in records or []]

    val_records = stated(val_records)
    for record in val_records if config.conventions is not None else []:
        if record.convention is None:
            raise ValueError(f"validation pair {record.name} has no mask convention: give --convention "
                             f"({', '.join(config.conventions)})")
        check_convention(record.convention, config.conventions, what="the model's outputs (--conventions)")
    return stated(train_records), val_records, stated(partial_records) or None


def outputs_without_own_pairs(config, records):
    """The conventions of `config.conventions` that no record follows."""
    own = {record.convention for record in records}
    return [name for name in config.conventions or () if name not in own]


def patch_sampler(config, train_records, partial_records=None):
    """The stream of training patches: the training pairs decoded once, and
    the partially labelled ones with their loss weights and share."""
    train_items = load_labelled(train_records, clahe=config.clahe)
    image_weights = None
    if partial_records:
        partial = {"background_weight": config.partial_background_weight,
                   "ignore_vessel_like": config.partial_ignore_vessel_like}
        partial_items = load_labelled(partial_records, clahe=config.clahe, partial=partial)
        image_weights = partial_image_weights(len(train_items), len(partial_items), config.partial_share)
        train_items = train_items + partial_items
    return item_sampler(config, train_items, image_weights)


def item_sampler(config, items, image_weights=None):
    """The stream of training patches of decoded `items` (`LabelledAngiogram`s)
    under `config`'s patch size, seed, foreground share and augmentation."""
    augment = None
    if config.augment_strength >= 0:
        augment = AugmentConfig(strength=config.augment_strength, scale=tuple(config.augment_scale),
                                border_probability=config.augment_borders)
    return PatchSampler(items, config.patch_size, config.seed, config.foreground_fraction, augment,
                        image_weights, config.conventions)


def _names_note(recorded, given):
    added, removed = sorted(set(given) - set(recorded)), sorted(set(recorded) - set(given))
    return ", ".join(
        f"{len(names)} {verb} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for verb, names in (("added", added), ("missing", removed)) if names
    ) or "same names, other order"


def export_best(config, run_dir, model_path):
    """Write the best weights as a clean float32 `.keras` U-Net."""
    with float32_policy():
        model = CMUNet(base_filters=config.base_filters, depth=config.depth, conventions=config.conventions)
        model.load_weights(Path(run_dir) / "best.weights.h5")
        save_model_atomic(model, model_path)
