"""Named, documented model files shipped in `saved_models/`: finding, checking and publishing them.

The list of presets is data: each preset is a folder `saved_models/NAME/`
holding the model file and its card (`card.json`: at least `file` and
`sha256`, plus its intended use, limitations, the data and the limits
their licences put on the weights, the command that rebuilt it and its
validation metrics), rendered for people as `README.md` beside it
(`render_card`; edit the card, never the README). A name that is not a
preset is taken as a path.

A preset's file is checked against the SHA-256 in its card before it is
loaded: a file swapped or corrupted after release is refused. Loading the
model is `cm_unet_keras.models.loading.load_preset`; this module reads and
writes files only (no Keras).
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import publish_folder

# At most this many bytes per shipped file (the repository's rule for committed models).
MAX_PRESET_BYTES = 16 * 1024 * 1024
ENV_VAR = "CM_UNET_SAVED_MODELS"


def default_root():
    """Where presets live: `$CM_UNET_SAVED_MODELS` if set, else the copy
    installed inside the package (`cm_unet_keras/saved_models/`, put there
    by `setup.py` when a wheel is built), else `saved_models/` of the source
    checkout (editable installs)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    packaged = Path(__file__).resolve().parents[1] / "saved_models"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "saved_models"


def available_presets(root=None):
    """Names of the presets found in `saved_models/`."""
    root = Path(root or default_root())
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/card.json"))


def preset_card(name, root=None):
    """The card (a dict) of preset `name`."""
    card = Path(root or default_root()) / name / "card.json"
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
    root = Path(root or default_root())
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


def is_pretrained_preset(name, root=None):
    """True if `name` is a preset whose card says `"kind": "pretrained"`
    (encoder and decoder pretrained, segmentation head never trained)."""
    if Path(str(name)).exists() or str(name) not in available_presets(root):
        return False
    return preset_card(name, root).get("kind") == "pretrained"


def write_preset(name, files, card, root=None, overwrite=False):
    """Publish a preset folder `root/name/`: the files, and `card.json` with
    `card` plus the SHA-256 of `card["file"]`.

    The folder is assembled beside its destination and renamed into place,
    so a preset is either the old one or the new one, never half of each;
    an existing preset is replaced only with `overwrite=True`.

    `README.md`, the card rendered by `render_card`, is written beside it.

    Args:
        name: the preset name (a folder name).
        files: paths copied into the folder; `card["file"]` must be one of them.
        card: the model card (JSON-serialisable); `file` is required, and
            `intended_use`, `limitations` and `licences` belong on every
            published card.
        root: the presets folder (default `saved_models/`).
        overwrite: replace an existing preset of that name.

    Returns:
        The path of the written `card.json`.
    """
    root = Path(root or default_root())
    destination = root / name
    if destination.exists() and not overwrite:
        raise InvalidInputError(destination, "preset exists: pass overwrite=True to replace it")
    names = [Path(f).name for f in files]
    if card.get("file") not in names:
        raise ValueError(f"card['file'] must name one of {names}")
    for file in files:
        size = Path(file).stat().st_size
        if size > MAX_PRESET_BYTES:
            raise InvalidInputError(file, f"{size / 2**20:.1f} MB: a preset file may not exceed 16 MB")

    def fill(staging):
        for file in files:
            shutil.copyfile(file, staging / Path(file).name)
        full = {**card, "sha256": file_sha256(staging / card["file"])}
        (staging / "card.json").write_text(json.dumps(full, indent=2) + "\n")
        (staging / CARD_README).write_text(render_card(full))

    publish_folder(destination, fill, overwrite)
    return destination / "card.json"


CARD_README = "README.md"


