"""U-Net files: the names of a pretraining run's files, loading a `.keras`
U-Net with `safe_mode`, and building models in float32.

A floor below the network's users: `CMUNet.from_preset` loads through
here without importing the pretrainer (which builds on the U-Net);
`models.loading` adds pretraining runs on top.
"""

import contextlib
from pathlib import Path

import keras

from cm_unet_keras.core.errors import InvalidInputError

# The two files of a pretraining run (and of a preset stored as one).
PRETRAINED_WEIGHTS = "pretrained.weights.h5"
PRETRAINER_CONFIG = "pretrainer.json"


@contextlib.contextmanager
def float32_policy():
    """Build or load models in float32 inside this block, then restore the
    global policy. A `.keras` file does not record its compute dtype: what
    is saved, exported or served is built here, whatever training used."""
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


def load_unet(path):
    """Load a `.keras` U-Net with `safe_mode` (no code from the file runs),
    built in float32 whatever policy an earlier job in this process left set
    (a `finetune` call leaves mixed_bfloat16 on such CPUs): a loaded model
    computes in float32, and `precision=` makes any faster copy of it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "model file not found")
    try:
        with float32_policy():
            return keras.models.load_model(path, safe_mode=True, compile=False)
    except ValueError as error:
        raise InvalidInputError(path, f"refused or unreadable model file: {error}") from error
    except (OSError, KeyError) as error:
        raise InvalidInputError(path, f"not a readable .keras model file: {error}") from error
