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

Modules: `folds` (k-fold or one split), `space` (the ranges and their
checks), `hypermodel` (a trial: one `finetune` run per fold), `oracles`
(the algorithms and the tuner), `records` (what the search folder holds)
and `search` (`tune`). Their public names are importable from here.
"""

from cm_unet_keras.config import ALGORITHMS, TuneConfig
from cm_unet_keras.tuning.folds import (
    DEFAULT_KFOLD,
    MAX_PAIRS_FOR_KFOLD,
    SINGLE_SPLIT_FRACTION,
    default_folds,
    make_folds,
)
from cm_unet_keras.tuning.hypermodel import FinetuneHyperModel, trial_key
from cm_unet_keras.tuning.oracles import (
    OBJECTIVE,
    BayesianOptimizationOracle,
    FinetuneTuner,
    RandomSearchOracle,
    make_oracle,
)
from cm_unet_keras.tuning.records import WallClock, changed_settings, check_settings, write_summary, write_trials_csv
from cm_unet_keras.tuning.search import tune
from cm_unet_keras.tuning.space import DEFAULT_SPACE, SPEC_KEYS, UNTUNABLE, declare, load_space, resolve_space

__all__ = [
    "ALGORITHMS", "BayesianOptimizationOracle", "DEFAULT_KFOLD", "DEFAULT_SPACE", "FinetuneHyperModel",
    "FinetuneTuner", "MAX_PAIRS_FOR_KFOLD", "OBJECTIVE", "RandomSearchOracle", "SINGLE_SPLIT_FRACTION",
    "SPEC_KEYS", "TuneConfig", "UNTUNABLE", "WallClock", "changed_settings", "check_settings", "declare",
    "default_folds", "load_space", "make_folds", "make_oracle", "resolve_space", "trial_key", "tune",
    "write_summary", "write_trials_csv",
]
