"""The CM-UNet pretraining losses: masked reconstruction and InfoNCE.

Both are computed in float32 whatever the compute dtype. The supervised
fine-tuning loss (soft Dice + BCE) is `cm_unet_keras.training.losses`.
"""

import tensorflow as tf

from cm_unet_keras.data.masking import patchify

# MAE normalises each target patch with (var + 1e-6) ** 0.5.
_PATCH_EPSILON = 1e-6


def normalized_patch_target(images, patch_size):
    """Each patch of `images` minus its mean, divided by its standard deviation.

    As MAE (`norm_pix_loss`): the variance is the unbiased one (n - 1) and
    1e-6 is added before the square root, so a flat patch stays finite.

    Returns:
        float32 `[B, H/p, W/p, p*p]`.
    """
    patches = patchify(tf.cast(images, tf.float32), patch_size)
    count = tf.cast(patch_size * patch_size, tf.float32)
    mean = tf.reduce_mean(patches, axis=-1, keepdims=True)
    variance = tf.reduce_sum(tf.square(patches - mean), axis=-1, keepdims=True) / (count - 1.0)
    return (patches - mean) / tf.sqrt(variance + _PATCH_EPSILON)


def masked_reconstruction_loss(reconstruction, online_view, patch_mask, patch_size):
    """MSE to the per-patch normalised unmasked view, over the masked patches only.

    Args:
        reconstruction: `[B, S, S, 1]` output of the reconstruction head.
        online_view: `[B, S, S, 1]` the view before masking.
        patch_mask: `[B, S/p, S/p]`, 1 where a patch was masked.
        patch_size: side of the patches.

    Returns:
        float32 scalar: the mean squared error per masked patch.
    """
    target = normalized_patch_target(online_view, patch_size)
    prediction = patchify(tf.cast(reconstruction, tf.float32), patch_size)
    patch_error = tf.reduce_mean(tf.square(prediction - target), axis=-1)
    return tf.reduce_sum(patch_error * patch_mask) / tf.reduce_sum(patch_mask)


def info_nce(query, keys, labels, temperature):
    """InfoNCE of L2-normalised queries against keys, scaled by 2 * tau.

    Args:
        query: `[B, D]` predictor outputs of this replica.
        keys: `[N, D]` target projections of the whole global batch.
        labels: int `[B]`, the row of `keys` that is each query's positive.
        temperature: tau.

    Returns:
        (loss per query `[B]`, top-1 correct per query `[B]`), float32.
    """
    query = tf.math.l2_normalize(tf.cast(query, tf.float32), axis=-1)
    keys = tf.math.l2_normalize(tf.cast(keys, tf.float32), axis=-1)
    logits = tf.matmul(query, keys, transpose_b=True) / temperature
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels), tf.float32)
    # MoCo v3 multiplies by 2 * tau so that the gradient scale does not
    # depend on the temperature.
    return cross_entropy * (2.0 * temperature), correct
