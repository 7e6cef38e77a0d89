"""Contrastive masked pretraining (CM-UNet) on unlabeled angiograms.

`pretrain(config, records, run_dir)` decodes the angiograms once (cached in
the run folder), trains a `ContrastiveMaskedPretrainer`, checkpoints every
epoch and, called again with the same `run_dir`, resumes after the last
finished epoch (asking for more epochs extends the run; the learning-rate
schedule is rebuilt from the new epoch count). A rerun may change only the
run's length (`epochs`, `minutes`, with them `warmup_epochs`), `grid_every`
and `skip_invalid`; other settings are refused, naming them, since the run
folder records how its weights were made: `config.yaml` keeps the settings
the run started with, and a new length is noted in `state.json`. The run
folder, its state, the epoch end and the optimizer are the training spine's
(`training/run.py`).

Run folder:
    pretrained.weights.h5  the pretrainer's weights (U-Net encoder + decoder,
                           reconstruction head, projector, predictor, EMA
                           target), updated every epoch; `cm-unet finetune
                           --init RUN_DIR` loads encoder and decoder from it
    pretrainer.json        the pretrainer's architecture (to rebuild it)
    checkpoints/epoch_NNNN/  weights + optimizer state of the last epoch (resume)
    state.json             finished epochs, checkpoint, history
    history.csv            one row per epoch: losses, accuracy, lr, timing
    curves.png             reconstruction and contrastive loss per epoch
    grids/epoch_NNNN.png   original / masked / reconstructed views
    config.yaml            the configuration the run started with
    images.json            the angiograms it draws from (count, paths)
    cache/                 decoded angiograms (delete to re-decode)
    logs/                  TensorBoard

Optimisation follows the paper's code: AdamW, lr = 1.5e-4 x global batch /
256, betas (0.9, 0.95), weight decay 0.05 except on biases and BatchNorm
parameters, linear warm-up from 1e-4 x lr, then cosine to 0. Deviations:

- The learning rate is scaled by the global batch actually used; the
  original hard-coded 16 GPUs into the scaling while running on one (16x
  the intended rate). `lr` sets the peak directly when a short CPU run needs
  a larger one.
- `batch_size` is the global batch, split over replicas; the same global
  batch gives the same losses on 1 or N devices.
- The model width defaults to 16 (the paper: 64), like `FinetuneConfig`,
  so that a default pretraining transfers into a default fine-tuning.
"""

import dataclasses
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cm_unet_keras.config import refuse_changed_settings, settings_changed
from cm_unet_keras.core.files import atomic_write, atomic_write_json, publish_folder
from cm_unet_keras.data.masking import expand_patch_mask, patchify, unpatchify
from cm_unet_keras.data.views import TwoViewSampler, load_unlabeled, unlabeled_summary
from cm_unet_keras.models.pretrainer import PRETRAINED_WEIGHTS, PRETRAINER_CONFIG, ContrastiveMaskedPretrainer
from cm_unet_keras.training.run import TrainingRun, adamw, start_job, write_curves
from cm_unet_keras.training.schedules import WarmupCosine

CHECKPOINT_WEIGHTS = "checkpoint.weights.h5"

# curves.png: reconstruction and contrastive loss against epochs.
CURVES = [
    ("reconstruction_loss", {"ylabel": "reconstruction loss (masked patches)"}, {"marker": "."}),
    ("contrastive_loss", {"ylabel": "contrastive loss (InfoNCE x 2 tau)"}, {"marker": ".", "color": "tab:orange"}),
]

# The only fields a resumed run may change: its length (an extension, which
# may also change the warm-up) and what it logs or skips; any other would
# make another model than config.yaml records.
_MAY_DIFFER_ON_RESUME = ("epochs", "minutes", "grid_every", "skip_invalid")


# Share of a --minutes budget kept for epoch ends (checkpoints, grids, logs).
BUDGET_OVERHEAD = 0.05


