"""The oracles (random, Bayesian, Hyperband; the base configuration is the
first trial) and the tuner that runs each trial through the hypermodel."""

from pathlib import Path

import keras
import keras_tuner
import tensorflow as tf

from cm_unet_keras.config import ALGORITHMS
from cm_unet_keras.tuning.records import WallClock, write_trials_csv

OBJECTIVE = keras_tuner.Objective("val_dice", direction="max")


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
