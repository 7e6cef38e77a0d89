"""Metrics against hand-computed values, with the empty-mask conventions."""

import math
import time

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from cm_unet_keras.evaluation import metrics
from cm_unet_keras.evaluation.metrics import (
    METRIC_KEYS,
    centerline_recall,
    cldice,
    dice,
    hd95,
    iou,
    segmentation_metrics,
    sensitivity,
    specificity,
    summarize,
)


def _mask(shape, *pixels):
    mask = np.zeros(shape, dtype=bool)
    for row, col in pixels:
        mask[row, col] = True
    return mask


# Prediction (6 pixels) and reference (9 pixels) on a 5x5 grid:
#   prediction      reference
#   . . . . .       . . . . .
#   . P P P .       . . R R R
#   . P P P .       . . R R R
#   . . . . .       . . R R R
#   . . . . .       . . . . .
# TP = rows 1-2 x cols 2-3 = 4, FP = 6 - 4 = 2, FN = 9 - 4 = 5,
# TN = 25 - 4 - 2 - 5 = 14.
# dice = 2*4 / (6+9) = 8/15, iou = 4 / (4+2+5) = 4/11,
# sensitivity = 4/9, specificity = 14 / (14+2) = 7/8.
PREDICTION_5X5 = np.zeros((5, 5), dtype=bool)
PREDICTION_5X5[1:3, 1:4] = True
REFERENCE_5X5 = np.zeros((5, 5), dtype=bool)
REFERENCE_5X5[1:4, 2:5] = True


def test_overlap_metrics_match_hand_counts():
    assert dice(PREDICTION_5X5, REFERENCE_5X5) == pytest.approx(8 / 15)
    assert iou(PREDICTION_5X5, REFERENCE_5X5) == pytest.approx(4 / 11)
    assert sensitivity(PREDICTION_5X5, REFERENCE_5X5) == pytest.approx(4 / 9)
    assert specificity(PREDICTION_5X5, REFERENCE_5X5) == pytest.approx(7 / 8)


def test_segmentation_metrics_agrees_with_individual_functions():
    result = segmentation_metrics(PREDICTION_5X5, REFERENCE_5X5)
    assert tuple(result) == METRIC_KEYS
    for key in METRIC_KEYS:
        individual = getattr(metrics, key)(PREDICTION_5X5, REFERENCE_5X5)
        assert result[key] == pytest.approx(individual)
        assert isinstance(result[key], float)


def test_both_empty_is_perfect_agreement():
    empty = np.zeros((6, 6), dtype=bool)
    assert segmentation_metrics(empty, empty) == {
        "dice": 1.0,
        "iou": 1.0,
        "cldice": 1.0,
        "centerline_recall": 1.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
        "hd95": 0.0,
    }


def test_empty_prediction_with_vessel_in_reference():
    empty = np.zeros((5, 5), dtype=bool)
    # Nothing predicted: every reference pixel is missed, no false positive.
    assert segmentation_metrics(empty, REFERENCE_5X5) == {
        "dice": 0.0,
        "iou": 0.0,
        "cldice": 0.0,
        "centerline_recall": 0.0,
        "sensitivity": 0.0,
        "specificity": 1.0,
        "hd95": math.inf,
    }


def test_vessel_predicted_on_empty_reference():
    empty = np.zeros((5, 5), dtype=bool)
    # 6 false positives among 25 negatives: specificity = 19/25; nothing to
    # miss, so sensitivity is 1.0 by convention.
    result = segmentation_metrics(PREDICTION_5X5, empty)
    assert result["dice"] == 0.0
    assert result["iou"] == 0.0
    assert result["cldice"] == 0.0
    assert result["centerline_recall"] == 1.0
    assert result["sensitivity"] == 1.0
    assert result["specificity"] == pytest.approx(19 / 25)
    assert result["hd95"] == math.inf