def fit_to_budget(config, steps_per_epoch, step_seconds, spent_seconds=0.0, epochs_done=0, epoch_end_seconds=0.0):
    """`config` with `epochs` and `warmup_epochs` sized to `config.minutes`.

    Args:
        config: a `PretrainConfig` with `minutes` set; its `epochs` and
            `warmup_epochs` give the warm-up's share of the run.
        steps_per_epoch: steps in one epoch.
        step_seconds: measured seconds per training step.
        spent_seconds: budget already used (measuring the step, or the
            epochs already done).
        epochs_done: epochs already done; the remaining time adds to them.
        epoch_end_seconds: measured seconds of one epoch's end (checkpoint,
            weights, curves): with short epochs it outweighs the steps.

    Returns:
        A new `PretrainConfig` (at least one epoch, at least one warm-up
        epoch when the recipe has one).
    """
    seconds = max(config.minutes * 60.0 - spent_seconds, 0.0) * (1.0 - BUDGET_OVERHEAD)
    epochs = max(1, epochs_done + int(seconds / (step_seconds * steps_per_epoch + epoch_end_seconds)))
    share = min(config.warmup_epochs, config.epochs) / config.epochs
    warmup = min(epochs, max(1 if share > 0 else 0, int(round(share * epochs))))
    return dataclasses.replace(config, epochs=epochs, warmup_epochs=warmup)


def measure_costs(config, dataset, strategy, steps=5, warm_steps=2):
    """What one run of `config` costs, measured on a throwaway pretrainer
    (same model, batch, precision and strategy).

    Returns:
        (seconds per training step, seconds of the first `warm_steps` (they
        hold the graph tracing, which the real run pays again), seconds of
        one epoch's end: the checkpoint, the weights and the curves every
        epoch writes).
    """
    with strategy.scope():
        probe = ContrastiveMaskedPretrainer(**config.pretrainer_kwargs())
        probe.compile(optimizer=make_optimizer(config, 1000, 10), jit_compile=False)
    ends = []
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    started = time.perf_counter()
    probe.fit(dataset, epochs=1, steps_per_epoch=warm_steps + steps, callbacks=[clock], verbose=0, shuffle=False)
    step_seconds, tracing = (ends[-1] - ends[warm_steps - 1]) / steps, ends[warm_steps - 1] - started
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        save_checkpoint(probe, Path(folder) / "checkpoint")
        save_pretrained_weights(probe, Path(folder) / PRETRAINED_WEIGHTS)
        write_curves([{"epoch": 1, **{column: 0.0 for column, _, _ in CURVES}}], Path(folder) / "curves.png", CURVES)
        epoch_end = time.perf_counter() - started
    return step_seconds, tracing, epoch_end


POOL_RECORD = "images.json"


def pool_record(config, records):
    """What the run pretrains on, for `images.json`: every angiogram file
    (and frame) it draws from, so a model built on the run can show that its
    pool held no test split."""
    chosen = select_records(records, config.max_images, config.seed)
    return {"count": len(chosen),
            "images": [r.image_path if r.frame is None else f"{r.image_path}#frame={r.frame}" for r in chosen]}


def select_records(records, max_images, seed):
    """All records, or `max_images` of them drawn by `seed` (kept in order)."""
    records = list(records)
    if max_images is None or max_images >= len(records):
        return records
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    chosen = np.random.default_rng(seed).choice(len(records), size=max_images, replace=False)
    return [records[i] for i in sorted(chosen)]


def make_optimizer(config, total_steps, warmup_steps):
    """AdamW (the paper's betas and decay) with linear warm-up, then cosine to 0."""
    schedule = WarmupCosine(
        peak=config.peak_lr(),
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        warmup_start_factor=config.warmup_start_factor,
    )
    return adamw(schedule, config.weight_decay, beta_1=config.beta_1, beta_2=config.beta_2)


# --- checkpoints --------------------------------------------------------------
def save_checkpoint(pretrainer, folder):
    """Weights and optimizer state into `folder`, written whole or not at all.

    `save_weights` of a compiled model holds the optimizer's variables too.
    """
    publish_folder(folder, lambda staging: pretrainer.save_weights(staging / CHECKPOINT_WEIGHTS), overwrite=True,
                   clear_stale=True)


def load_checkpoint(pretrainer, folder):
    """Restore weights and optimizer state saved by `save_checkpoint`."""
    # The optimizer's variables exist only once it is built: build it on
    # the online variables (what `train_step` updates) so they load too.
    pretrainer.optimizer.build(pretrainer.online_variables)
    pretrainer.load_weights(Path(folder) / CHECKPOINT_WEIGHTS)


