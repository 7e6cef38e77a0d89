"""Named, documented model files shipped in `saved_models/`.

The list of presets is data: each preset is a folder `saved_models/NAME/`
holding the model file and its card (`card.json`). A name that is not a
preset is taken as a path.
"""

import json
from pathlib import Path

from cm_unet_keras.data.errors import InvalidInputError

SAVED_MODELS = Path(__file__).resolve().parents[2] / "saved_models"


def available_presets():
    """Names of the presets found in `saved_models/`."""
    if not SAVED_MODELS.is_dir():
        return []
    return sorted(p.parent.name for p in SAVED_MODELS.glob("*/card.json"))


def preset_card(name):
    """The card (a dict) of preset `name`."""
    card = SAVED_MODELS / name / "card.json"
    if not card.is_file():
        raise InvalidInputError(name, f"no such preset; available: {available_presets()}")
    return json.loads(card.read_text())


def resolve_model_path(name_or_path):
    """A model file path from a path or a preset name."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if name_or_path in available_presets():
        card = preset_card(name_or_path)
        return SAVED_MODELS / name_or_path / card["file"]
    raise InvalidInputError(
        name_or_path, f"neither an existing file nor a preset (presets: {available_presets() or 'none'})"
    )
