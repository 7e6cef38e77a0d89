"""The study's data: the 30 / 10 split of the XCA pairs, nested labelled
subsets, and the unlabeled pool for pretraining."""

from pathlib import Path

import numpy as np

from cm_unet_keras.data.layouts import index_pairs, index_unlabeled
from cm_unet_keras.data.splits import select_part


def study_data(data_root, split_path, max_holdout=None):
    """(train, holdout) labelled records of `xca_vessels/train` by the split file."""
    records = index_pairs(Path(data_root) / "xca_vessels" / "train", mask_suffix="_gt")
    train, holdout = select_part(records, split_path, "train"), select_part(records, split_path, "holdout")
    return train, holdout[:max_holdout] if max_holdout else holdout


# ARCADE's stenosis splits that pretraining may see. Its `test` split is one the
# project is scored on: no test split enters a pretraining pool, labelled or not.
ARCADE_PRETRAINING_SPLITS = ("train", "val")


def unlabeled_pool(data_root, train_records):
    """ARCADE stenosis train and val images (its masks/ and annotations/ are
    skipped; `test` is never taken) plus the XCA training angiograms without
    their masks. The holdout is left out."""
    arcade = [Path(data_root) / "arcade_stenosis" / split for split in ARCADE_PRETRAINING_SPLITS]
    return index_unlabeled(arcade + [r.image_path for r in train_records])


def labelled_subset(train_records, n_labels, seed):
    """The first `n_labels` of a `seed` permutation: nested across N per seed."""
    if not 1 <= n_labels <= len(train_records):
        raise ValueError(f"n_labels {n_labels} must be between 1 and {len(train_records)}")
    order = np.random.default_rng(seed).permutation(len(train_records))
    return sorted((train_records[i] for i in order[:n_labels]), key=lambda r: r.name)
