"""Leak-free search of fine-tuning hyperparameters with KerasTuner.

With 3 to 30 labelled angiograms the learning rate, the schedule and how
long the encoder stays frozen decide most of the result. The original code
searched them on 3 folds that reused one model, and picked checkpoints on
its test set. Here:

- only the pairs given to `tune` enter the search (pass the `train` part of
  a split file; the held-out part is never read);
- with 10 labels or fewer each trial is scored by k-fold cross-validation
  inside those pairs; every fold trains a fresh U-Net from the same initial
  weights (those of `--init`, or one seeded random initialisation), so no
  fold sees another's training and trials differ only by hyperparameters;
- a fold's score is what `cm-unet finetune` would select and `cm-unet
  evaluate` would report on its validation pairs: mean per-image hard Dice
  at full resolution of the epoch the configuration keeps (`select`: the
  last by default, or the best). A trial's score is the mean over folds;
- the first trial of random and Bayesian searches is the base configuration
  (the defaults), so the search measures them under the same folds and
  `best.yaml` is never worse than them on cross-validation.

Every fold is an ordinary `finetune` run folder, so a search killed at any
point resumes: KerasTuner reruns an unfinished trial with the same values,
and its finished folds and epochs are not trained again.

Search folder:
    search.json           settings of the search; a rerun must match them
    initial.weights.h5    the weights every fold of every trial starts from
    trials.csv            one row per trial: hyperparameters, fold scores, score
    best.yaml             the best trial's FinetuneConfig (`finetune --config`)
    summary.json          best trial and score, trial count, seconds
    wall_seconds.json     wall time of all calls so far, kept at every trial end
    keras_tuner/          the oracle's state and trial records (KerasTuner)
    runs/<key>/fold_<i>/  one `finetune` run folder per trial and fold
"""

import copy
import csv
import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from cm_unet_keras.config import TuneConfig  # noqa: F401  (tuning.TuneConfig)
from cm_unet_keras.config import ALGORITHMS, FinetuneConfig, config_to_dict, read_recipe, write_recipe
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write, atomic_write_json
from cm_unet_keras.data.layouts import validate_records
from cm_unet_keras.models.unet import CMUNet
from cm_unet_keras.training.finetune import finetune, split_records
from cm_unet_keras.training.runtime import set_precision
from cm_unet_keras.training.transfer import load_initial_weights

OBJECTIVE = keras_tuner.Objective("val_dice", direction="max")

# Up to this many labelled pairs a single validation split is too noisy to
# rank hyperparameters: trials are scored by k-fold cross-validation.
MAX_PAIRS_FOR_KFOLD = 10
DEFAULT_KFOLD = 5

# Ranges of the search, by FinetuneConfig field. Each hyperparameter's default
# is the base configuration's value. `recipes/tune_space.yaml` holds the same
# ranges as a file to copy and edit.
DEFAULT_SPACE = {
    "lr": {"type": "float", "min": 1.0e-5, "max": 1.0e-2, "sampling": "log"},
    "weight_decay": {"type": "float", "min": 1.0e-6, "max": 1.0e-2, "sampling": "log"},
    "warmup_fraction": {"type": "float", "min": 0.0, "max": 0.3},
    "frozen_encoder_epochs": {"type": "int", "min": 0, "max": 10},
    "dice_weight": {"type": "float", "min": 0.0, "max": 1.0},
    "augment_strength": {"type": "float", "min": 0.0, "max": 2.0},
    "batch_size": {"type": "choice", "values": [4, 8, 16]},
}

# Fields that define the model, the data or the protocol rather than the
# training: tuning them would change what the folds' scores compare (the
# shared initial weights, the validation pairs, the selection threshold).
UNTUNABLE = ("base_filters", "depth", "seed", "limit", "init", "precision", "val_fraction", "threshold")

SPEC_KEYS = {
    "float": {"type", "min", "max", "sampling", "step"},
    "int": {"type", "min", "max", "sampling", "step"},
    "choice": {"type", "values"},
    "boolean": {"type"},
    "fixed": {"type", "value"},
}


# --- folds -------------------------------------------------------------------


# Validation fraction of a one-split search when the base config sets none.
SINGLE_SPLIT_FRACTION = 0.2


def default_folds(n_pairs):
    if n_pairs <= MAX_PAIRS_FOR_KFOLD:
        return min(DEFAULT_KFOLD, n_pairs)
    return 1


