"""The spine every training job stands on: its run folder, its resume state,
its epoch end (NaN guard, `history.csv`, `curves.png`), its optimizer, and the
precision, strategy and seeds it runs under.

`finetune` (`training/finetune.py`) and `pretrain` (`training/pretrain.py`)
are jobs on top of it. A job subclasses `TrainingRun` and says what its
state holds, what it resumes its model from, and what an epoch end scores,
saves and logs (`end_epoch`); `fit` trains its model with the callbacks
every job has (the epoch end, TensorBoard on the chief).

A run folder is the record of how its model was made: `config.yaml` (and
the job's other records, such as `split.json`) are written when the run
starts and never by a rerun, `state.json` holds the finished epochs and
their history, and `history.csv` and `curves.png` are written from it.
Everything is written atomically (`cm_unet_keras.core.files`), by the chief
only.
"""

import csv
import io
import json
import math
import time
from pathlib import Path

import keras
import tensorflow as tf

from cm_unet_keras.config import read_recipe, write_recipe
from cm_unet_keras.core.files import atomic_write, atomic_write_json
from cm_unet_keras.training.optimizers import LayerwiseAdamW
from cm_unet_keras.training.runtime import choose_strategy, is_chief, set_precision

# Parameters that take no weight decay: biases and BatchNorm scale/offset.
NO_DECAY = ["bias", "gamma", "beta"]


def start_job(precision, seed, deterministic=False):
    """Set the precision policy, the distribution strategy and the seeds of a job.

    Call it before any other TensorFlow operation of the job: a multi-worker
    strategy must be made first.

    Returns:
        (the dtype policy's name, the `tf.distribute` strategy).
    """
    policy = set_precision(precision)
    strategy = choose_strategy()  # before any TensorFlow op (multi-worker needs it first)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return policy, strategy


def adamw(learning_rate, weight_decay, slow_layers=None, slow_factor=1.0, **kwargs):
    """AdamW without weight decay on biases and BatchNorm parameters.

    Args:
        learning_rate: a float or a schedule.
        weight_decay: decoupled weight decay.
        slow_layers: None for `keras.optimizers.AdamW`; otherwise (even
            empty) a `LayerwiseAdamW` whose variables in these layers step at
            `slow_factor` x the learning rate.
        **kwargs: more AdamW arguments (`beta_1`, `beta_2`...).
    """
    if slow_layers is None:
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
    else:
        optimizer = LayerwiseAdamW(slow_layers=slow_layers, slow_factor=slow_factor, learning_rate=learning_rate,
                                   weight_decay=weight_decay, **kwargs)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    return optimizer


class TrainingRun:
    """One job's run in `run_dir`: its record, its state, its epoch ends.

    Args:
        config: the job's configuration (a dataclass; `config.yaml`).
        run_dir: the run folder.
        log: a print-like function for progress lines.

    Subclasses extend `new_state` and implement `end_epoch(epoch, logs,
    seconds)`, which `fit` calls after every epoch with the epoch's logs
    (the same dict TensorBoard then reads) and its training time.
    """

    def __init__(self, config, run_dir, log=print):
        self.config = config
        self.run_dir = Path(run_dir)
        self.log = log
        self.chief = is_chief()
        self.state_path = self.run_dir / "state.json"
        self.state = self.new_state()
        self.model = None

    def new_state(self):
        """The state of a run that has trained nothing."""
        return {"epochs_done": 0, "history": []}

    # --- the record ---------------------------------------------------------
    def saved_config(self):
        """The run's `config.yaml` as a dict ({} when there is none)."""
        path = self.run_dir / "config.yaml"
        return read_recipe(path) if path.is_file() else {}

    def write_record(self, **records):
        """`config.yaml` and the named JSON records (`split.json`...): written
        when the run starts, never by a rerun."""
        write_recipe(self.config, self.run_dir / "config.yaml")
        for name, value in records.items():
            atomic_write_json(self.run_dir / name, value)

    # --- the state ------------------------------------------------------------
    def read_state(self):
        """`state.json` as a dict, or None when the run has none."""
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else None

    def save_state(self):
        atomic_write_json(self.state_path, self.state)

    # --- epoch ends -----------------------------------------------------------
    def check_finite(self, loss, epoch, kept):
        """Stop training on a non-finite loss; `kept` says what the run keeps."""
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise FloatingPointError(
                f"loss became {loss} at epoch {epoch + 1}; {kept}. Lower --lr or check the inputs."
            )

    def write_history(self, fields=None):
        """`history.csv`: one row per finished epoch (columns: `fields`, or
        every row's in order of appearance; a column older rows lack is empty)."""
        history = self.state["history"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields or list(dict.fromkeys(k for row in history for k in row)))
        writer.writeheader()
        writer.writerows(history)
        atomic_write(self.run_dir / "history.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))

    def write_curves(self, panels):
        """`curves.png`: one panel per `(column, axis settings, line settings)` against the epochs."""
        write_curves(self.state["history"], self.run_dir / "curves.png", panels)

    def end_epoch(self, epoch, logs, seconds):
        raise NotImplementedError

    def fit(self, dataset, first_epoch, last_epoch, steps_per_epoch, verbose, tensorboard=None, chief_callbacks=()):
        """Train `self.model` on `dataset` for epochs `first_epoch` to `last_epoch`.

        Every epoch ends in `end_epoch`; the chief also logs to TensorBoard
        in `logs/` (with the `tensorboard` arguments) and runs
        `chief_callbacks`.
        """
        callbacks = [EpochEnd(self)]
        if self.chief:  # only the chief writes
            callbacks += [keras.callbacks.TensorBoard(str(self.run_dir / "logs"), **(tensorboard or {}))]
            callbacks += list(chief_callbacks)
        self.model.fit(
            dataset,
            epochs=last_epoch,
            initial_epoch=first_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # the samplers order their streams by their own seeds
            verbose=verbose,
        )


class EpochEnd(keras.callbacks.Callback):
    """Times each epoch and hands it to its run's `end_epoch(epoch, logs, seconds)`."""

    def __init__(self, run):
        super().__init__()
        self.run = run
        self.started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # The same dict: what end_epoch adds (val_dice) reaches the TensorBoard callback.
        self.run.end_epoch(epoch, logs if logs is not None else {}, time.perf_counter() - self.started)


def write_curves(history, path, panels):
    """Columns of `history` against its epochs, one panel per `(column, axis
    settings, line settings)`, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, len(panels), figsize=(9, 3.5))
    for axis, (column, axis_settings, line_settings) in zip(axes, panels):
        axis.plot(epochs, [row[column] for row in history], **line_settings)
        axis.set(xlabel="epoch", **axis_settings)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100))
    plt.close(figure)