def save_pretrained_weights(pretrainer, path):
    """The pretrainer's weights without the optimizer state (a third of the size)."""

    optimizer = getattr(pretrainer, "optimizer", None)

    def write(tmp):
        if optimizer is None:
            pretrainer.save_weights(tmp)
            return
        try:
            keras.saving.save_weights(pretrainer, tmp, objects_to_skip=[optimizer])
        except TypeError:  # Keras versions without objects_to_skip
            pretrainer.save_weights(tmp)

    atomic_write(path, write)


# --- the run ------------------------------------------------------------------
class PretrainRun(TrainingRun):
    """State of one pretraining run in `run_dir` (see the module docstring)."""

    def __init__(self, config, run_dir, log=print):
        super().__init__(config, run_dir, log)
        self.steps_per_epoch = None
        self.epochs_run = 0

    def new_state(self):
        return {"epochs_done": 0, "checkpoint": None, "history": []}

    def load_state(self):
        """Read `state.json`; True when there is a checkpoint to resume from."""
        state = self.read_state()
        if state is None or not state.get("checkpoint") or not (self.run_dir / state["checkpoint"]).is_dir():
            return False
        self.state = state
        return True

    def check_resumable(self):
        """Refuse settings that would make another model than config.yaml records;
        note a new length (epochs or minutes, with the warm-up) in the state,
        which is written with the next epoch."""
        previous = self.saved_config()
        config = self.config
        # The length the run has now: config.yaml's, or its last extension's.
        now = {key: previous.get(key) for key in ("epochs", "minutes", "warmup_epochs")}
        now.update((self.state.get("length_changed") or [{}])[-1])
        length = {"minutes": config.minutes} if config.minutes is not None else {"epochs": config.epochs}
        extending = any(now.get(key) != value for key, value in length.items())
        changed = settings_changed(config, previous, _MAY_DIFFER_ON_RESUME + ("warmup_epochs",))
        if not extending and config.minutes is None and config.warmup_epochs != now["warmup_epochs"]:
            changed.append(("warmup_epochs", now["warmup_epochs"], config.warmup_epochs))
        refuse_changed_settings(self.run_dir, changed)
        if extending:
            if config.minutes is None:
                length["warmup_epochs"] = config.warmup_epochs
            self.state.setdefault("length_changed", []).append({"after_epoch": self.state["epochs_done"], **length})

    def end_epoch(self, epoch, logs, seconds):
        row = {
            "epoch": epoch + 1,
            "loss": float(logs.get("loss", float("nan"))),
            "reconstruction_loss": float(logs.get("reconstruction_loss", float("nan"))),
            "contrastive_loss": float(logs.get("contrastive_loss", float("nan"))),
            "contrastive_accuracy": float(logs.get("contrastive_accuracy", float("nan"))),
            "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "seconds": seconds,
            "step_seconds": seconds / self.steps_per_epoch,
            "images_per_second": self.steps_per_epoch * self.config.batch_size / seconds,
        }
        self.check_finite(row["loss"], epoch, f"the checkpoint of epoch {self.state['epochs_done']} is kept")
        checkpoint = f"checkpoints/epoch_{epoch + 1:04d}"
        started = time.perf_counter()
        self.state["history"].append(row)
        if self.chief:
            save_checkpoint(self.model, self.run_dir / checkpoint)
            save_pretrained_weights(self.model, self.run_dir / PRETRAINED_WEIGHTS)
            self.write_curves(CURVES)
        # What the epoch's end costs (a --minutes budget counts it).
        row["end_seconds"] = time.perf_counter() - started
        self.state["epochs_done"] = epoch + 1
        self.state["checkpoint"] = checkpoint
        self.epochs_run += 1
        if self.chief:
            self.write_history()
            # The state names the new checkpoint only once it is whole.
            self.save_state()
            for old in (self.run_dir / "checkpoints").glob("epoch_*"):
                if old.name != Path(checkpoint).name:
                    shutil.rmtree(old, ignore_errors=True)
        self.log(
            f"epoch {epoch + 1}/{self.config.epochs}: loss {row['loss']:.4f}  "
            f"reconstruction {row['reconstruction_loss']:.4f}  contrastive {row['contrastive_loss']:.4f}  "
            f"accuracy {row['contrastive_accuracy']:.3f}  {row['step_seconds']:.2f} s/step  "
            f"{row['images_per_second']:.1f} images/s"
        )