def make_folds(records, folds, seed, val_fraction=0.2):
    """Training and validation pairs of each fold, drawn by `seed`.

    Args:
        records: the labelled records the search may use.
        folds: k >= 2 partitions the records into k disjoint validation
            groups (each record validates exactly once); 1 carves one
            validation split of `val_fraction`, as `finetune` does.
        seed: integer seed of the assignment.
        val_fraction: validation fraction when `folds` is 1.

    Returns:
        A list of (train_records, val_records), sorted by name inside.
    """
    records = sorted(records, key=lambda record: record.name)
    if len(records) < 2:
        raise ValueError(f"a search needs at least 2 labelled pairs, got {len(records)}")
    if folds == 1:
        train, val = split_records(records, val_fraction, seed)
        if not val:
            raise ValueError("folds=1 needs val_fraction > 0 to carve a validation split")
        return [(train, sorted(val, key=lambda record: record.name))]
    if not 2 <= folds <= len(records):
        raise ValueError(f"folds must be 1 or between 2 and {len(records)} (the pairs), got {folds}")
    order = np.random.default_rng(seed).permutation(len(records))
    groups = [set(group.tolist()) for group in np.array_split(order, folds)]
    return [
        ([r for i, r in enumerate(records) if i not in group], [r for i, r in enumerate(records) if i in group])
        for group in groups
    ]


# --- search space ------------------------------------------------------------


def load_space(path=None):
    """The search space from a recipe file (or `DEFAULT_SPACE`), checked."""
    space = copy.deepcopy(DEFAULT_SPACE) if path is None else read_recipe(path)
    source = path or "DEFAULT_SPACE"
    fields = {field.name for field in dataclasses.fields(FinetuneConfig)}
    for name, spec in space.items():
        if name not in fields:
            raise InvalidInputError(source, f"{name!r} is not a FinetuneConfig field ({sorted(fields)})")
        if name in UNTUNABLE:
            raise InvalidInputError(source, f"{name!r} defines the model or the protocol and cannot be tuned")
        if not isinstance(spec, dict) or spec.get("type") not in SPEC_KEYS:
            raise InvalidInputError(source, f"{name}: a range needs a type among {sorted(SPEC_KEYS)}")
        unknown = set(spec) - SPEC_KEYS[spec["type"]]
        if unknown:
            raise InvalidInputError(source, f"{name}: unknown key(s) {sorted(unknown)} for a {spec['type']} range")
    return space


def resolve_space(space, base, algorithm):
    """Adapt the space to the base configuration; returns (space, notes).

    Raises:
        ValueError: a base value lies outside its range (it is the first
            trial and every hyperparameter's default), or Hyperband is asked
            to search the epochs it allocates itself.
    """
    space = copy.deepcopy(space)
    notes = []
    if algorithm == "hyperband" and "epochs" in space:
        raise ValueError("hyperband allocates the epochs of each trial: remove 'epochs' from the space")
    frozen = space.get("frozen_encoder_epochs")
    if frozen is not None and frozen["type"] == "int":
        if not base.init:
            # A random encoder gains nothing from being frozen; trials would
            # spend their budget on a fixed random feature extractor.
            del space["frozen_encoder_epochs"]
            notes.append("frozen_encoder_epochs not searched: no --init, the encoder starts random")
        elif frozen["max"] > base.epochs - 1:
            # Keep at least one epoch of full fine-tuning.
            frozen["max"] = max(frozen["min"], base.epochs - 1)
            notes.append(f"frozen_encoder_epochs searched up to {frozen['max']} (epochs {base.epochs})")
    for name, spec in space.items():
        _check_default(name, spec, getattr(base, name))
    return space, notes


def _check_default(name, spec, value):
    kind = spec["type"]
    inside = {
        "float": lambda: spec["min"] <= value <= spec["max"],
        "int": lambda: spec["min"] <= value <= spec["max"],
        "choice": lambda: value in spec["values"],
        "boolean": lambda: isinstance(value, bool),
        "fixed": lambda: True,
    }[kind]()
    if not inside:
        raise ValueError(
            f"the base value {name}={value!r} lies outside its search range {spec}: the base "
            "configuration is the first trial, so widen the range or change the base value"
        )


def declare(hp, name, spec, default):
    """Declare one hyperparameter of the space on `hp`; returns its value."""
    kind = spec["type"]
    if kind == "float":
        return hp.Float(name, spec["min"], spec["max"], step=spec.get("step"),
                        sampling=spec.get("sampling", "linear"), default=float(default))
    if kind == "int":
        return hp.Int(name, spec["min"], spec["max"], step=spec.get("step"),
                      sampling=spec.get("sampling", "linear"), default=int(default))
    if kind == "choice":
        return hp.Choice(name, spec["values"], default=default)
    if kind == "boolean":
        return hp.Boolean(name, default=bool(default))
    return hp.Fixed(name, spec["value"])


# --- hypermodel --------------------------------------------------------------


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
            model = CMUNet(base_filters=config.base_filters, depth=config.depth)
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
        model = CMUNet(base_filters=self.base_config.base_filters, depth=self.base_config.depth)
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


# --- tuner and oracles ------------------------------------------------------


