"""Per-image segmentation metrics for vessel masks, and their summary.

Every metric takes ``(prediction, reference)``: two 2-D masks of the same
shape, given as bool, 0/1 or 0/255 arrays. Anything nonzero is vessel
(foreground); pass thresholded masks, not probability maps, since every
nonzero probability counts as vessel. A shape mismatch or an input that is
not 2-D raises ``ValueError``.

Conventions (these decide what an empty mask scores, so they are stated
once here and implemented exactly so):

* ``dice`` = 2|P∩L| / (|P|+|L|), ``iou`` = |P∩L| / |P∪L|. Two empty masks
  agree perfectly: 1.0. One empty and the other not: 0.0.
* ``sensitivity`` = TP / (TP+FN). With no vessel in the reference there is
  nothing to miss, so it is 1.0 whatever the prediction (false positives are
  charged to ``specificity``, ``dice`` and ``iou`` instead).
* ``specificity`` = TN / (TN+FP). With no background in the reference there
  is nothing to wrongly mark, so it is 1.0.
* ``cldice`` (Shit et al., CVPR 2021): with S(.) the skeleton from
  ``skimage.morphology.skeletonize``,
  Tprec = |S(P)∩L| / |S(P)|, Tsens = |S(L)∩P| / |S(L)|,
  clDice = 2·Tprec·Tsens / (Tprec+Tsens), and 0.0 when both are 0.
  Both masks empty: 1.0; exactly one empty: 0.0. Should a non-empty mask
  thin to an empty skeleton (skeletonize keeps isolated pixels, so this is a
  guard, not an expected case), the mask stands in for its own skeleton.
* ``centerline_recall`` = Tsens = |S(L)∩P| / |S(L)|: the share of the
  reference's skeleton that the prediction covers. Unlike ``sensitivity``
  it does not charge a thin prediction for a reference drawn wider than the
  lumen (ARCADE's segment polygons). With no vessel in the reference there
  is nothing to miss: 1.0 whatever the prediction (as ``sensitivity``); an
  empty prediction against a non-empty reference: 0.0.
* ``hd95``, in pixels: the boundary of a mask is ``mask XOR
  binary_erosion(mask)`` with the 4-connected cross as structuring element
  (medpy's ``connectivity=1``), so a boundary pixel is a vessel pixel with a
  4-neighbour in background; pixels on the image edge count as boundary. For
  each boundary pixel of one mask, its Euclidean distance to the nearest
  boundary pixel of the other (``scipy.ndimage.distance_transform_edt``).
  HD95 = max(p95(d(P->L)), p95(d(L->P))), each the 95th percentile with
  numpy's default linear interpolation. This is MONAI's
  ``compute_hausdorff_distance(percentile=95, directed=False)``; note that
  medpy's ``hd95`` instead takes one percentile of both directions pooled,
  which can give a slightly smaller value. Both masks empty: 0.0; exactly
  one empty: ``inf`` (no boundary to measure to), which ``summarize`` skips.

``summarize`` reports the population standard deviation (ddof=0), and
averages ``hd95`` over its finite values only; when no image has a finite
``hd95`` its mean and std are NaN (the JSON writer turns NaN into null).
"""

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

METRIC_KEYS = ("dice", "iou", "cldice", "centerline_recall", "sensitivity", "specificity", "hd95")

# 4-connected cross: erosion by it leaves a boundary that is 8-connected.
_BOUNDARY_STRUCTURE = ndimage.generate_binary_structure(2, 1)


def _as_vessel_masks(prediction, reference):
    """Checks shapes and returns both inputs as boolean vessel masks."""
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction and reference must have the same shape, got "
            f"prediction {prediction.shape} and reference {reference.shape}"
        )
    if prediction.ndim != 2:
        raise ValueError(
            f"masks must be 2-D (height, width), got shape {prediction.shape}"
        )
    return prediction != 0, reference != 0


def _confusion_counts(prediction, reference):
    true_positive = int(np.count_nonzero(prediction & reference))
    predicted = int(np.count_nonzero(prediction))
    actual = int(np.count_nonzero(reference))
    false_positive = predicted - true_positive
    false_negative = actual - true_positive
    true_negative = reference.size - true_positive - false_positive - false_negative
    return true_positive, false_positive, false_negative, true_negative


def _dice(tp, fp, fn):
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def _iou(tp, fp, fn):
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def _sensitivity(tp, fn):
    positives = tp + fn
    return 1.0 if positives == 0 else tp / positives


def _specificity(tn, fp):
    negatives = tn + fp
    return 1.0 if negatives == 0 else tn / negatives


def _centreline(mask):
    skeleton = skeletonize(mask)
    # A guard only: a blob too small to thin would be its own centreline.
    return skeleton if skeleton.any() else mask


def _skeleton_coverage(skeleton, mask):
    """Share of the (non-empty) `skeleton` that lies inside `mask`."""
    return np.count_nonzero(skeleton & mask) / np.count_nonzero(skeleton)


def _centerline_recall(prediction, reference, reference_skeleton=None):
    if not reference.any():
        return 1.0
    if reference_skeleton is None:
        reference_skeleton = _centreline(reference)
    return float(_skeleton_coverage(reference_skeleton, prediction))


