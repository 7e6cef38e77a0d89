"""Fixed, written-down splits of a labelled dataset.

A split file is JSON: `{"seed": int, "source": str, "train": [names],
"holdout": [names]}`. Writing the split once and naming it in every command
keeps held-out angiograms out of training and of model selection, and lets
anyone rerun the same experiment.
"""

import json
from pathlib import Path

import numpy as np

from cm_unet_keras.core.errors import InvalidInputError


def make_split(records, holdout, seed, source=""):
    """Draw `holdout` records aside with `seed`; the rest is `train`."""
    if not 0 < holdout < len(records):
        raise ValueError(f"holdout must be between 1 and {len(records) - 1}, got {holdout}")
    order = np.random.default_rng(seed).permutation(len(records))
    held = {records[i].name for i in order[:holdout]}
    return {
        "seed": int(seed),
        "source": str(source),
        "train": [r.name for r in records if r.name not in held],
        "holdout": [r.name for r in records if r.name in held],
    }


def write_split(split, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(split, indent=2))


def select_part(records, split_path, part):
    """The records named in part `part` of the split file, in file order."""
    try:
        split = json.loads(Path(split_path).read_text())
    except (OSError, ValueError) as error:
        raise InvalidInputError(split_path, f"cannot read split file: {error}") from error
    if part not in split:
        raise InvalidInputError(split_path, f"has no part {part!r} (parts: {[k for k in split if isinstance(split[k], list)]})")
    by_name = {record.name: record for record in records}
    missing = [name for name in split[part] if name not in by_name]
    if missing:
        raise InvalidInputError(split_path, f"names {missing[:5]} of part {part!r} are not in the dataset")
    return [by_name[name] for name in split[part]]
