"""Named, documented model files shipped in `saved_models/`.

The list of presets is data: each preset is a folder `saved_models/NAME/`
holding the model file and its card (`card.json`: at least `file` and
`sha256`, plus the data, licences, the command that rebuilt it and its
validation metrics). A name that is not a preset is taken as a path.

A preset's file is checked against the SHA-256 in its card before it is
loaded: a file swapped or corrupted after release is refused.
"""

import hashlib
import json
from pathlib import Path

from cm_unet_keras.data.errors import InvalidInputError

SAVED_MODELS = Path(__file__).resolve().parents[2] / "saved_models"


def available_presets(root=None):
    """Names of the presets found in `saved_models/`."""
    root = Path(root or SAVED_MODELS)
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/card.json"))


def preset_card(name, root=None):
    """The card (a dict) of preset `name`."""
    card = Path(root or SAVED_MODELS) / name / "card.json"
    if not card.is_file():
        raise InvalidInputError(name, f"no such preset; available: {available_presets(root)}")
    try:
        return json.loads(card.read_text())
    except ValueError as error:
        raise InvalidInputError(card, f"unreadable model card: {error}") from error


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_preset_path(name, root=None):
    """The model file of preset `name`, after checking its SHA-256."""
    root = Path(root or SAVED_MODELS)
    card = preset_card(name, root)
    for key in ("file", "sha256"):
        if key not in card:
            raise InvalidInputError(root / name / "card.json", f"model card lacks {key!r}")
    path = root / name / card["file"]
    if not path.is_file():
        raise InvalidInputError(path, f"model file of preset {name!r} is missing")
    actual = file_sha256(path)
    if actual != card["sha256"]:
        raise InvalidInputError(
            path, f"SHA-256 {actual} does not match its card ({card['sha256']}): refused, the file was changed"
        )
    return path


def resolve_model_path(name_or_path, root=None):
    """A model file path from a path or a preset name (checksum-verified)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if str(name_or_path) in available_presets(root):
        return verified_preset_path(str(name_or_path), root)
    raise InvalidInputError(
        name_or_path, f"neither an existing file nor a preset (presets: {available_presets(root) or 'none'})"
    )


def from_preset(name, root=None):
    """The model of preset `name`, checksum-verified and loaded with `safe_mode`.

    A fine-tuned preset (a `.keras` U-Net) is returned as saved. A preset
    whose card says `"kind": "pretrained"` holds `pretrained.weights.h5`
    and `pretrainer.json` beside it: the pretrainer is rebuilt from the JSON
    (no code runs), its weights loaded, and its U-Net returned (encoder and
    decoder pretrained; the segmentation head was never trained).

    Args:
        name: a preset name (see `available_presets`) or a `.keras` path.
        root: the presets folder (default `saved_models/`).

    Returns:
        A `CMUNet`.

    Example:

    ```python
    model = from_preset("cmunet_small_xca")
    ```
    """
    import keras

    path = Path(resolve_model_path(name, root))
    card = preset_card(name, root) if str(name) in available_presets(root) else {}
    if card.get("kind") == "pretrained" or path.name.endswith(".weights.h5"):
        return _pretrained_unet(path)
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except (ValueError, OSError, KeyError) as error:
        raise InvalidInputError(path, f"refused or unreadable model file: {error}") from error


def _pretrained_unet(weights_path):
    from cm_unet_keras.models.pretrainer import PRETRAINER_CONFIG, ContrastiveMaskedPretrainer

    config_path = Path(weights_path).parent / PRETRAINER_CONFIG
    if not config_path.is_file():
        raise InvalidInputError(weights_path, f"no {PRETRAINER_CONFIG} beside it: cannot rebuild the pretrainer")
    try:
        pretrainer = ContrastiveMaskedPretrainer.from_config(json.loads(config_path.read_text()))
        pretrainer.load_weights(weights_path)
    except (ValueError, TypeError, OSError, KeyError) as error:
        raise InvalidInputError(weights_path, f"cannot load pretrained weights: {error}") from error
    return pretrainer.unet
