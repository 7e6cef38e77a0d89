"""Whole-angiogram prediction: pad to the U-Net's size multiple, predict, crop.

The U-Net needs sides that are multiples of `2**depth`; angiograms come in
any size (300x300 CIMAT, 512x512 ARCADE/XCAD, 517x333 crops). Padding is at
the bottom and right with 0, the field of view's mean after normalisation,
and the prediction is cropped back, so every output pixel lines up with its
input pixel.
"""

import weakref

import tensorflow as tf

# One compiled forward pass per model: eager Keras calls run op by op and
# were measured 2x slower than the same graph on a 512x512 angiogram.
_FORWARD = weakref.WeakKeyDictionary()


def _forward(model):
    if model not in _FORWARD:
        _FORWARD[model] = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)],
        )
    return _FORWARD[model]


def pad_to_multiple(images, multiple):
    """Pad `[B, H, W, C]` at the bottom/right so H and W are multiples."""
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    return tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])


def predict_normalized(model, images):
    """Vessel probabilities of normalised angiograms of any size.

    Args:
        model: a `CMUNet` (or any model with `depth` and 1-channel output).
        images: float32 `[B, H, W, 1]` (or `[H, W, 1]`), normalised.

    Returns:
        float32 tensor of probabilities, same shape as `images`.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    single = images.shape.rank == 3
    if single:
        images = images[None]
    shape = tf.shape(images)
    padded = pad_to_multiple(images, 2**model.depth)
    probability = tf.cast(_forward(model)(padded), tf.float32)
    probability = probability[:, : shape[1], : shape[2], :]
    return probability[0] if single else probability
