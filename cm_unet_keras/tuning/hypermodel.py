"""Fine-tuning of a `CMUNet` as a KerasTuner hypermodel: every fold of a
trial is an ordinary `finetune` run from the same initial weights."""

import hashlib
import json
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from cm_unet_keras.config import FinetuneConfig, config_to_dict
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write
from cm_unet_keras.models.unet import CMUNet
from cm_unet_keras.training.finetune import finetune
from cm_unet_keras.training.runtime import set_precision
from cm_unet_keras.training.transfer import load_initial_weights
from cm_unet_keras.tuning.space import declare

class FinetuneHyperModel(keras_tuner.HyperModel):
    """Fine-tuning of a `CMUNet` as a KerasTuner hypermodel.

    `build(hp)` makes the U-Net every fold starts from: the base
    configuration's shape, with the weights of `base_config.init` (a
    pretraining run, a `.keras` U-Net or a preset) or of one seeded random
    initialisation, saved once to `initial_weights_path`. `fit(hp, model)`
    fine-tunes a fresh copy of it on each fold (a `finetune` run in
    `runs_dir/<key>/fold_<i>`) and returns the mean validation Dice.

    Args:
        base_config: the `FinetuneConfig` the hyperparameters are merged into.
        space: the resolved search space (see `resolve_space`).
        folds: list of (train_records, val_records), from `make_folds`.
        runs_dir: folder of the folds' run folders.
        initial_weights_path: `.weights.h5` of the shared initial weights.
        log: a print-like function.
        verbose: Keras progress bar setting of the folds.

    Example:
    ```python
    hypermodel = FinetuneHyperModel(base, space, make_folds(records, 3, 0), "runs", "init.weights.h5")
    hp = keras_tuner.HyperParameters()
    scores = hypermodel.fit(hp, hypermodel.build(hp))  # {"val_dice": ..., ...}
    ```
    """

    def __init__(self, base_config, space, folds, runs_dir, initial_weights_path, log=print, verbose=0):
        super().__init__(name="cm_unet_finetune")
        self.base_config = base_config
        self.space = space
        self.folds = folds
        self.runs_dir = Path(runs_dir)
        self.initial_weights_path = Path(initial_weights_path)
        self.log = log
        self.verbose = verbose
        self._initial_weights = None

    def declare_hyperparameters(self, hp):
        return {name: declare(hp, name, spec, getattr(self.base_config, name)) for name, spec in self.space.items()}

    def initial_weights(self):
        """The shared starting weights: read from file, or made and saved once."""
        if self._initial_weights is None:
            config = self.base_config
            set_precision(config.precision)
            # The same seeded draw `finetune` makes for a run without --init.
            keras.utils.set_random_seed(config.seed)
            model = CMUNet(base_filters=config.base_filters, depth=config.depth, conventions=config.conventions)
            if self.initial_weights_path.is_file():
                # A resumed search must start its folds where the first call did.
                try:
                    model.load_weights(self.initial_weights_path)
                except ValueError as error:
                    raise InvalidInputError(
                        self.initial_weights_path,
                        "does not fit the U-Net of this version (its layers changed since the search "
                        f"began); start a new search in another --out ({error})",
                    ) from error
            else:
                if config.init:
                    load_initial_weights(model, config.init)
                atomic_write(self.initial_weights_path, model.save_weights)
            self._initial_weights = model.get_weights()
        return self._initial_weights

    def build(self, hp):
        self.declare_hyperparameters(hp)
        set_precision(self.base_config.precision)
        model = CMUNet(base_filters=self.base_config.base_filters, depth=self.base_config.depth,
                       conventions=self.base_config.conventions)
        model.set_weights(self.initial_weights())
        return model

    def trial_config(self, hp, epochs=None):
        """The `FinetuneConfig` a trial trains: base values, then `hp`'s."""
        values = config_to_dict(self.base_config)
        # The Bayesian oracle proposes numpy scalars, which YAML cannot write.
        values.update({name: _python_scalar(hp.get(name)) for name in self.space})
        if epochs is not None:
            values["epochs"] = int(epochs)
            # Hyperband's early rounds run fewer epochs than a searched frozen
            # phase: keep one epoch of full fine-tuning, as best.yaml records.
            values["frozen_encoder_epochs"] = max(0, min(values["frozen_encoder_epochs"], values["epochs"] - 1))
        return FinetuneConfig(**values)

    def fit(self, hp, model, *args, epochs=None, **kwargs):
        """Fine-tune a fresh copy of `model` on every fold; returns metrics.

        Args:
            hp: the trial's `HyperParameters`.
            model: the U-Net from `build(hp)`; its weights start every fold.
            epochs: the trial's epoch budget when Hyperband sets one (each
                trial then trains from the initial weights for that many
                epochs, so its score is what `best.yaml` reproduces).
            *args, **kwargs: ignored, including KerasTuner's `callbacks` and
                Hyperband's `initial_epoch`: a trial trains one model per
                fold, each logged to TensorBoard in its own run folder.

        Returns:
            `{"val_dice": mean over folds, "val_dice_std", "seconds",
            "val_dice_fold<i>": ...}`.
        """
        config = self.trial_config(hp, epochs)
        key = trial_key(config, self.space)
        start_weights = model.get_weights()
        started = time.perf_counter()
        scores = [
            self._fold_score(config, key, index, train, val, start_weights)
            for index, (train, val) in enumerate(self.folds)
        ]
        metrics = {
            "val_dice": float(np.mean(scores)),
            "val_dice_std": float(np.std(scores)),
            "seconds": time.perf_counter() - started,
        }
        metrics.update({f"val_dice_fold{index}": score for index, score in enumerate(scores)})
        return metrics

    def _fold_score(self, config, key, index, train, val, start_weights):
        prefix = f"[{key} fold {index + 1}/{len(self.folds)}] "
        try:
            result = finetune(
                config, train, self.runs_dir / key / f"fold_{index}", val_records=val,
                log=lambda message: self.log(prefix + message), verbose=self.verbose,
                initial_weights=start_weights,
            )
        except FloatingPointError as error:
            # Divergence is a property of the hyperparameters (too high a
            # learning rate), not a failure of the search: score it as such.
            self.log(prefix + f"diverged, fold scored 0: {error}")
            return 0.0
        return float(result["best_val_dice"])


def _python_scalar(value):
    return value.item() if isinstance(value, np.generic) else value


def trial_key(config, names):
    """Short stable name of a trial's values (its runs' folder).

    Only the searched fields and the epochs enter it: the rest is the base
    configuration, fixed for the search folder by `check_settings`, and a
    field added to `FinetuneConfig` later must not rename finished runs.
    """
    values = {name: getattr(config, name) for name in (*names, "epochs")}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
