"""Tests for cm_unet_keras.data.synthetic: the embedded synthetic angiograms."""

import os

import cv2
import numpy as np
import pytest

from cm_unet_keras.data.synthetic import VesselSegment
from cm_unet_keras.data.synthetic import generate_angiogram
from cm_unet_keras.data.synthetic import rasterise_vessels
from cm_unet_keras.data.synthetic import write_synthetic_dataset

SEEDS = range(6)


@pytest.fixture(scope="module")
def samples():
    """(seed, circular_fov, angiogram, vessel_mask) for a handful of seeds."""
    return [
        (seed, fov, *generate_angiogram(256, seed, circular_fov=fov))
        for seed in SEEDS
        for fov in (True, False)
    ]


def field_of_view(angiogram):
    """Pixels inside the collimator circle, judged from the image itself."""
    return cv2.erode((angiogram > 40).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def read_png(path):
    """The PNG at `path` as stored, without cv2's conversion to colour."""
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_same_seed_gives_same_angiogram():
    first = generate_angiogram(256, 7)
    again = generate_angiogram(256, np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_different_seeds_give_different_angiograms():
    angiogram_a, mask_a = generate_angiogram(256, 1)
    angiogram_b, mask_b = generate_angiogram(256, 2)
    assert np.mean(angiogram_a != angiogram_b) > 0.5
    assert np.mean(mask_a != mask_b) > 0.01


@pytest.mark.parametrize("size", [64, 256, 300])
def test_dtype_shape_and_mask_values(size):
    angiogram, vessel_mask = generate_angiogram(size, 3)
    assert angiogram.shape == vessel_mask.shape == (size, size)
    assert angiogram.dtype == vessel_mask.dtype == np.uint8
    assert set(np.unique(vessel_mask)) == {0, 255}
    # The grey range of a real angiogram: not saturated, not a flat image.
    assert 60 < angiogram[vessel_mask == 0].mean() < 180
    assert angiogram.std() > 10


def test_vessels_are_darker_than_the_background_just_around_them(samples):
    for seed, fov, angiogram, vessel_mask in samples:
        vessel = vessel_mask > 0
        dilated = cv2.dilate(vessel_mask, np.ones((5, 5), np.uint8)) > 0
        ring = dilated & ~vessel
        if fov:
            ring &= field_of_view(angiogram)
        inside, around = angiogram[vessel].mean(), angiogram[ring].mean()
        assert inside < around - 8 and inside < 0.93 * around, (seed, fov, inside, around)


def test_vessel_fraction_is_plausible(samples):
    for seed, fov, angiogram, vessel_mask in samples:
        field = field_of_view(angiogram) if fov else np.ones(angiogram.shape, bool)
        fraction = np.count_nonzero(vessel_mask) / np.count_nonzero(field)
        assert 0.03 < fraction < 0.25, (seed, fov, fraction)


def test_each_tree_is_one_connected_component():
    for seed in range(8):
        for fov in (True, False):
            _, vessel_mask = generate_angiogram(256, seed, circular_fov=fov, n_trees=1)
            n_components = cv2.connectedComponents(vessel_mask, connectivity=8)[0] - 1
            assert n_components == 1, (seed, fov)


def test_default_trees_give_few_components(samples):
    for seed, fov, _, vessel_mask in samples:
        n_components = cv2.connectedComponents(vessel_mask, connectivity=8)[0] - 1
        assert 1 <= n_components <= 3, (seed, fov, n_components)  # at most 3 trees


def test_circular_field_of_view_blacks_out_the_corners(samples):
    for seed, fov, angiogram, vessel_mask in samples:
        corners = [(slice(0, 8), slice(0, 8)), (slice(0, 8), slice(-8, None)),
                   (slice(-8, None), slice(0, 8)), (slice(-8, None), slice(-8, None))]
        corner_grey = max(angiogram[c].max() for c in corners)
        if fov:
            assert corner_grey < 30, (seed, corner_grey)
            assert all(not vessel_mask[c].any() for c in corners)
            assert angiogram[96:160, 96:160].mean() > 50  # the centre is exposed
        else:
            assert corner_grey > 30, (seed, corner_grey)


def test_thin_vessels_attenuate_less_than_thick_ones():
    centreline = np.stack([np.linspace(10, 90, 60), np.full(60, 25.0)], axis=1)
    thick = VesselSegment(centreline, np.full(60, 4.0))
    thin = VesselSegment(centreline + [0.0, 50.0], np.full(60, 1.0))
    vessel_mask, chord = rasterise_vessels([thick, thin], (100, 100))
    # A cylinder's mask spans 2r + 1 rows; the chord through its axis is
    # 2 (r + 0.5), the half pixel being the pixel's own footprint.
    assert np.count_nonzero(vessel_mask[:, 50]) == 9 + 3
    assert chord[25, 50] == pytest.approx(9.0, abs=0.01)
    assert chord[75, 50] == pytest.approx(3.0, abs=0.01)
    assert not vessel_mask[25, 95] and chord[25, 95] == 0.0  # past the segment's end


def test_mask_and_attenuation_come_from_the_same_geometry():
    # A thicker vessel crossing a branch's start must not be notched by it.
    along_x = np.stack([np.linspace(5, 95, 90), np.full(90, 50.0)], axis=1)
    along_y = np.stack([np.full(40, 50.0), np.linspace(50, 90, 40)], axis=1)
    trunk = VesselSegment(along_x, np.full(90, 5.0))
    branch = VesselSegment(along_y, np.full(40, 1.0))
    vessel_mask, chord = rasterise_vessels([trunk, branch], (100, 100))
    assert vessel_mask[45:56, 10:90].all()
    assert (chord[vessel_mask] > 0).all()
    # Outside the mask d > r, so only the rim of the pixel footprint is left.
    assert chord[~vessel_mask].max() <= 2.0 * np.sqrt(5.0 + 0.25) + 1e-4


def test_write_synthetic_dataset_layout_and_prefix_property(tmp_path):
    five = write_synthetic_dataset(tmp_path / "five", 5, size=96, seed=3)
    three = write_synthetic_dataset(tmp_path / "three", 3, size=96, seed=3)
    other_seed = write_synthetic_dataset(tmp_path / "other", 1, size=96, seed=4)
    names = [f"synth_{i:04d}.png" for i in range(5)]
    assert [os.path.basename(p) for p in five] == names
    assert sorted(os.listdir(tmp_path / "five" / "images")) == names
    assert sorted(os.listdir(tmp_path / "five" / "masks")) == names
    for index, image_path in enumerate(three):
        assert image_path == str(tmp_path / "three" / "images" / names[index])
        for folder in ("images", "masks"):
            kept = read_png(tmp_path / "five" / folder / names[index])
            again = read_png(tmp_path / "three" / folder / names[index])
            assert kept.shape == (96, 96) and kept.dtype == np.uint8
            np.testing.assert_array_equal(kept, again)
    first_mask = read_png(tmp_path / "five" / "masks" / names[0])
    assert set(np.unique(first_mask)) == {0, 255}
    assert not np.array_equal(read_png(five[0]), read_png(other_seed[0]))


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="size"):
        generate_angiogram(16, 0)
    with pytest.raises(ValueError, match="count"):
        write_synthetic_dataset(tmp_path, -1)
