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


def _soft_open(image):
    return _soft_dilate(_soft_erode(image))


def soft_skeleton(image, iterations=SOFT_SKELETON_ITERATIONS):
    """Soft skeleton of probabilities `[B, H, W, 1]` by iterated min/max
    pooling (Shit et al. 2021, Algorithm 1): what each successive erosion
    loses to an opening is added, so a binary mask gives (close to) its
    centreline and the operation has a gradient everywhere.
    """
    image = tf.cast(image, tf.float32)
    skeleton = tf.nn.relu(image - _soft_open(image))
    for _ in range(iterations):
        image = _soft_erode(image)
        delta = tf.nn.relu(image - _soft_open(image))
        skeleton = skeleton + tf.nn.relu(delta - skeleton * delta)
    return skeleton


def soft_cldice(y_true, y_pred, weight=None, iterations=SOFT_SKELETON_ITERATIONS):
    """Soft clDice per image (Shit et al. 2021): the harmonic mean of the
    share of the predicted soft skeleton inside the mask (Tprec) and of the
    mask's skeleton inside the prediction (Tsens), each smoothed by 1 pixel.
    `weight` (same shape, optional) counts each pixel by its weight.

    Returns:
        float32 `[B]`, in [0, 1]; 1 for identical binary masks.
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    weight = tf.ones_like(y_true) if weight is None else tf.cast(weight, tf.float32)
    axes = [1, 2, 3]
    skeleton_pred = weight * soft_skeleton(y_pred, iterations)
    skeleton_true = weight * soft_skeleton(y_true, iterations)
    precision = (tf.reduce_sum(skeleton_pred * y_true, axis=axes) + SMOOTH) / (
        tf.reduce_sum(skeleton_pred, axis=axes) + SMOOTH)
    sensitivity = (tf.reduce_sum(skeleton_true * y_pred, axis=axes) + SMOOTH) / (
        tf.reduce_sum(skeleton_true, axis=axes) + SMOOTH)
    return 2.0 * precision * sensitivity / (precision + sensitivity)


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
    pixel by its weight (weight 0: the pixel is ignored).

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
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1.0 - 1e-7)
        axes = [1, 2, 3]
        if y_true.shape[-1] == 2:
            y_true, weight = y_true[..., :1], y_true[..., 1:]
        else:
            weight = tf.ones_like(y_true)
        intersection = tf.reduce_sum(weight * y_true * y_pred, axis=axes)
        total = tf.reduce_sum(weight * y_true, axis=axes) + tf.reduce_sum(weight * y_pred, axis=axes)
        soft_dice = 1.0 - (2.0 * intersection + SMOOTH) / (total + SMOOTH)
        cross_entropy = -(y_true * tf.math.log(y_pred) + (1.0 - y_true) * tf.math.log(1.0 - y_pred))
        # Weighted mean over the pixels (the plain mean when every weight is 1).
        count = tf.cast(tf.reduce_prod(tf.shape(y_true)[1:]), tf.float32)
        bce = tf.reduce_sum(weight * cross_entropy, axis=axes) / count
        loss = self.dice_weight * soft_dice + (1.0 - self.dice_weight) * bce
        if self.cldice_weight > 0.0:
            loss = loss + self.cldice_weight * (1.0 - soft_cldice(y_true, y_pred, weight))
        return loss

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight, "cldice_weight": self.cldice_weight}
