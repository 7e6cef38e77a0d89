"""Whole-angiogram prediction: pad to the U-Net's size multiple, predict, crop.

The U-Net needs sides that are multiples of `2**depth`; angiograms come in
any size (300x300 CIMAT, 512x512 ARCADE/XCAD, 517x333 crops). Every path
that segments a whole angiogram (`predict`, `evaluate`, validation during
training, the SavedModel and ONNX graphs) goes through `predict_normalized`:

- Padding mirrors the image (`REFLECT`) and is split between both sides.
  Training patches never contain a constant strip, and zero padding at the
  bottom/right made the network trace a false vessel along the padded edges
  of 300x300 angiograms (validation Dice of `cmunet_small_xca` 0.751 with
  zeros, 0.773 with mirroring: `benchmarks/inference/results.md`).
- Given the angiograms' field of view, predictions outside it (shrunk by
  `FOV_MARGIN` px at the collimator rim) are set to 0
  (`cm_unet_keras.data.normalize.prediction_region`); the Frangi baseline
  gets the same rule.
- `tta=True` averages the probabilities of the four flips of the image
  (identity, left-right, up-down, both): four forward passes.

The prediction is cropped back, so every output pixel lines up with its
input pixel.
"""

import weakref

import tensorflow as tf

from cm_unet_keras.data.normalize import prediction_region

# One compiled forward pass per model: eager Keras calls run op by op and
# were measured 2x slower than the same graph on a 512x512 angiogram.
_FORWARD = weakref.WeakKeyDictionary()
# Mirroring needs a side of at least 2 pixels and pads at most side - 1 per
# stage; a pad below 2**depth (<= 63 for depth <= 6) is reached in this many
# stages from any side >= 2. A 1-pixel side gets the remainder as zeros.
_MIRROR_STAGES = 6
# The four flips averaged by test-time augmentation, as axes of [B, H, W, C].
TTA_FLIPS = ((), (2,), (1,), (1, 2))


def _forward(model):
    if model not in _FORWARD:
        _FORWARD[model] = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)],
        )
    return _FORWARD[model]


def padding_amounts(size, multiple):
    """(before, after) padding that brings `size` to a multiple, split in two."""
    total = (multiple - size % multiple) % multiple
    before = total // 2
    return before, total - before


def pad_to_multiple(images, multiple):
    """Mirror-pad `[B, H, W, C]` on both sides so H and W are multiples.

    Returns:
        `(padded, (top, left))`: the padded images and where the original
        image starts in them (crop `[top:top + H, left:left + W]`).
    """
    shape = tf.shape(images)
    top, bottom = padding_amounts(shape[1], multiple)
    left, right = padding_amounts(shape[2], multiple)
    remaining = [top, bottom, left, right]
    for _ in range(_MIRROR_STAGES):
        shape = tf.shape(images)
        room_h, room_w = tf.maximum(shape[1] - 1, 0), tf.maximum(shape[2] - 1, 0)
        step = [
            tf.minimum(remaining[0], room_h),
            tf.minimum(remaining[1], room_h),
            tf.minimum(remaining[2], room_w),
            tf.minimum(remaining[3], room_w),
        ]
        images = tf.pad(images, [[0, 0], [step[0], step[1]], [step[2], step[3]], [0, 0]], mode="REFLECT")
        remaining = [r - s for r, s in zip(remaining, step)]
    # Only a 1-pixel side leaves padding here: 0 is the field of view's mean.
    images = tf.pad(images, [[0, 0], [remaining[0], remaining[1]], [remaining[2], remaining[3]], [0, 0]])
    return images, (top, left)


def predict_normalized(model, images, tta=False, fov=None):
    """Vessel probabilities of normalised angiograms of any size.

    Args:
        model: a `CMUNet` (or any model with `depth` and 1-channel output).
        images: float32 `[B, H, W, 1]` (or `[H, W, 1]`), normalised.
        tta: average over the four flips (4x the compute).
        fov: boolean field of view of `images` (same shape), as returned by
            `normalize_angiogram(..., return_fov=True)`; predictions outside
            its `prediction_region` are set to 0. None keeps every pixel.

    Returns:
        float32 tensor of probabilities, same shape as `images`.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    single = images.shape.rank == 3
    if single:
        images = images[None]
    shape = tf.shape(images)
    padded, (top, left) = pad_to_multiple(images, 2**model.depth)
    forward = _forward(model)
    if tta:
        probability = tf.add_n(
            [tf.reverse(forward(tf.reverse(padded, axes)), axes) if axes else forward(padded) for axes in TTA_FLIPS]
        )
        probability = tf.cast(probability, tf.float32) / float(len(TTA_FLIPS))
    else:
        probability = tf.cast(forward(padded), tf.float32)
    probability = probability[:, top : top + shape[1], left : left + shape[2], :]
    if fov is not None:
        fov = tf.convert_to_tensor(fov)
        probability = probability * prediction_region(fov[None] if single else fov)
    return probability[0] if single else probability
