"""`export_model`: a `.keras` U-Net (or preset) -> a served model version.

What the export needs to know about training is read from beside the model
file: a preset's `card.json`, or a fine-tuning run's `config.yaml` and
`split.json`. A model trained with CLAHE is refused: CLAHE runs in OpenCV on
the host and cannot be put in the graph, and serving such a model on
non-equalised angiograms would silently give worse masks.
"""

import datetime
import hashlib
from pathlib import Path

import keras
import tensorflow as tf

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.normalize import FOV_MARGIN
from cm_unet_keras.export.layout import check_version_free, publish_version, version_dir
from cm_unet_keras.export.serving import (
    ANGIOGRAM_INPUT,
    IMAGE_BYTES_INPUT,
    IMAGE_BYTES_SIGNATURE,
    SERVING_SIGNATURE,
    write_saved_model,
)
from cm_unet_keras.models.segmentation import (
    PRETRAINED_ONLY,
    convention_model,
    model_conventions,
    resolve_settings,
    segmentation_settings,
    training_context,
)
from cm_unet_keras.models.saving import float32_policy, load_unet
from cm_unet_keras.models.presets import resolve_model_path
from cm_unet_keras.version import __version__

FORMATS = ("saved_model", "onnx")


def export_metadata(model, model_path, threshold, context, training_data, export_format, tta=False):
    """The metadata asset: what was exported, from what, and how to feed it."""
    return {
        "package": "cm-unet-keras",
        "package_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "format": export_format,
        "source_model": str(model_path),
        "source_sha256": hashlib.sha256(Path(model_path).read_bytes()).hexdigest(),
        "model": {
            "class": type(model).__name__,
            "depth": model.depth,
            "base_filters": model.base_filters,
            "parameters": int(model.count_params()),
        },
        "threshold": threshold,
        "convention": (model_conventions(model) or ("not recorded",))[0],
        "preprocessing": {
            "normalization": "z-score within the field of view, per image (normalize_angiogram), "
            "in the graph",
            "clahe": False,
            "padding": f"mirrored, split between both sides, to a multiple of {2 ** model.depth}; cropped back; "
            "in the graph",
        },
        "postprocessing": f"probability set to 0 outside the field of view shrunk by {FOV_MARGIN} px, in the graph",
        "test_time_augmentation": "mean of the four flips (4 forward passes)" if tta else "none",
        "training_config": context["source"],
        "training_data": training_data or context["training_data"] or "not recorded",
        "inputs": _documented_inputs(export_format),
        "outputs": {"probability": "float32 [batch, H, W, 1]", "mask": "uint8 [batch, H, W, 1], 1 = vessel"},
    }


def _documented_inputs(export_format):
    inputs = {SERVING_SIGNATURE: {ANGIOGRAM_INPUT: "float32 [batch, H, W, 1], raw intensity"}}
    if export_format == "saved_model":
        inputs[IMAGE_BYTES_SIGNATURE] = {IMAGE_BYTES_INPUT: "string [batch], encoded PNG/JPEG"}
    return inputs


def export_model(
    model, base_dir, name, version, export_format="saved_model", threshold=None,
    training_data=None, overwrite=False, tta=False, convention=None,
):
    """Export a `.keras` U-Net (path or preset name) as `BASE/NAME/VERSION`.

    Args:
        model: `.keras` path or preset name.
        base_dir: model base path (TF Serving's `--model_base_path` parent).
        name: model name.
        version: non-negative integer version.
        export_format: "saved_model" (TF Serving) or "onnx".
        threshold: mask threshold; default: the one recorded at training,
            else `FinetuneConfig.threshold`.
        training_data: a note on the training data for the metadata;
            default: from the card or run folder.
        overwrite: replace an existing version.
        tta: put flip test-time augmentation in the graph (4x the compute).
        convention: the mask convention the graph segments in: the output
            of a model with one per convention that is exported (None:
            "tree"); a one-output model accepts only its own
            (`models.segmentation.convention_model`). The outputs stay
            `[batch, H, W, 1]`.

    Returns:
        The `Path` of the written version.

    Raises:
        InvalidInputError: a pretrained-only model (its head was never
            trained) or one trained with CLAHE; nothing is written.
        ValueError: a convention the model does not have; nothing is written.
    """
    if export_format not in FORMATS:
        raise ValueError(f"export_format must be one of {FORMATS}, got {export_format!r}")
    check_version_free(version_dir(base_dir, name, version), overwrite)
    model_path = Path(resolve_model_path(model))
    context = training_context(model_path)
    if context["pretrained_only"]:
        raise InvalidInputError(model_path, PRETRAINED_ONLY + "; an export of it would serve noise")
    if context["clahe"]:
        raise InvalidInputError(
            model_path,
            f"trained with CLAHE ({context['source']}), which runs in OpenCV on the host and cannot "
            "be exported in the graph; retrain without --clahe to serve it",
        )
    threshold, _, _ = resolve_settings(model_path, threshold)
    with float32_policy():  # never export bfloat16 convolutions (ONNX Runtime rejects them)
        unet = load_unet(model_path)
        unet.segmentation_settings = segmentation_settings(model_path)
        unet = convention_model(unet, convention)
    metadata = export_metadata(unet, model_path, threshold, context, training_data, export_format, tta)
    if export_format == "onnx":
        from cm_unet_keras.export.onnx_export import write_onnx as write
    else:
        write = write_saved_model
    return publish_version(
        base_dir, name, version, lambda folder: write(unet, folder, threshold, metadata, tta=tta), overwrite
    )