def test_specificity_without_background_in_reference_is_one():
    full = np.ones((4, 4), dtype=bool)
    assert specificity(PREDICTION_5X5[:4, :4], full) == 1.0
    # The cropped prediction keeps all 6 of its pixels (rows 1-2 x cols 1-3),
    # so 6 of the 16 reference pixels are found: sensitivity = 6/16.
    assert sensitivity(PREDICTION_5X5[:4, :4], full) == pytest.approx(6 / 16)


def test_hd95_square_shifted_by_one_pixel_is_one():
    square = np.zeros((12, 12), dtype=bool)
    square[2:7, 2:7] = True
    shifted = np.roll(square, 1, axis=1)
    # Each boundary pixel is either shared (distance 0) or one pixel from the
    # other boundary; 8 of 16 are at distance 1, so the 95th percentile is 1.
    assert hd95(square, shifted) == pytest.approx(1.0)
    assert hd95(shifted, square) == pytest.approx(1.0)


def test_hd95_identical_masks_is_zero():
    assert hd95(REFERENCE_5X5, REFERENCE_5X5) == 0.0


def test_hd95_two_single_points_is_their_distance():
    # A 3-4-5 triangle.
    first = _mask((8, 8), (0, 0))
    second = _mask((8, 8), (3, 4))
    assert hd95(first, second) == pytest.approx(5.0)


def test_hd95_takes_max_of_directed_percentiles():
    # Prediction boundary {(0,0), (0,4)}, reference boundary {(0,0)}.
    # d(P->L) = [0, 4]: p95 = 0 + 0.95 * 4 = 3.8 (linear interpolation).
    # d(L->P) = [0]: p95 = 0. HD95 = max = 3.8. (medpy's pooled
    # p95 of [0, 0, 4] would be 3.6.)
    prediction = _mask((3, 6), (0, 0), (0, 4))
    reference = _mask((3, 6), (0, 0))
    assert hd95(prediction, reference) == pytest.approx(3.8)


def test_hd95_of_square_against_its_centre():
    square = np.zeros((7, 7), dtype=bool)
    square[1:6, 1:6] = True
    centre = _mask((7, 7), (3, 3))
    # The 16 boundary pixels of the 5x5 square lie at 2 (4 of them),
    # sqrt(5) (8) and sqrt(8) (the 4 corners) from the centre; p95 sits at
    # rank 0.95 * 15 = 14.25, between two corners: sqrt(8). The other
    # direction gives 2.
    assert hd95(square, centre) == pytest.approx(math.sqrt(8))


def test_boundary_uses_four_connected_erosion_and_image_edge():
    plus = _mask((5, 5), (2, 2), (1, 2), (3, 2), (2, 1), (2, 3))
    # The centre has all four 4-neighbours inside, so it is interior.
    expected = plus & ~_mask((5, 5), (2, 2))
    np.testing.assert_array_equal(metrics._boundary(plus), expected)
    # Outside the image counts as background.
    full = np.ones((4, 4), dtype=bool)
    expected = full.copy()
    expected[1:3, 1:3] = False
    np.testing.assert_array_equal(metrics._boundary(full), expected)


def test_hd95_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(0)
    prediction = rng.random((40, 40)) > 0.7
    reference = rng.random((40, 40)) > 0.7

    def boundary_points(mask):
        return np.argwhere(metrics._boundary(mask))

    pairwise = cdist(boundary_points(prediction), boundary_points(reference))
    expected = max(
        np.percentile(pairwise.min(axis=1), 95), np.percentile(pairwise.min(axis=0), 95)
    )
    assert hd95(prediction, reference) == pytest.approx(expected)


def _horizontal_line(shape, row, start, stop):
    mask = np.zeros(shape, dtype=bool)
    mask[row, start:stop] = True
    return mask


def test_cldice_of_thin_line_with_itself_is_one():
    line = _horizontal_line((12, 12), 5, 1, 11)
    assert cldice(line, line) == pytest.approx(1.0)


def test_cldice_of_disjoint_lines_is_zero():
    line = _horizontal_line((12, 12), 2, 1, 11)
    other = _horizontal_line((12, 12), 8, 1, 11)
    assert cldice(line, other) == 0.0