class ReconstructionGrid(keras.callbacks.Callback):
    """Saves original / masked / reconstructed views every few epochs.

    Args:
        batch: a fixed dict batch of views (`online`, `sample_index`).
        folder: where `epoch_NNNN.png` files go.
        every: epochs between grids (the last epoch always gets one).
        last_epoch: the run's final epoch (1-based).
    """

    def __init__(self, batch, folder, every, last_epoch):
        super().__init__()
        self.batch = batch
        self.folder = Path(folder)
        self.every = max(int(every), 1)
        self.last_epoch = last_epoch

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 != self.last_epoch:
            return
        grid = reconstruction_grid(self.model, self.batch["online"], self.batch["sample_index"])
        import cv2

        path = self.folder / f"epoch_{epoch + 1:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: cv2.imwrite(str(tmp), grid))


def reconstruction_grid(pretrainer, online_view, sample_index):
    """uint8 image: one row per sample of original | masked | reconstructed.

    The reconstruction is predicted in per-patch normalised units; it is
    mapped back with each patch's own mean and standard deviation (as the
    MAE visualisations), and visible patches show the original pixels.
    """
    online_view = tf.convert_to_tensor(online_view, tf.float32)
    masked, patch_mask = pretrainer.mask_views(online_view, sample_index)
    prediction = tf.cast(pretrainer(masked, training=False), tf.float32)
    p = pretrainer.patch_size
    patches = patchify(online_view, p)
    mean = tf.reduce_mean(patches, axis=-1, keepdims=True)
    std = tf.math.reduce_std(patches, axis=-1, keepdims=True)
    restored = unpatchify(patchify(prediction, p) * std + mean, p, online_view.shape)
    pixel_mask = expand_patch_mask(patch_mask, p)
    pasted = restored * pixel_mask + online_view * (1.0 - pixel_mask)
    rows = []
    for i in range(online_view.shape[0]):
        panels = [online_view[i, ..., 0], masked[i, ..., 0], pasted[i, ..., 0]]
        low, high = float(tf.reduce_min(online_view[i])), float(tf.reduce_max(online_view[i]))
        scaled = [np.clip((np.asarray(x) - low) / max(high - low, 1e-6) * 255.0, 0, 255) for x in panels]
        rows.append(np.concatenate(scaled, axis=1))
    return np.concatenate(rows, axis=0).astype(np.uint8)


def _sized_to_budget(config, run, sampler, strategy, log):
    """`config` sized to its `minutes`: a resumed run with the same budget keeps
    its epochs; otherwise the step time comes from the run's history, or
    from a few steps of a throwaway pretrainer on a fresh run."""
    saved = run.saved_config()
    if run.state["epochs_done"] and saved.get("minutes") == config.minutes:
        log(f"--minutes {config.minutes:g}: keeping the run's {saved['epochs']} epochs")
        return dataclasses.replace(config, epochs=saved["epochs"], warmup_epochs=saved["warmup_epochs"])
    history = run.state["history"]
    if history:
        step_seconds = float(np.median([row["step_seconds"] for row in history]))
        # Older runs did not time their epoch ends: they count as nothing.
        epoch_end = float(np.median([row.get("end_seconds", 0.0) for row in history]))
        spent = float(sum(row["seconds"] + row.get("end_seconds", 0.0) for row in history))
        source = f"median of the run's {len(history)} epochs"
    else:
        started = time.perf_counter()
        step_seconds, tracing, epoch_end = measure_costs(config, sampler.dataset(config.batch_size), strategy)
        # The probe's time, and the tracing the run will pay again.
        spent = time.perf_counter() - started + tracing
        source = f"measured in {time.perf_counter() - started:.0f} s"
    sized = fit_to_budget(config, run.steps_per_epoch, step_seconds, spent, run.state["epochs_done"], epoch_end)
    log(f"--minutes {config.minutes:g}: {step_seconds:.3f} s/step and {epoch_end:.2f} s an epoch's end ({source}) "
        f"-> {sized.epochs} epochs of {run.steps_per_epoch} steps, {sized.warmup_epochs} of warm-up")
    return sized