def render_card(card):
    """The model card as Markdown, for `README.md` beside `card.json`.

    Sections: what the model is, intended use (and what it is not for),
    limitations, training data and the limits their licences put on the
    weights, validation, input and output, how it was trained and rebuilt.
    Fields a card lacks are left out.
    """
    lines = [f"# {card.get('name', 'model')}", "", card.get("description", ""), ""]
    architecture = card.get("architecture", {})
    facts = [("kind", card.get("kind")), ("file", f"`{card['file']}`" if "file" in card else None),
             ("SHA-256", f"`{card['sha256']}`" if "sha256" in card else None),
             ("architecture", ", ".join(f"{k} {v}" for k, v in architecture.items()) or None),
             ("mask conventions", conventions_summary(card) if "conventions" in card else None),
             ("package version", card.get("package_version"))]
    lines += ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in facts if value is not None] + [""]
    for title, key in (("Intended use", "intended_use"), ("Not intended for", "not_intended_for"),
                       ("Mask convention: what it calls vessel", "mask_convention"),
                       ("Limitations", "limitations"), ("Licences: what they allow the weights", "licences")):
        if card.get(key):
            lines += [f"## {title}", "", *_markdown_items(card[key]), ""]
    if card.get("data"):
        lines += ["## Training data", ""] + [f"- **{kind}**: {text}" for kind, text in card["data"].items()] + [""]
    metrics = card.get("validation_metrics")
    lines += ["## Validation", ""]
    if isinstance(metrics, dict):
        lines += [f"On {metrics['on']}." if metrics.get("on") else "", ""]
        if "mean" in metrics:
            lines += ["| metric | mean | std |", "|---|---|---|"]
            lines += [f"| {key} | {value:g} | {metrics.get('std', {}).get(key, float('nan')):g} |"
                      for key, value in metrics["mean"].items()]
            lines.append("")
        if "sources" in metrics:  # one row per source: mean +- std over its images
            keys = list(next(iter(metrics["sources"].values()))["mean"])
            lines += ["| source | images | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
            for source, result in metrics["sources"].items():
                cells = [f"{result['mean'][key]:.3f} +- {result['std'][key]:.3f}" for key in keys]
                lines.append(f"| {source} | {result.get('images', '?')} | " + " | ".join(cells) + " |")
            lines.append("")
        if metrics.get("caveat"):
            lines += [f"Caveat: {metrics['caveat']}.", ""]
    else:
        lines += [str(metrics or "none recorded"), ""]
    if card.get("input"):
        lines += ["## Input and output", "", card["input"], ""]
    if card.get("training"):
        lines += ["## Training", "", "```json", json.dumps(card["training"], indent=2), "```", ""]
    if card.get("rebuild"):
        lines += ["## Rebuild", "", f"`{card['rebuild']}`", ""]
    lines += ["---", "Rendered from `card.json` by `cm_unet_keras.models.presets.render_card`: edit the card, "
              "then `write_card_readme(folder)`.", ""]
    return "\n".join(lines)


def conventions_summary(card):
    """The mask conventions a card lists (`data.conventions`), in words."""
    conventions = card.get("conventions")
    if conventions is None:
        return "not recorded"
    return ", ".join(conventions) if conventions else "none (head never trained)"


def validation_summary(card):
    """One line of a card's validation numbers, for `cm-unet presets`."""
    metrics = card.get("validation_metrics")
    if not isinstance(metrics, dict):
        return "no head (fine-tune it: --init)"
    if "sources" in metrics:
        parts = []
        for source, result in metrics["sources"].items():
            # Sources with partial masks are read by their sensitivity (see the card),
            # unless the card names the metric (ARCADE's protocol: the published Dice).
            key = metrics.get("headline", {}).get(source) or ("sensitivity" if "arcade" in source else "dice")
            parts.append(f"{source} {key} {result['mean'][key]:.3f}")
        return "validation " + ", ".join(parts)
    dice = metrics.get("mean", {}).get("dice")
    return f"validation Dice {dice:.3f}" if dice is not None else "no head (fine-tune it: --init)"


def _markdown_items(value):
    if isinstance(value, (list, tuple)):
        return [f"- {item}" for item in value]
    return [str(value)]


def write_card_readme(folder):
    """(Re)write `folder/README.md` from `folder/card.json`; returns its path."""
    folder = Path(folder)
    card = json.loads((folder / "card.json").read_text())
    path = folder / CARD_README
    path.write_text(render_card(card))
    return path