def test_cldice_of_line_against_its_half():
    # A one-pixel line is its own skeleton.
    # Tprec = |S(P) ∩ L| / |S(P)| = 5/10; Tsens = |S(L) ∩ P| / |S(L)| = 5/5.
    # clDice = 2 * 0.5 * 1 / 1.5 = 2/3.
    prediction = _horizontal_line((12, 12), 5, 0, 10)
    reference = _horizontal_line((12, 12), 5, 0, 5)
    assert cldice(prediction, reference) == pytest.approx(2 / 3)


def test_cldice_of_crossing_lines():
    # Horizontal prediction of 10 pixels, vertical reference of 7 pixels,
    # meeting in one pixel: Tprec = 1/10, Tsens = 1/7,
    # clDice = 2 * (1/70) / (17/70) = 2/17.
    prediction = _horizontal_line((12, 12), 5, 1, 11)
    reference = np.zeros((12, 12), dtype=bool)
    reference[2:9, 4] = True
    assert cldice(prediction, reference) == pytest.approx(2 / 17)
    assert cldice(reference, prediction) == pytest.approx(2 / 17)


def test_centerline_recall_of_thin_line_inside_wide_polygon_is_one():
    # An ARCADE-like reference: a bar 7 pixels tall (rows 3-9, cols 3-26)
    # drawn around a lumen 3 pixels tall (rows 5-7) that the prediction
    # marks exactly. Pixel sensitivity = 3/7; the reference's skeleton lies
    # on its middle rows, inside the lumen, so all of it is covered.
    reference = np.zeros((13, 30), dtype=bool)
    reference[3:10, 3:27] = True
    lumen = np.zeros((13, 30), dtype=bool)
    lumen[5:8, 3:27] = True
    assert sensitivity(lumen, reference) == pytest.approx(3 / 7)
    assert centerline_recall(lumen, reference) == 1.0
    assert segmentation_metrics(lumen, reference)["centerline_recall"] == 1.0


def test_centerline_recall_of_half_the_skeleton_is_one_half():
    # A one-pixel line is its own skeleton: 10 pixels, cols 2-11 of row 5.
    # The prediction, a blob 5 pixels tall over cols 0-6, covers cols 2-6.
    reference = _horizontal_line((12, 14), 5, 2, 12)
    prediction = np.zeros((12, 14), dtype=bool)
    prediction[3:8, 0:7] = True
    assert centerline_recall(prediction, reference) == pytest.approx(5 / 10)
    # It is Tsens alone: false positives elsewhere do not lower it.
    prediction[9:12, 8:14] = True
    assert centerline_recall(prediction, reference) == pytest.approx(5 / 10)


def test_centerline_recall_empty_masks():
    empty = np.zeros((12, 12), dtype=bool)
    line = _horizontal_line((12, 12), 5, 1, 11)
    assert centerline_recall(empty, empty) == 1.0
    assert centerline_recall(line, empty) == 1.0  # nothing to miss
    assert centerline_recall(empty, line) == 0.0


def test_centerline_recall_on_real_arcade_masks_is_not_fooled_by_width(shared_data):
    # A prediction two pixels thinner than each real ARCADE polygon (their
    # borders eroded away) loses a third of the pixel sensitivity but keeps
    # nearly all of the centreline.
    from PIL import Image
    from scipy import ndimage

    masks = sorted((shared_data / "arcade_vessels" / "val" / "masks").glob("*.png"))[:3]
    assert len(masks) == 3, "expected ARCADE masks in ../shared/data/arcade_vessels/val/masks"
    for path in masks:
        reference = np.array(Image.open(path)) >= 128
        thinner = ndimage.binary_erosion(reference, iterations=2)
        assert sensitivity(thinner, reference) < 0.75
        assert centerline_recall(thinner, reference) > 0.97


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    for metric in (dice, iou, cldice, centerline_recall, sensitivity, specificity, hd95):
        with pytest.raises(ValueError):
            metric(np.zeros((4, 4)), np.zeros((5, 4)))


