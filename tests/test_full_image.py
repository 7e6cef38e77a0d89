"""Whole-angiogram inference: mirror padding, flip TTA, the field-of-view rule (issue 12)."""

import keras
import numpy as np
import pytest
from scipy import ndimage

from cm_unet_keras import CMUNet
from cm_unet_keras.data.layouts import index_pairs, read_pair
from cm_unet_keras.data.normalize import FOV_MARGIN, normalize_angiogram, prediction_region
from cm_unet_keras.inference.predict import load_model, segment_angiogram
from cm_unet_keras.models.full_image import pad_to_multiple, predict_normalized


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return CMUNet(base_filters=4, depth=2)


def direct(model, padded):
    return keras.ops.convert_to_numpy(model(padded[None].astype("float32")))[0]


@pytest.mark.parametrize("shape", [(37, 51), (300, 300), (16, 32), (5, 3), (1, 7)])
def test_padding_mirrors_the_image_on_both_sides(shape):
    image = np.random.default_rng(0).normal(size=(1, *shape, 1)).astype("float32")
    padded, (top, left) = pad_to_multiple(image, 16)
    padded = padded.numpy()
    height, width = -(-shape[0] // 16) * 16, -(-shape[1] // 16) * 16
    assert padded.shape == (1, height, width, 1)
    assert (top, left) == ((height - shape[0]) // 2, (width - shape[1]) // 2)
    np.testing.assert_array_equal(padded[0, top : top + shape[0], left : left + shape[1]], image[0])
    if min(shape) > 8:  # one mirroring stage: numpy's reflect is the reference
        pads = [(0, 0), (top, height - shape[0] - top), (left, width - shape[1] - left), (0, 0)]
        np.testing.assert_array_equal(padded, np.pad(image, pads, mode="reflect"))
    elif shape[0] > 1:  # several stages: still a mirror image, never a constant strip
        assert np.count_nonzero(padded == 0) == 0


def test_prediction_equals_the_network_on_the_mirrored_image(tiny_model):
    image = np.random.default_rng(1).normal(size=(37, 51, 1)).astype("float32")
    probability = predict_normalized(tiny_model, image).numpy()
    assert probability.shape == (37, 51, 1)
    padded = np.pad(image, [(1, 2), (0, 1), (0, 0)], mode="reflect")  # to 40 x 52
    np.testing.assert_allclose(probability, direct(tiny_model, padded)[1:38, 0:51], atol=1e-6)


def test_tta_is_the_mean_of_the_four_flipped_predictions(tiny_model):
    image = np.random.default_rng(2).normal(size=(40, 52, 1)).astype("float32")
    flips = [
        direct(tiny_model, image),
        direct(tiny_model, image[:, ::-1])[:, ::-1],
        direct(tiny_model, image[::-1])[::-1],
        direct(tiny_model, image[::-1, ::-1])[::-1, ::-1],
    ]
    tta = predict_normalized(tiny_model, image, tta=True).numpy()
    np.testing.assert_allclose(tta, np.mean(flips, axis=0), atol=1e-6)
    assert np.abs(tta - flips[0]).max() > 1e-4  # the flips really differ


def test_prediction_region_shrinks_the_rim_not_the_image_border():
    fov = np.zeros((64, 80), bool)
    yy, xx = np.mgrid[:64, :80]
    fov[(yy - 32) ** 2 + (xx - 20) ** 2 < 30**2] = True  # a collimator disc cut by the image border
    region = prediction_region(fov[..., None]).numpy()[..., 0].astype(bool)
    square = np.ones((2 * FOV_MARGIN + 1,) * 2, bool)
    expected = ndimage.binary_erosion(fov, structure=square, border_value=1)
    np.testing.assert_array_equal(region, expected)
    assert region[32, 0] and not region[32, 48]  # the border column stays, the rim goes


def test_predictions_outside_the_field_of_view_are_zero(tiny_model, shared_data):
    angiogram, _ = read_pair(index_pairs(shared_data / "xca_vessels" / "train", mask_suffix="_gt")[0])
    normalized, fov = normalize_angiogram(angiogram[..., None], return_fov=True)
    cleared = predict_normalized(tiny_model, normalized, fov=fov).numpy()[..., 0]
    raw = predict_normalized(tiny_model, normalized).numpy()[..., 0]
    region = prediction_region(fov).numpy()[..., 0].astype(bool)
    assert 0.5 < region.mean() < 0.99  # a CIMAT collimator: a real rim to clear
    np.testing.assert_array_equal(cleared[~region], 0.0)
    np.testing.assert_array_equal(cleared[region], raw[region])
    np.testing.assert_allclose(segment_angiogram(tiny_model, angiogram), cleared, atol=1e-6)


@pytest.mark.parametrize("name", ["4", "5"])
def test_no_vessel_band_along_the_edges_of_a_real_300px_angiogram(shared_data, name):
    # With zeros padded at the bottom/right, cmunet_small_xca drew a false
    # vessel along those edges of these validation pairs: 807 and 516 false
    # positive pixels within 4 px of the bottom/right edges; now ~10.
    records = {r.name: r for r in index_pairs(shared_data / "xca_vessels" / "train", mask_suffix="_gt")}
    angiogram, vessel_mask = read_pair(records[name])
    prediction = segment_angiogram(load_model("cmunet_small_xca"), angiogram) >= 0.5
    band = np.zeros(angiogram.shape, bool)
    band[:4, :] = band[-4:, :] = band[:, :4] = band[:, -4:] = True
    false_positive = prediction & ~vessel_mask.astype(bool) & band
    assert false_positive.sum() < 0.025 * band.sum()


def test_dark_vessel_cores_stay_inside_the_field_of_view(shared_data):
    # With the plain intensity cut, 18.7% of the XCAD sample's vessel pixels
    # (their dark cores) fell outside the field of view: set to 0 in the
    # normalised image and cleared from the prediction.
    from cm_unet_keras.data.layouts import index_images_masks

    folder = shared_data / "xcad_sample" / "test"
    for record in index_images_masks(folder / "images", folder / "masks"):
        angiogram, vessel_mask = read_pair(record)
        _, fov = normalize_angiogram(angiogram[..., None], return_fov=True)
        region = prediction_region(fov).numpy()[..., 0].astype(bool)
        assert not np.any(vessel_mask.astype(bool) & ~region), record.name


def test_collimator_corners_stay_outside_the_field_of_view(shared_data):
    # Validation pair 2: a collimator disc leaves dark corners, some thinner
    # than any "wide" square; they remain outside, as the plain cut had them.
    records = {r.name: r for r in index_pairs(shared_data / "xca_vessels" / "train", mask_suffix="_gt")}
    angiogram, _ = read_pair(records["2"])
    _, fov = normalize_angiogram(angiogram[..., None], return_fov=True)
    cut = angiogram > 0.3 * angiogram.mean()
    assert (~cut).sum() > 2000
    np.testing.assert_array_equal(fov.numpy()[..., 0], cut)


def test_host_normalisation_equals_the_graph_ops_on_every_source(shared_data):
    # predict, segment and data loading use the OpenCV/numpy version; the
    # exported graphs use the TensorFlow ops. Same field of view, values to
    # float32 rounding, on CIMAT (collimator discs), ARCADE (dark frame
    # borders, saturated pixels) and XCAD (dark vessel cores), and on a
    # flat image and an image that is mostly dark.
    from cm_unet_keras.data.normalize import normalize_angiogram_host
    from cm_unet_keras.data.readers import read_angiogram

    files = (
        sorted((shared_data / "xca_vessels" / "train").glob("*[0-9].png"))[:12]
        + sorted((shared_data / "arcade_vessels" / "val" / "images").glob("*.png"))[:12]
        + sorted((shared_data / "xcad_sample" / "test" / "images").glob("*.png"))
    )
    images = [read_angiogram(path).astype(np.float32) for path in files]
    mostly_dark = np.zeros((64, 80), np.float32)
    mostly_dark[20:30, 10:70] = 200.0
    images += [np.full((40, 50), 7.0, np.float32), mostly_dark]
    outside = 0
    for image in images:
        graph, graph_fov = normalize_angiogram(image[..., None], return_fov=True)
        host, host_fov = normalize_angiogram_host(image[..., None], return_fov=True)
        np.testing.assert_array_equal(host_fov, graph_fov.numpy())
        np.testing.assert_allclose(host, graph.numpy(), atol=2e-5)
        assert host.dtype == np.float32 and host.shape == image[..., None].shape
        outside += int((~host_fov).sum())
    assert outside > 10_000  # the rule was exercised, not only the all-inside case
