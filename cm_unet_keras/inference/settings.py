"""How a model expects to be used, read from beside its file.

A model trained with CLAHE must be fed CLAHE-equalised angiograms, and its
mask threshold is part of the model. `predict`, `evaluate`, `export` and the
Python API all take these settings from here: a preset's `card.json`, or a
fine-tuning run's `config.yaml` (and `split.json`), unless the caller says
otherwise.
"""

import dataclasses
import json
from pathlib import Path

from cm_unet_keras.config import FinetuneConfig, read_recipe
from cm_unet_keras.models.pretrainer import PRETRAINER_CONFIG

# What segment, predict and export say of a model whose head was never trained.
PRETRAINED_ONLY = (
    "pretrained only, its segmentation head was never trained: fine-tune it first "
    "(cm-unet finetune --init ...) or use a fine-tuned model such as cmunet_small_xca"
)


@dataclasses.dataclass(frozen=True)
class SegmentationSettings:
    """How a loaded model segments: what `CMUNet.segment` uses unless told otherwise.

    Args:
        threshold: the mask threshold on the vessel probability.
        clahe: CLAHE before normalisation, as the model was trained.
        source: the file the settings were read from (a card or a run's
            `config.yaml`), or None for the defaults.
        pretrained_only: the model comes from pretraining (a pretrained
            preset or a pretraining run): its segmentation head was never
            trained, so it cannot segment.
    """

    threshold: float
    clahe: bool
    source: str | None = None
    pretrained_only: bool = False

    def overridden(self, threshold=None, clahe=None):
        """These settings with the caller's `threshold` and `clahe` (None: keep)."""
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return dataclasses.replace(self, threshold=threshold, clahe=self.clahe if clahe is None else bool(clahe))


def training_context(model_path):
    """How the model at `model_path` was trained, from the files beside it.

    Returns:
        dict with `source` (the file read, or None), `clahe`, `threshold`
        (None if not recorded), `training_data` (a note, or None) and
        `pretrained_only` (a pretrained preset's card, or a pretraining run).
    """
    folder = Path(model_path).parent
    card, config = folder / "card.json", folder / "config.yaml"
    # Beside a pretraining run's weights: a U-Net whose head was never trained.
    pretrained_only = (folder / PRETRAINER_CONFIG).is_file()
    if card.is_file():
        values = json.loads(card.read_text())
        # A fine-tuned preset's card records its training configuration.
        values = {**values.get("training", {}).get("finetune_config", {}), **values}
        source = card
        pretrained_only = pretrained_only or values.get("kind") == "pretrained"
    elif config.is_file():
        values = read_recipe(config)
        source = config
    else:
        return {"source": None, "clahe": False, "threshold": None, "training_data": None,
                "pretrained_only": pretrained_only}
    training_data = values.get("training_data")
    split = folder / "split.json"
    if training_data is None and split.is_file():
        names = json.loads(split.read_text())
        training_data = (
            f"fine-tuning run {folder.name}: {len(names.get('train', []))} training and "
            f"{len(names.get('val', []))} validation angiograms (split.json)"
        )
    return {
        "source": str(source),
        "clahe": bool(values.get("clahe", False)),
        "threshold": values.get("threshold"),
        "training_data": training_data,
        "pretrained_only": pretrained_only,
    }


def resolve_settings(model_path, threshold=None, clahe=None):
    """The `(threshold, clahe)` to use the model at `model_path` with.

    Args:
        model_path: the `.keras` file (a preset's or a run's).
        threshold: the caller's threshold, or None for the recorded one
            (else `FinetuneConfig.threshold`).
        clahe: the caller's choice, or None for the recorded one.

    Returns:
        `(threshold, clahe, source)`: `source` is the file the recorded
        settings came from, or None.
    """
    context = training_context(model_path)
    if threshold is None:
        threshold = context["threshold"]
    if threshold is None:
        threshold = FinetuneConfig.threshold
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold, context["clahe"] if clahe is None else bool(clahe), context["source"]


def segmentation_settings(model_path):
    """The `SegmentationSettings` recorded beside the model at `model_path`."""
    threshold, clahe, source = resolve_settings(model_path)
    return SegmentationSettings(threshold, clahe, source, training_context(model_path)["pretrained_only"])
