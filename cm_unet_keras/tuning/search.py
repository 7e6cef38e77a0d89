"""`tune`: the search, from the labelled pairs to `best.yaml` (see the package docstring)."""

import dataclasses
from pathlib import Path

from cm_unet_keras.config import ALGORITHMS, config_to_dict
from cm_unet_keras.data.layouts import validate_records
from cm_unet_keras.tuning.folds import SINGLE_SPLIT_FRACTION, default_folds, make_folds
from cm_unet_keras.tuning.hypermodel import FinetuneHyperModel
from cm_unet_keras.tuning.oracles import FinetuneTuner, make_oracle
from cm_unet_keras.tuning.records import WallClock, check_settings, write_summary, write_trials_csv
from cm_unet_keras.tuning.space import load_space, resolve_space

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
