"""The folds of a search: k-fold cross-validation inside few labels, one split above."""

import numpy as np

from cm_unet_keras.training.finetune import split_records

# Up to this many labelled pairs a single validation split is too noisy to
# rank hyperparameters: trials are scored by k-fold cross-validation.
MAX_PAIRS_FOR_KFOLD = 10
DEFAULT_KFOLD = 5

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
