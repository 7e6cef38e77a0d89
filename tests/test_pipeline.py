"""Normalisation and the supervised patch pipeline."""

import numpy as np
import pytest

from cm_unet_keras.data.layouts import index_pairs
from cm_unet_keras.data.normalize import field_of_view, normalize_angiogram
from cm_unet_keras.data.pipeline import AugmentConfig, LabelledAngiogram, PatchSampler, load_labelled


def _items(count=3, size=48, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        image = rng.normal(size=(size, size + 8 * i, 1)).astype("float32")
        mask = np.zeros(image.shape, np.uint8)
        mask[10:14, :] = 1
        items.append(LabelledAngiogram(f"a{i}", image, mask))
    return items


def test_normalisation_excludes_the_collimator_border():
    # A bright disc (anatomy, mean 100, std 10) in a dark border (value 5).
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 < 60**2  # 69% of the image, as CIMAT's
    image = np.where(disc, rng.normal(100, 10, (128, 128)), 5.0).astype("float32")[..., None]
    fov = field_of_view(image).numpy()[..., 0]
    np.testing.assert_array_equal(fov, disc)
    normalized = normalize_angiogram(image).numpy()[..., 0]
    assert abs(normalized[disc].mean()) < 1e-4
    assert normalized[disc].std() == pytest.approx(1.0, abs=1e-3)
    assert np.all(normalized[~disc] == 0.0)


def test_mostly_dark_image_uses_every_pixel():
    # Less than half the image passes the cut: no border to exclude.
    image = np.full((32, 32, 1), 5.0, "float32")
    image[:8] = 100.0
    assert field_of_view(image).numpy().all()


def test_normalisation_of_a_batch_is_per_image():
    a = np.full((1, 16, 16, 1), 10.0, "float32")
    a[0, :8] = 20.0
    b = a * 1000.0  # 16-bit-like range
    batch = normalize_angiogram(np.concatenate([a, b])).numpy()
    np.testing.assert_allclose(batch[0], batch[1], atol=1e-4)
    flat = normalize_angiogram(np.full((8, 8, 1), 7.0, "float32")).numpy()
    assert np.all(np.isfinite(flat)) and np.all(flat == 0.0)


def test_patches_are_reproducible_by_sample_index():
    sampler = PatchSampler(_items(), patch_size=32, seed=3, augment=AugmentConfig())
    first = [sampler.sample(i) for i in range(6)]
    again = [sampler.sample(i) for i in range(6)]
    for (image_a, mask_a), (image_b, mask_b) in zip(first, again):
        np.testing.assert_array_equal(image_a.numpy(), image_b.numpy())
        np.testing.assert_array_equal(mask_a.numpy(), mask_b.numpy())
    # A stream resumed at sample 4 continues with the same samples.
    batches = list(sampler.dataset(2).take(3))
    resumed = next(iter(sampler.dataset(2, start_sample=4)))
    np.testing.assert_array_equal(resumed[0].numpy(), batches[2][0].numpy())
    other_seed = PatchSampler(_items(), patch_size=32, seed=4, augment=AugmentConfig())
    assert not np.array_equal(other_seed.sample(0)[0].numpy(), first[0][0].numpy())


def test_patches_without_augmentation_are_crops_of_the_image():
    items = _items(count=1, size=40)
    sampler = PatchSampler(items, patch_size=32, seed=0, foreground_fraction=0.0, augment=None)
    source = items[0].angiogram[..., 0]
    for index in range(5):
        patch = sampler.sample(index)[0].numpy()[..., 0]
        found = any(
            np.array_equal(source[y : y + 32, x : x + 32], patch)
            for y in range(source.shape[0] - 31)
            for x in range(source.shape[1] - 31)
        )
        assert found


def test_foreground_oversampling_centres_patches_on_vessels():
    items = _items(count=1, size=96)
    sampler = PatchSampler(items, patch_size=32, seed=0, foreground_fraction=1.0, augment=None)
    assert all(sampler.sample(i)[1].numpy().sum() > 0 for i in range(10))


def test_augmentation_keeps_mask_aligned_with_image():
    # The image is its own mask: geometric augmentation must move both alike.
    mask = np.zeros((32, 32, 1), np.uint8)
    mask[3:9, 5:20] = 1
    item = LabelledAngiogram("m", mask.astype("float32"), mask)
    sampler = PatchSampler([item], 32, seed=1, augment=AugmentConfig(strength=0.0))
    for i in range(8):
        image, patch_mask = (t.numpy() for t in sampler.sample(i))
        np.testing.assert_array_equal(image, patch_mask)


def test_intensity_augmentation_is_not_clipped():
    sampler = PatchSampler(_items(), 32, seed=0, augment=AugmentConfig(strength=1.0, geometric=False))
    values = np.concatenate([sampler.sample(i)[0].numpy().ravel() for i in range(8)])
    assert values.min() < -1.0 and values.max() > 1.0  # z-scored range kept


def test_patch_larger_than_image_is_padded():
    sampler = PatchSampler(_items(count=1, size=20), patch_size=32, seed=0, augment=None)
    image, mask = sampler.sample(0)
    assert image.shape == (32, 32, 1) and mask.shape == (32, 32, 1)


def test_load_labelled_reads_real_pairs(shared_data):
    records = index_pairs(shared_data / "xca_vessels" / "train")[:3]
    items = load_labelled(records)
    assert [item.name for item in items] == [record.name for record in records]
    for item in items:
        assert item.angiogram.shape == (300, 300, 1) and item.angiogram.dtype == np.float32
        assert set(np.unique(item.vessel_mask)) <= {0, 1}
        # Vessels (contrast-filled) are darker than the rest of the field of view.
        vessel = item.angiogram[item.vessel_mask == 1]
        assert vessel.mean() < item.angiogram[(item.vessel_mask == 0) & (item.angiogram != 0)].mean()
