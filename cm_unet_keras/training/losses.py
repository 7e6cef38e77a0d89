"""Segmentation losses, computed in float32 whatever the compute precision."""

import keras
import tensorflow as tf

SMOOTH = 1.0
# Soft-skeleton iterations: each soft erosion peels about one pixel off every
# side, so the skeleton reaches the centre of vessels up to this radius (in
# the 4-connected distance). CIMAT's skeleton pixels lie at a Euclidean
# radius of 2.8 (median) and 5.1 (95th percentile) from the border, up to
# 13 on the catheter; 10 covers the vessels at any angle (5 x sqrt 2 < 10).
# Shit et al.'s code uses 3 to 10 by data set.
SOFT_SKELETON_ITERATIONS = 10


def _soft_erode(image):
    """Minimum over the 4-connected cross (two 1-D min-pools)."""
    vertical = -tf.nn.max_pool2d(-image, ksize=(3, 1), strides=1, padding="SAME")
    horizontal = -tf.nn.max_pool2d(-image, ksize=(1, 3), strides=1, padding="SAME")
    return tf.minimum(vertical, horizontal)


def _soft_dilate(image):
    return tf.nn.max_pool2d(image, ksize=3, strides=1, padding="SAME")


def soft_skeleton(image, iterations=SOFT_SKELETON_ITERATIONS):
    """Soft skeleton of probabilities `[B, H, W, 1]` by iterated min/max
    pooling (Shit et al. 2021, Algorithm 1): what each successive erosion
    loses to an opening is added, so a binary mask gives (close to) its
    centreline and the operation has a gradient everywhere.
    """
    image = tf.cast(image, tf.float32)
    skeleton = None
    for _ in range(iterations + 1):
        # The erosion inside this opening is the next step's image: computed
        # once (Algorithm 1 erodes twice), with the same result.
        eroded = _soft_erode(image)
        delta = tf.nn.relu(image - _soft_dilate(eroded))
        skeleton = delta if skeleton is None else skeleton + tf.nn.relu(delta - skeleton * delta)
        image = eroded
    return skeleton