def _cldice(prediction, reference, reference_skeleton=None):
    prediction_empty = not prediction.any()
    reference_empty = not reference.any()
    if prediction_empty and reference_empty:
        return 1.0
    if prediction_empty or reference_empty:
        return 0.0
    if reference_skeleton is None:
        reference_skeleton = _centreline(reference)
    topology_precision = _skeleton_coverage(_centreline(prediction), reference)
    topology_sensitivity = _skeleton_coverage(reference_skeleton, prediction)
    total = topology_precision + topology_sensitivity
    if total == 0:
        return 0.0
    return float(2.0 * topology_precision * topology_sensitivity / total)


def _boundary(mask):
    return mask & ~ndimage.binary_erosion(mask, structure=_BOUNDARY_STRUCTURE)


def _hd95(prediction, reference):
    prediction_empty = not prediction.any()
    reference_empty = not reference.any()
    if prediction_empty and reference_empty:
        return 0.0
    if prediction_empty or reference_empty:
        return math.inf
    prediction_boundary = _boundary(prediction)
    reference_boundary = _boundary(reference)
    # The EDT of the complement gives, at every pixel, the distance to the
    # nearest boundary pixel; sampling it on the other boundary is O(pixels).
    to_reference = ndimage.distance_transform_edt(~reference_boundary)
    to_prediction = ndimage.distance_transform_edt(~prediction_boundary)
    to_reference = to_reference[prediction_boundary]
    to_prediction = to_prediction[reference_boundary]
    return float(max(np.percentile(to_reference, 95), np.percentile(to_prediction, 95)))


def dice(prediction, reference):
    """Dice overlap; 1.0 for two empty masks, 0.0 when only one is empty."""
    prediction, reference = _as_vessel_masks(prediction, reference)
    tp, fp, fn, _ = _confusion_counts(prediction, reference)
    return float(_dice(tp, fp, fn))


def iou(prediction, reference):
    """Intersection over union; 1.0 for two empty masks, 0.0 when only one is."""
    prediction, reference = _as_vessel_masks(prediction, reference)
    tp, fp, fn, _ = _confusion_counts(prediction, reference)
    return float(_iou(tp, fp, fn))


def sensitivity(prediction, reference):
    """TP / (TP+FN); 1.0 when the reference has no vessel pixel."""
    prediction, reference = _as_vessel_masks(prediction, reference)
    tp, _, fn, _ = _confusion_counts(prediction, reference)
    return float(_sensitivity(tp, fn))


def specificity(prediction, reference):
    """TN / (TN+FP); 1.0 when the reference has no background pixel."""
    prediction, reference = _as_vessel_masks(prediction, reference)
    _, fp, _, tn = _confusion_counts(prediction, reference)
    return float(_specificity(tn, fp))


def cldice(prediction, reference):
    """Centreline Dice (Shit et al. 2021); see the module docstring."""
    prediction, reference = _as_vessel_masks(prediction, reference)
    return _cldice(prediction, reference)


def centerline_recall(prediction, reference):
    """Share of the reference's skeleton inside the prediction (clDice's
    Tsens); 1.0 when the reference has no vessel pixel."""
    prediction, reference = _as_vessel_masks(prediction, reference)
    return _centerline_recall(prediction, reference)


def hd95(prediction, reference):
    """95th-percentile Hausdorff distance in pixels; see the module docstring."""
    prediction, reference = _as_vessel_masks(prediction, reference)
    return _hd95(prediction, reference)


def segmentation_metrics(prediction, reference):
    """All metrics for one image pair, validating and binarising once.

    Args:
        prediction: predicted vessel mask, 2-D, nonzero is vessel.
        reference: ground-truth vessel mask of the same shape.

    Returns:
        A dict with keys ``dice``, ``iou``, ``cldice``,
        ``centerline_recall``, ``sensitivity``, ``specificity`` and
        ``hd95``, each a Python float.
    """
    prediction, reference = _as_vessel_masks(prediction, reference)
    tp, fp, fn, tn = _confusion_counts(prediction, reference)
    # Thinning is the slow part: the reference is skeletonised once for both.
    reference_skeleton = _centreline(reference) if reference.any() else None
    return {
        "dice": float(_dice(tp, fp, fn)),
        "iou": float(_iou(tp, fp, fn)),
        "cldice": _cldice(prediction, reference, reference_skeleton),
        "centerline_recall": _centerline_recall(prediction, reference, reference_skeleton),
        "sensitivity": float(_sensitivity(tp, fn)),
        "specificity": float(_specificity(tn, fp)),
        "hd95": _hd95(prediction, reference),
    }


def summarize(per_image):
    """Mean and population std (ddof=0) of each metric over images.

    ``hd95`` is averaged over its finite values only (an image where exactly
    one mask is empty has ``hd95 = inf``); if none is finite its mean and std
    are NaN.

    Args:
        per_image: a non-empty list of dicts as returned by
            ``segmentation_metrics``.

    Returns:
        ``{"n_images": int, "mean": {key: float}, "std": {key: float}}``.
    """
    per_image = list(per_image)
    if not per_image:
        raise ValueError("cannot summarize metrics over zero images")
    for index, metrics in enumerate(per_image):
        missing = [key for key in METRIC_KEYS if key not in metrics]
        if missing:
            raise ValueError(f"per-image metrics #{index} lack the keys {missing}")
    mean, std = {}, {}
    for key in METRIC_KEYS:
        values = np.array([metrics[key] for metrics in per_image], dtype=np.float64)
        if key == "hd95":
            values = values[np.isfinite(values)]
        if values.size == 0:
            mean[key] = std[key] = math.nan
        else:
            mean[key] = float(np.mean(values))
            std[key] = float(np.std(values, ddof=0))
    return {"n_images": len(per_image), "mean": mean, "std": std}
