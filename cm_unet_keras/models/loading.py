"""Loading a U-Net: a `.keras` file, a preset, or a pretraining run.

Every path that loads a model goes through here: inference and export
(`load_model_file`; a `.keras` U-Net alone: `models.saving.load_unet`),
fine-tuning's `--init` (`load_pretrainer` for a pretraining run), the
presets (`load_preset`). Files are loaded with
Keras `safe_mode` (a `.keras` file carrying a `Lambda` layer is refused),
and a pretrainer is rebuilt from its JSON config: no code from a file runs.
"""

import json
from pathlib import Path

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.models.presets import resolve_model_path
from cm_unet_keras.models.pretrainer import ContrastiveMaskedPretrainer
from cm_unet_keras.models.saving import PRETRAINED_WEIGHTS, PRETRAINER_CONFIG, load_unet


def pretrained_weights_path(source):
    """`source` as the weights of a pretraining run, or None if it is something else.

    Args:
        source: a pretraining run folder (holding `pretrained.weights.h5`),
            a `.weights.h5` file, or anything else (a `.keras` path, a
            preset name: None).

    Raises:
        InvalidInputError: a folder without `pretrained.weights.h5`, or a
            `.weights.h5` file that does not exist.
    """
    path = Path(str(source))
    if path.is_dir():
        weights = path / PRETRAINED_WEIGHTS
        if not weights.is_file():
            raise InvalidInputError(
                path, f"is a folder without {PRETRAINED_WEIGHTS}: not a pretraining run (give a model file)"
            )
        return weights
    if path.name.endswith(".weights.h5"):
        if not path.is_file():
            raise InvalidInputError(path, "pretrained weights file not found")
        return path
    return None


def load_pretrainer(weights_path):
    """The `ContrastiveMaskedPretrainer` of a pretraining run, with its weights.

    It is rebuilt from `pretrainer.json` beside the weights (its
    `get_config()`), then `weights_path` is loaded into it.
    """
    weights_path = Path(weights_path)
    config_path = weights_path.parent / PRETRAINER_CONFIG
    if not config_path.is_file():
        raise InvalidInputError(
            weights_path, f"no {PRETRAINER_CONFIG} beside it: cannot tell the pretrained U-Net's shape"
        )
    try:
        pretrainer = ContrastiveMaskedPretrainer.from_config(json.loads(config_path.read_text()))
    except (ValueError, TypeError) as error:
        raise InvalidInputError(config_path, f"not a pretrainer configuration: {error}") from error
    try:
        pretrainer.load_weights(weights_path)
    except (ValueError, OSError, KeyError) as error:
        raise InvalidInputError(weights_path, f"cannot load pretrained weights: {error}") from error
    return pretrainer


def load_model_file(path):
    """The U-Net in a model file: a `.keras` file as saved, or the U-Net of
    a pretraining run's `pretrained.weights.h5` (encoder and decoder
    pretrained; its segmentation head was never trained)."""
    path = Path(path)
    if path.name.endswith(".weights.h5"):
        return load_pretrainer(path).unet
    return load_unet(path)


def load_preset(name, root=None):
    """The U-Net of preset `name`, checksum-verified and loaded with `safe_mode`.

    A `.keras` preset is returned as saved: a fine-tuned U-Net, or, for a
    card that says `"kind": "pretrained"`, the U-Net after pretraining
    (encoder and decoder pretrained; its segmentation head was never
    trained, so fine-tune it before use). A preset stored as
    `pretrained.weights.h5` with `pretrainer.json` beside it has its
    pretrainer rebuilt from the JSON, its weights loaded, and its U-Net
    returned.

    Args:
        name: a preset name (see `presets.available_presets`) or a model path.
        root: the presets folder (default `saved_models/`).

    Returns:
        A `CMUNet`.

    Example:

    ```python
    model = load_preset("cmunet_small_xca")
    ```
    """
    return load_model_file(resolve_model_path(name, root))