def soft_cldice(y_true, y_pred, weight=None, iterations=SOFT_SKELETON_ITERATIONS, per_channel=False):
    """Soft clDice per image (Shit et al. 2021): the harmonic mean of the
    share of the predicted soft skeleton inside the mask (Tprec) and of the
    mask's skeleton inside the prediction (Tsens), each smoothed by 1 pixel.
    `weight` (same shape, optional) counts each pixel by its weight.

    Returns:
        float32 `[B]`, in [0, 1]; 1 for identical binary masks. With
        `per_channel`, `[B, C]`: each channel of `[B, H, W, C]` alone.
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    weight = tf.ones_like(y_true) if weight is None else tf.cast(weight, tf.float32)
    axes = [1, 2] if per_channel else [1, 2, 3]
    skeleton_pred = weight * soft_skeleton(y_pred, iterations)
    skeleton_true = weight * soft_skeleton(y_true, iterations)
    precision = (tf.reduce_sum(skeleton_pred * y_true, axis=axes) + SMOOTH) / (
        tf.reduce_sum(skeleton_pred, axis=axes) + SMOOTH)
    sensitivity = (tf.reduce_sum(skeleton_true * y_pred, axis=axes) + SMOOTH) / (
        tf.reduce_sum(skeleton_true, axis=axes) + SMOOTH)
    return 2.0 * precision * sensitivity / (precision + sensitivity)


def split_targets(y_true):
    """`(masks, weights)` of a target `[B, H, W, 1]` (a mask, weight 1
    everywhere) or `[B, H, W, 2C]` (C masks, then their C per-pixel loss
    weights: `data.pipeline.implied_targets`; C = 1 is a mask and its weight)."""
    channels = y_true.shape[-1]
    if channels == 1:
        return y_true, tf.ones_like(y_true)
    if channels is None or channels % 2:
        raise ValueError(f"a target has 1 channel (mask) or 2C (C masks, C weights), not {channels}")
    return y_true[..., : channels // 2], y_true[..., channels // 2 :]


@keras.saving.register_keras_serializable(package="cm_unet_keras")
class DiceBCELoss(keras.losses.Loss):
    """`dice_weight * soft Dice + (1 - dice_weight) * binary cross-entropy`,
    plus `cldice_weight * (1 - soft clDice)` when that weight is above 0.

    The Dice term is computed on probabilities, per image, with a smoothing
    of 1 pixel, so it has a gradient everywhere (the original code computed
    Dice on thresholded predictions: zero gradient, so its "Dice + CE" was
    cross-entropy alone). Every term is computed in float32, which keeps a
    512x512 all-vessel patch finite under mixed precision. The clDice term
    (`soft_cldice`, soft skeletons of `SOFT_SKELETON_ITERATIONS` min/max
    pooling steps) rewards covering each vessel's centreline, thin ones as
    much as thick ones; with `cldice_weight` 0 it is not computed at all.

    `y_true` is the mask `[B, H, W, 1]`, or `[B, H, W, 2]` with a per-pixel
    loss weight as second channel (partially labelled pairs,
    `data.pipeline.partial_label_weights`): every term then counts each
    pixel by its weight (weight 0: the pixel is ignored). A model with one
    output per mask convention (`CMUNet(conventions=...)`, `y_pred`
    `[B, H, W, C]`) takes `[B, H, W, 2C]`: C masks, then their C weights
    (`data.pipeline.implied_targets`). Each channel's loss is computed
    alone, and an image's loss is the mean over its channels with any
    weight (a channel its mask implies nothing for adds nothing, gradient
    included); with one channel this is the loss above.

    Args:
        dice_weight: weight of the soft Dice term in [0, 1].
        cldice_weight: weight of `1 - soft clDice`, >= 0 (0: Dice + BCE only).

    Reference:
        Shit et al., "clDice - a Novel Topology-Preserving Loss Function for
        Tubular Structure Segmentation", CVPR 2021.
    """

    def __init__(self, dice_weight=0.5, cldice_weight=0.0, name="dice_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= dice_weight <= 1.0:
            raise ValueError(f"dice_weight must be in [0, 1], got {dice_weight}")
        if not cldice_weight >= 0.0:
            raise ValueError(f"cldice_weight must be >= 0, got {cldice_weight}")
        self.dice_weight = float(dice_weight)
        self.cldice_weight = float(cldice_weight)

    def call(self, y_true, y_pred):
        y_true, weight = split_targets(tf.cast(y_true, tf.float32))
        y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1.0 - 1e-7)
        if y_pred.shape[-1] != y_true.shape[-1]:
            raise ValueError(f"{y_pred.shape[-1]} output channels but {y_true.shape[-1]} target masks")
        axes = [1, 2]  # per image and channel
        intersection = tf.reduce_sum(weight * y_true * y_pred, axis=axes)
        total = tf.reduce_sum(weight * y_true, axis=axes) + tf.reduce_sum(weight * y_pred, axis=axes)
        soft_dice = 1.0 - (2.0 * intersection + SMOOTH) / (total + SMOOTH)
        cross_entropy = -(y_true * tf.math.log(y_pred) + (1.0 - y_true) * tf.math.log(1.0 - y_pred))
        # Weighted mean over the pixels (the plain mean when every weight is 1).
        count = tf.cast(tf.reduce_prod(tf.shape(y_true)[1:3]), tf.float32)
        bce = tf.reduce_sum(weight * cross_entropy, axis=axes) / count
        loss = self.dice_weight * soft_dice + (1.0 - self.dice_weight) * bce
        if self.cldice_weight > 0.0:
            loss = loss + self.cldice_weight * (1.0 - soft_cldice(y_true, y_pred, weight, per_channel=True))
        if loss.shape[-1] == 1:
            return loss[:, 0]
        # A channel without weight has loss 0 (Dice (0 + 1) / (0 + 1), no
        # BCE, clDice 1): averaging over the weighted ones keeps it out.
        weighted = tf.cast(tf.reduce_sum(weight, axis=axes) > 0.0, tf.float32)
        return tf.reduce_sum(loss * weighted, axis=-1) / tf.maximum(tf.reduce_sum(weighted, axis=-1), 1.0)

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight, "cldice_weight": self.cldice_weight}
