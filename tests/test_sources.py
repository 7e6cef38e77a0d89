"""Training across sources (issue 14): partial labels, zoom, simulated borders, source balance."""

import json

import numpy as np
import pytest
import tensorflow as tf

from cm_unet_keras.data.layouts import index_images_masks, read_pair
from cm_unet_keras.data.pipeline import (
    AugmentConfig,
    LabelledAngiogram,
    PatchSampler,
    paint_border,
    partial_label_weights,
    preprocess_angiogram,
    vessel_like,
)
from cm_unet_keras.training.finetune import partial_image_weights
from cm_unet_keras.training.losses import DiceBCELoss


@pytest.fixture(scope="module")
def arcade_pair(shared_data):
    folder = shared_data / "arcade_vessels" / "val"
    record = index_images_masks(folder / "images", folder / "masks")[0]
    raw, mask = read_pair(record)
    return preprocess_angiogram(raw), mask


def test_partial_labels_ignore_unlabelled_vessel_like_pixels_only(arcade_pair):
    normalized, mask = arcade_pair
    labelled = mask > 0
    looks = vessel_like(normalized[..., 0])
    # The detector finds the annotated main segments, and more (side branches).
    assert looks[labelled].mean() > 0.5
    assert looks[~labelled].sum() > 0.2 * labelled.sum()
    weights = partial_label_weights(normalized, mask, background_weight=0.5, ignore_vessel_like=True)[..., 0]
    assert weights.shape == mask.shape and weights.dtype == np.float32
    assert (weights[labelled] == 1.0).all()
    ignored = weights == 0.0
    assert ignored.any() and not (ignored & labelled).any()
    assert set(np.unique(weights[~labelled & ~ignored])) == {0.5}
    plain = partial_label_weights(normalized, mask)[..., 0]
    assert (plain == 1.0).all()


def test_weighted_loss_ignores_zero_weight_pixels_and_equals_the_plain_loss_at_weight_one():
    rng = np.random.default_rng(0)
    mask = (rng.random((2, 16, 16, 1)) < 0.2).astype("float32")
    prediction = rng.random((2, 16, 16, 1)).astype("float32")
    loss = DiceBCELoss(0.5)
    plain = float(loss(mask, prediction))
    ones = np.concatenate([mask, np.ones_like(mask)], axis=-1)
    assert float(loss(ones, prediction)) == pytest.approx(plain, rel=1e-6)
    weight = np.ones_like(mask)
    weight[:, :8] = 0.0
    weighted = np.concatenate([mask, weight], axis=-1)
    changed = prediction.copy()
    changed[:, :8] = rng.random(changed[:, :8].shape)
    assert float(loss(weighted, changed)) == pytest.approx(float(loss(weighted, prediction)), rel=1e-6)
    assert float(loss(mask, changed)) != pytest.approx(plain, rel=1e-3)


def _item(name, size=96, period=16, weight=None):
    rows, cols = np.mgrid[:size, :size]
    mask = (((rows // (period // 2)) + (cols // (period // 2))) % 2).astype(np.uint8)[..., None]
    image = (1.0 - 2.0 * mask).astype(np.float32)
    return LabelledAngiogram(name, image, mask, None, weight)


def _run_lengths(row):
    changes = np.flatnonzero(np.diff(row.astype(int))) + 1
    return np.diff(changes)


def test_zoomed_patches_scale_the_structures_and_keep_mask_and_image_aligned():
    item = _item("checker", size=160)
    zoom = PatchSampler([item], 64, seed=1, foreground_fraction=0.0,
                        augment=AugmentConfig(strength=0.0, geometric=False, scale=(2.0, 2.0)))
    native = PatchSampler([item], 64, seed=1, foreground_fraction=0.0,
                          augment=AugmentConfig(strength=0.0, geometric=False))
    for index in range(4):
        image, mask = (t.numpy()[..., 0] for t in zoom.sample(tf.constant(index, tf.int64)))
        inner = _run_lengths(mask[32])[1:-1]
        assert inner.size and np.all(np.abs(inner - 16) <= 1)  # squares of 8 px drawn at 16 px
        np.testing.assert_array_equal(image < 0, mask > 0.5)
        _, native_mask = (t.numpy()[..., 0] for t in native.sample(tf.constant(index, tf.int64)))
        assert np.all(_run_lengths(native_mask[32])[1:-1] == 8)


def test_source_weights_choose_which_pairs_patches_come_from():
    first, second = _item("a"), _item("b")
    second = LabelledAngiogram("b", second.angiogram + 10.0, second.vessel_mask)
    sampler = PatchSampler([first, second], 32, seed=0, image_weights=[0.0, 1.0])
    assert all(sampler.sample(tf.constant(i, tf.int64))[0].numpy().min() > 5.0 for i in range(10))
    assert partial_image_weights(30, 140, 0.5)[:30] == [0.5 / 30] * 30
    assert sum(partial_image_weights(30, 140, 0.5)[30:]) == pytest.approx(0.5)
    assert partial_image_weights(30, 140, None) is None
    with pytest.raises(ValueError, match="partial_share"):
        partial_image_weights(3, 3, 1.5)


def test_simulated_borders_are_dark_background_and_supervised():
    image = tf.constant(np.random.default_rng(2).normal(size=(64, 64, 1)), tf.float32)
    label = tf.concat([tf.ones([64, 64, 1]), tf.zeros([64, 64, 1])], axis=-1)
    for seed in range(12):
        def uniform(stream, low=0.0, high=1.0, seed=seed):
            return tf.random.stateless_uniform([], seed=[seed, stream], minval=low, maxval=high)

        painted, new_label = paint_border(image, label, uniform)
        covered = painted.numpy()[..., 0] < image.numpy().min() - 0.1
        assert covered.any() and not covered.all(), seed
        assert (new_label.numpy()[..., 0][covered] == 0).all()  # no vessel under the border
        assert (new_label.numpy()[..., 1][covered] == 1).all()  # and it is supervised
        assert (new_label.numpy()[..., 0][~covered].mean()) > 0.9


def test_finetune_with_partially_labelled_pairs(tmp_path, shared_data):
    from cm_unet_keras.data.layouts import index_pairs
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.training.finetune import finetune

    complete = index_pairs(shared_data / "xca_vessels" / "train", mask_suffix="_gt")[:3]
    folder = shared_data / "arcade_vessels" / "val"
    partial = index_images_masks(folder / "images", folder / "masks")[:2]
    config = FinetuneConfig(base_filters=4, depth=2, epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32,
                            partial_background_weight=0.3, partial_ignore_vessel_like=True, partial_share=0.5,
                            augment_scale=(0.5, 2.0), augment_borders=0.5)
    result = finetune(config, complete[:2], tmp_path / "run", val_records=complete[2:], partial_records=partial,
                      verbose=0, log=lambda *_: None)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["partial"] == [str(r.image_path) for r in partial] and len(split["train"]) == 2
    assert np.isfinite(result["best_val_dice"])
