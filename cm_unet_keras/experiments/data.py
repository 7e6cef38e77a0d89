"""The data the study, the recipes and the benchmarks share: the 30 / 10
split of the XCA (CIMAT) pairs, ARCADE's 140 / 60 split, XCAD's 2 pairs,
nested labelled subsets and the selection pairs beside them, and the
unlabeled pool for pretraining.

The split files are the source checkout's (`recipes/xca_split.json`,
`recipes/arcade_split.json`); the functions take the folder that holds them.
"""

from pathlib import Path

import numpy as np

from cm_unet_keras.data.layouts import index_images_masks, index_pairs, index_unlabeled
from cm_unet_keras.data.splits import select_part

# The labelled public sources, each scored on its validation part.
SOURCES = ("cimat", "arcade", "xcad")


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


def selection_split(train_records, n_labels, seed):
    """(labelled, selection): `labelled_subset`, and the other training
    pairs, on which a screen chooses a setting; the holdout is never read."""
    labelled = labelled_subset(train_records, n_labels, seed)
    chosen = {record.name for record in labelled}
    return labelled, [record for record in train_records if record.name not in chosen]


def cimat_parts(data_root, recipes):
    """(30 training, 10 validation) CIMAT records of `recipes/xca_split.json`."""
    return study_data(data_root, Path(recipes) / "xca_split.json")


def arcade_parts(data_root, recipes):
    """(140 training, 60 validation) ARCADE records (`arcade_vessels/val`,
    main segments only) of `recipes/arcade_split.json`."""
    folder = Path(data_root) / "arcade_vessels" / "val"
    records = index_images_masks(folder / "images", folder / "masks")
    split = Path(recipes) / "arcade_split.json"
    return select_part(records, split, "train"), select_part(records, split, "holdout")


def xcad_pairs(data_root):
    """XCAD's 2 labelled pairs (`xcad_sample/test`): too few to split."""
    folder = Path(data_root) / "xcad_sample" / "test"
    return index_images_masks(folder / "images", folder / "masks")


def target_parts(target, data_root, recipes):
    """(training, validation) records of a target source, "cimat" or "arcade"."""
    parts = {"cimat": cimat_parts, "arcade": arcade_parts}
    if target not in parts:
        raise ValueError(f"unknown target {target!r}: one of {', '.join(parts)}")
    return parts[target](data_root, recipes)


def source_records(source, data_root, recipes):
    """The labelled validation records of one of `SOURCES` (XCAD: both pairs)."""
    if source == "xcad":
        return xcad_pairs(data_root)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; sources: {', '.join(SOURCES)}")
    return target_parts(source, data_root, recipes)[1]