class _BaseConfigFirst:
    """Oracle mixin: the first trial runs the base configuration's values."""

    def populate_space(self, trial_id):
        if not self.trials:
            # Every hyperparameter's default is its base value.
            return {"status": "RUNNING", "values": self.get_space().values}
        return super().populate_space(trial_id)


class RandomSearchOracle(_BaseConfigFirst, keras_tuner.oracles.RandomSearchOracle):
    pass


class BayesianOptimizationOracle(_BaseConfigFirst, keras_tuner.oracles.BayesianOptimizationOracle):
    pass


def make_oracle(tune_config, max_epochs):
    """The KerasTuner oracle of `tune_config.algorithm`."""
    common = {"objective": OBJECTIVE, "seed": tune_config.seed}
    if tune_config.algorithm == "random":
        return RandomSearchOracle(max_trials=tune_config.max_trials, **common)
    if tune_config.algorithm == "bayesian":
        initial_points = tune_config.initial_points or max(3, tune_config.max_trials // 2)
        return BayesianOptimizationOracle(max_trials=tune_config.max_trials, num_initial_points=initial_points, **common)
    if tune_config.algorithm == "hyperband":
        oracle = keras_tuner.oracles.HyperbandOracle(
            max_epochs=max_epochs, factor=tune_config.hyperband_factor, **common
        )
        # Hyperband sizes its brackets itself; `max_trials` caps them so that
        # every algorithm honours the same budget flag.
        oracle.max_trials = tune_config.max_trials
        return oracle
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {tune_config.algorithm!r}")


class FinetuneTuner(keras_tuner.Tuner):
    """Runs each trial through `FinetuneHyperModel` and keeps `trials.csv` current.

    Unlike `keras_tuner.Hyperband`, a promoted Hyperband trial does not
    continue from its parent's weights: it trains from the shared initial
    weights for its whole epoch budget. That costs more epochs but scores
    exactly what `finetune --config best.yaml` reproduces (a continued run
    would have restarted its learning-rate schedule midway).
    """

    def __init__(self, oracle, hypermodel, directory, clock=None, **kwargs):
        super().__init__(oracle=oracle, hypermodel=hypermodel, directory=str(directory),
                         project_name="keras_tuner", overwrite=False, **kwargs)
        self.search_dir = Path(directory)
        self.clock = clock or WallClock(self.search_dir / "wall_seconds.json")

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        # Frees the previous trial's graphs, as KerasTuner's own trials do.
        keras.backend.clear_session()
        model = self.hypermodel.build(hp)
        try:
            return self.hypermodel.fit(hp, model, epochs=hp.values.get("tuner/epochs"))
        except tf.errors.ResourceExhaustedError:
            raise  # too large a batch for this machine: a failed trial, the search goes on
        except Exception as error:
            # A bug or a broken machine, not a bad hyperparameter: KerasTuner
            # would record a failed trial and spend the budget on more. Stop;
            # the trial stays unfinished and a rerun retries it.
            raise keras_tuner.errors.FatalError(f"trial {trial.trial_id} stopped the search: {error!r}") from error

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        write_trials_csv(self.oracle, self.hypermodel, self.search_dir / "trials.csv")
        self.clock.save()

    def load_model(self, trial):
        raise NotImplementedError(
            "a trial trains one U-Net per fold and keeps them in runs/; train the final model "
            "with `cm-unet finetune --config best.yaml` on all the labelled pairs"
        )


# --- outputs -----------------------------------------------------------------


class WallClock:
    """Wall time of a search over all its calls, saved at every trial end.

    A killed call never reaches its summary; saving at trial ends loses at
    most the unfinished trial's time.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.before = json.loads(self.path.read_text())["seconds"] if self.path.is_file() else 0.0
        self.started = time.perf_counter()

    def seconds(self):
        return self.before + time.perf_counter() - self.started

    def save(self):
        atomic_write_json(self.path, {"seconds": self.seconds()})


def write_trials_csv(oracle, hypermodel, path):
    """One row per trial: id, status, score, fold scores, values, run folder."""
    names = list(hypermodel.space)
    n_folds = len(hypermodel.folds)
    fields = (["trial_id", "status", "val_dice", "val_dice_std"]
              + [f"val_dice_fold{i}" for i in range(n_folds)] + ["seconds"] + names + ["epochs", "runs"])
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        hp = trial.hyperparameters
        config = hypermodel.trial_config(hp, hp.values.get("tuner/epochs"))
        row = {"trial_id": trial_id, "status": trial.status, "epochs": config.epochs,
               "runs": f"runs/{trial_key(config, names)}"}
        row.update({name: hp.get(name) for name in names})
        for metric in fields[2 : 5 + n_folds]:
            if trial.metrics.exists(metric):
                row[metric] = trial.metrics.get_last_value(metric)
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def check_settings(path, settings):
    """Write the search's settings, or refuse a rerun that changes them."""
    if path.is_file():
        changed = changed_settings(json.loads(path.read_text()), settings)
        if changed:
            raise InvalidInputError(
                path.parent,
                f"holds a search with other settings ({', '.join(changed)} differ); "
                "rerun with the same ones to resume it, or choose a new --out",
            )
    else:
        atomic_write_json(path, settings)


def changed_settings(previous, current):
    """Names of the settings that differ between two calls of a search."""
    changed = [key for key in set(previous) | set(current)
               if key != "base_config" and previous.get(key) != current.get(key)]
    # A field added to FinetuneConfig since the search began leaves it the
    # same search while the field holds its default.
    defaults = config_to_dict(FinetuneConfig())
    old, new = previous.get("base_config", {}), current.get("base_config", {})
    if any(old.get(k, defaults.get(k)) != new.get(k, defaults.get(k)) for k in set(old) | set(new)):
        changed.append("base_config")
    return sorted(changed)


def tune(base_config, tune_config, records, out_dir, log=print, verbose="auto"):
    """Search fine-tuning hyperparameters on `records`; resume if `out_dir` holds a search.

    Args:
        base_config: `FinetuneConfig` of everything not searched (model
            shape, epochs, steps, patch size, `init`, seed) and of each
            hyperparameter's default.
        tune_config: a `TuneConfig`.
        records: the labelled `AngiogramRecord`s the search may use: keep the
            pairs you will report on out of them.
        out_dir: the search folder (see the module docstring).
        log: a print-like function.
        verbose: Keras progress bar setting of the folds.

    Returns:
        The summary written to `summary.json`: best trial, its score and
        values, trial counts, `best_config` path, seconds.
    """
    out_dir = Path(out_dir)
    if base_config.limit is not None:
        raise ValueError("tune uses every pair it is given: choose the pairs with a split file, not limit")
    if tune_config.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {tune_config.algorithm!r}")
    # A broken file must stop the search now, not fail every trial.
    validate_records(records)
    n_folds = tune_config.folds or default_folds(len(records))
    # Fine-tuning trains on all pairs by default (val_fraction 0); a search
    # with one split still needs a validation part.
    folds = make_folds(records, n_folds, tune_config.seed, base_config.val_fraction or SINGLE_SPLIT_FRACTION)
    space, notes = resolve_space(load_space(tune_config.space), base_config, tune_config.algorithm)
    for note in notes:
        log(note)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "base_config": config_to_dict(base_config),
        # More trials extend a search; the space is compared by content below.
        "tune_config": {k: v for k, v in dataclasses.asdict(tune_config).items() if k not in ("max_trials", "space")},
        "space": space,
        "folds": [{"train": [r.name for r in train], "val": [r.name for r in val]} for train, val in folds],
    }
    check_settings(out_dir / "search.json", settings)
    clock = WallClock(out_dir / "wall_seconds.json")
    log(f"{len(records)} labelled pairs, {len(folds)} fold(s); {tune_config.algorithm} search of "
        f"{sorted(space)}, up to {tune_config.max_trials} trials")

    hypermodel = FinetuneHyperModel(base_config, space, folds, out_dir / "runs",
                                    out_dir / "initial.weights.h5", log=log, verbose=verbose)
    hypermodel.initial_weights()
    oracle = make_oracle(tune_config, base_config.epochs)
    tuner = FinetuneTuner(oracle, hypermodel, out_dir, clock=clock)
    tuner.search(verbose=1)
    write_trials_csv(tuner.oracle, hypermodel, out_dir / "trials.csv")
    clock.save()
    return write_summary(tuner.oracle, hypermodel, out_dir, clock)


def write_summary(oracle, hypermodel, out_dir, clock):
    """Write best.yaml and summary.json from the oracle's trials."""
    completed = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
    if not completed:
        raise RuntimeError(f"no trial of the search in {out_dir} completed; see {out_dir / 'trials.csv'}")
    best = oracle.get_best_trials(1)[0]
    hp = best.hyperparameters
    best_config = hypermodel.trial_config(hp, hp.values.get("tuner/epochs"))
    write_recipe(best_config, out_dir / "best.yaml")
    summary = {
        "best_trial": best.trial_id,
        "best_val_dice": best.score,
        "best_values": {name: hp.get(name) for name in hypermodel.space},
        "best_config": str(out_dir / "best.yaml"),
        "trials": len(oracle.trials),
        "trials_completed": len(completed),
        "folds": len(hypermodel.folds),
        "seconds_this_call": time.perf_counter() - clock.started,
        "seconds_total": clock.seconds(),
        "seconds_in_trials": sum(_trial_seconds(trial) for trial in oracle.trials.values()),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _trial_seconds(trial):
    return trial.metrics.get_last_value("seconds") if trial.metrics.exists("seconds") else 0.0