def pretrain(config, records, run_dir, log=print, verbose="auto"):
    """Pretrain a U-Net on unlabeled angiograms; resume if `run_dir` holds a run.

    Args:
        config: a `PretrainConfig`.
        records: unlabeled `AngiogramRecord`s (from `index_unlabeled`).
        run_dir: output folder (see the module docstring).
        log: a print-like function for progress lines.
        verbose: Keras progress bar setting.

    Returns:
        dict with `epochs_done`, `epochs_run` (this call), `seconds`,
        `n_images`, `steps_per_epoch`, `weights_path`, `history`.

    Raises:
        InvalidInputError: `run_dir` holds a run made with other settings.
    """
    started = time.perf_counter()
    run = PretrainRun(config, run_dir, log)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    policy, strategy = start_job(config.precision, config.seed)
    config.check(strategy.num_replicas_in_sync)
    resumed = run.load_state()
    if resumed:
        run.check_resumable()
    # Each sitting's machine and the precision `auto` resolved to there (saved with the next epoch).
    run.state.setdefault("sittings", []).append({
        "after_epoch": run.state["epochs_done"], "precision": str(getattr(policy, "name", policy)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "replicas": strategy.num_replicas_in_sync})
    angiograms = load_angiograms(config, records, run.run_dir / "cache", log)
    log(f"{unlabeled_summary(angiograms, config.working_size)}; precision {policy}; "
        f"{strategy.num_replicas_in_sync} replica(s)")

    run.steps_per_epoch = config.steps_per_epoch or max(1, len(angiograms) // config.batch_size)
    samples_per_epoch = run.steps_per_epoch * config.batch_size
    sampler = TwoViewSampler(angiograms, config.view_config(), config.seed, samples_per_epoch)
    if config.minutes is not None:
        run.config = config = _sized_to_budget(config, run, sampler, strategy, log)
        keras.utils.set_random_seed(config.seed)  # the probe drew from the global seed
    total_steps = config.epochs * run.steps_per_epoch
    warmup_steps = min(config.warmup_epochs, config.epochs) * run.steps_per_epoch

    with strategy.scope():
        run.model = ContrastiveMaskedPretrainer(**config.pretrainer_kwargs())
        run.model.compile(optimizer=make_optimizer(config, total_steps, warmup_steps), jit_compile=False)
        if resumed:
            load_checkpoint(run.model, run.run_dir / run.state["checkpoint"])
            log(f"resuming after epoch {run.state['epochs_done']} from {run.run_dir / run.state['checkpoint']}")
    if run.chief:
        if not resumed:  # the run's record: a rerun never rewrites it
            run.write_record(**{POOL_RECORD: pool_record(config, records)})
        atomic_write_json(run.run_dir / PRETRAINER_CONFIG, run.model.get_config())

    first_epoch = run.state["epochs_done"]
    if first_epoch < config.epochs:
        dataset = sampler.dataset(config.batch_size, start_sample=first_epoch * samples_per_epoch)
        grid = ReconstructionGrid(next(iter(sampler.dataset(min(4, config.batch_size)))), run.run_dir / "grids",
                                  config.grid_every, config.epochs)
        run.fit(dataset, first_epoch, config.epochs, run.steps_per_epoch, verbose,
                tensorboard={"write_graph": False}, chief_callbacks=[grid])
    else:
        log(f"{run.run_dir} already holds {first_epoch} epochs (asked for {config.epochs}): nothing to do")

    return {
        "epochs_done": run.state["epochs_done"],
        "epochs_run": run.epochs_run,
        "seconds": time.perf_counter() - started,
        "n_images": len(angiograms),
        "steps_per_epoch": run.steps_per_epoch,
        "weights_path": str(run.run_dir / PRETRAINED_WEIGHTS),
        "history": run.state["history"],
        "model": run.model,
    }


def load_angiograms(config, records, cache_dir, log=print):
    """The unlabeled angiograms of `records` (`max_images` of them, drawn by
    the seed), decoded once at the working size and cached in `cache_dir`."""
    records = select_records(records, config.max_images, config.seed)
    angiograms = load_unlabeled(
        records, config.working_size, cache_dir=cache_dir, skip_invalid=config.skip_invalid, log=log,
    )
    for path, problem in angiograms.skipped:
        log(f"skipped {path}: {problem}")
    return angiograms
