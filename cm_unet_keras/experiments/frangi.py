"""The classical reference: a Frangi vesselness filter (scikit-image,
`black_ridges=True`: vessels are dark) whose scales and threshold are
grid-searched for the best mean Dice on the same labelled pairs as the
U-Nets, under the U-Nets' field-of-view rule."""

import numpy as np

from cm_unet_keras.data.layouts import read_pair
from cm_unet_keras.evaluation.metrics import dice, segmentation_metrics, summarize

# The baseline's name in the study's records (beside the inits).
FRANGI = "frangi"


def frangi_vesselness(angiogram, sigmas):
    """Frangi vesselness of dark vessels, scaled to [0, 1], under the U-Nets' rules.

    The filter sees the angiogram as the U-Nets do (z-scored inside the field
    of view, 0 outside, `preprocess_angiogram`) and its response is cleared
    outside the same `prediction_region` as theirs (issue 12: one
    field-of-view rule for every method in the study).
    """
    from skimage.filters import frangi

    from cm_unet_keras.data.normalize import prediction_region
    from cm_unet_keras.data.pipeline import preprocess_angiogram

    normalized, fov = preprocess_angiogram(np.asarray(angiogram, np.float32), return_fov=True)
    response = frangi(normalized[..., 0], sigmas=list(sigmas), black_ridges=True)
    response = response * prediction_region(fov).numpy()[..., 0]
    return response / max(float(response.max()), 1e-12)


def tune_frangi(records, sigma_sets, thresholds):
    """Grid-search Frangi scales and threshold for the best mean Dice on `records`.

    Returns:
        {"sigmas", "threshold", "train_dice"}.
    """
    pairs = [read_pair(record) for record in records]
    best = {"sigmas": None, "threshold": None, "train_dice": -1.0}
    for sigmas in sigma_sets:
        responses = [frangi_vesselness(angiogram, sigmas) for angiogram, _ in pairs]
        for threshold in thresholds:
            score = float(np.mean([dice(r >= threshold, m) for r, (_, m) in zip(responses, pairs)]))
            if score > best["train_dice"]:
                best = {"sigmas": list(sigmas), "threshold": float(threshold), "train_dice": score}
    return best


def evaluate_frangi(params, records):
    """An `evaluate_model`-style report of the tuned Frangi filter on `records`."""
    per_image = []
    for record in records:
        angiogram, vessel_mask = read_pair(record)
        prediction = frangi_vesselness(angiogram, params["sigmas"]) >= params["threshold"]
        per_image.append({"name": record.name, **segmentation_metrics(prediction, vessel_mask)})
    report = summarize(per_image)
    report["per_image"] = per_image
    return report