@pytest.mark.parametrize("shape", [(16,), (2, 4, 4), (1, 4, 4, 1)])
def test_non_2d_input_is_rejected(shape):
    with pytest.raises(ValueError, match="2-D"):
        segmentation_metrics(np.zeros(shape), np.zeros(shape))


def test_0_255_and_0_1_inputs_equal_bool_inputs():
    as_bool = segmentation_metrics(PREDICTION_5X5, REFERENCE_5X5)
    as_255 = segmentation_metrics(
        PREDICTION_5X5.astype(np.uint8) * 255, REFERENCE_5X5.astype(np.uint8) * 255
    )
    as_float = segmentation_metrics(
        PREDICTION_5X5.astype(np.float32), REFERENCE_5X5.astype(np.float64)
    )
    assert as_255 == as_bool
    assert as_float == as_bool


def _per_image(dice_value, hd95_value):
    return {
        "dice": dice_value,
        "iou": dice_value / 2,
        "cldice": dice_value - 0.1,
        "centerline_recall": 0.95,
        "sensitivity": 0.9,
        "specificity": 0.99,
        "hd95": hd95_value,
    }


def test_summarize_matches_numpy_population_statistics():
    per_image = [_per_image(0.8, 2.0), _per_image(0.6, 4.0), _per_image(0.7, 9.0)]
    summary = summarize(per_image)
    assert summary["n_images"] == 3
    assert set(summary["mean"]) == set(METRIC_KEYS) == set(summary["std"])
    for key in METRIC_KEYS:
        values = np.array([image[key] for image in per_image])
        assert summary["mean"][key] == pytest.approx(np.mean(values))
        assert summary["std"][key] == pytest.approx(np.std(values, ddof=0))
    # Hand check of ddof=0: dice values 0.8, 0.6, 0.7 have mean 0.7 and
    # squared deviations 0.01, 0.01, 0 -> variance 0.02/3.
    assert summary["std"]["dice"] == pytest.approx(math.sqrt(0.02 / 3))


def test_summarize_skips_infinite_hd95():
    per_image = [_per_image(0.8, 2.0), _per_image(0.0, math.inf), _per_image(0.7, 4.0)]
    summary = summarize(per_image)
    assert summary["n_images"] == 3
    assert summary["mean"]["hd95"] == pytest.approx(3.0)
    assert summary["std"]["hd95"] == pytest.approx(1.0)
    # Other metrics still average over every image.
    assert summary["mean"]["dice"] == pytest.approx(0.5)


def test_summarize_with_no_finite_hd95_gives_nan():
    summary = summarize([_per_image(0.0, math.inf), _per_image(0.0, math.inf)])
    assert math.isnan(summary["mean"]["hd95"])
    assert math.isnan(summary["std"]["hd95"])
    assert summary["mean"]["dice"] == 0.0


def test_summarize_rejects_empty_and_incomplete_input():
    with pytest.raises(ValueError, match="zero images"):
        summarize([])
    incomplete = _per_image(0.5, 1.0)
    del incomplete["cldice"]
    with pytest.raises(ValueError, match="cldice"):
        summarize([_per_image(0.5, 1.0), incomplete])


def test_all_metrics_on_512x512_are_fast():
    # Tree-like vessels: a few thick curved bands, the prediction shifted.
    rows, cols = np.mgrid[0:512, 0:512]
    reference = np.zeros((512, 512), dtype=bool)
    for phase in (0.0, 1.3, 2.9):
        centre = 256 + 120 * np.sin(cols / 60.0 + phase)
        reference |= np.abs(rows - centre) < 4
    prediction = np.roll(reference, 2, axis=0)
    segmentation_metrics(prediction, reference)  # warm-up
    start = time.perf_counter()
    result = segmentation_metrics(prediction, reference)
    elapsed = time.perf_counter() - start
    # The target is well under 0.2 s; the bound is loose for shared CI
    # machines and only catches an accidental quadratic algorithm.
    assert elapsed < 2.0
    assert 0.0 < result["dice"] < 1.0
    assert 0.0 < result["hd95"] <= 2.0
