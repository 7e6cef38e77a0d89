"""Scoring a model on labelled angiograms, at native resolution."""

import json
from pathlib import Path

from cm_unet_keras.core.files import json_safe
from cm_unet_keras.data.layouts import read_pair
from cm_unet_keras.evaluation.metrics import METRIC_KEYS, segmentation_metrics, summarize
from cm_unet_keras.inference.predict import DEFAULT_THRESHOLD, segment_angiogram, settings_of
from cm_unet_keras.models.segmentation import convention_model


def evaluate_model(model, records, threshold=DEFAULT_THRESHOLD, clahe=False, tta=False, convention=None):
    """Per-image and summary metrics of `model` on labelled `records`.

    Each angiogram is segmented whole, at its own size, and thresholded at
    `threshold` (`tta`: flip test-time augmentation); metrics follow `cm_unet_keras.evaluation.metrics`.
    `convention` picks the output scored (`models.segmentation.convention_model`;
    None: "tree" for a model with one output per convention).

    Returns:
        `{"n_images", "mean", "std", "per_image": [{"name", <metrics>}]}`.

    Raises:
        InvalidInputError: `model` is pretrained only (loaded from a
            pretraining run or a pretrained preset): its head was never
            trained, so its scores would be noise.
    """
    settings_of(model, "; its scores would be noise")
    model = convention_model(model, convention)
    per_image = []
    for record in records:
        angiogram, vessel_mask = read_pair(record)
        probability = segment_angiogram(model, angiogram, clahe, tta)
        metrics = segmentation_metrics(probability >= threshold, vessel_mask)
        per_image.append({"name": record.name, **metrics})
    report = summarize(per_image)
    report["per_image"] = per_image
    return report


def write_report(report, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(json_safe(report), indent=2))


def format_table(report):
    """A plain-text table of mean +- std per metric."""
    lines = [f"{'metric':<17} {'mean':>8} {'std':>8}   (n = {report['n_images']})"]
    for key in METRIC_KEYS:
        mean, std = report["mean"][key], report["std"][key]
        lines.append(f"{key:<17} {mean:>8.4f} {std:>8.4f}")
    return "\n".join(lines)


def format_markdown(report):
    """The same table in Markdown."""
    lines = ["| metric | mean | std |", "|---|---|---|"]
    for key in METRIC_KEYS:
        lines.append(f"| {key} | {report['mean'][key]:.4f} | {report['std'][key]:.4f} |")
    return "\n".join(lines)
