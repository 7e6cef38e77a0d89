"""Segmentation losses, computed in float32 whatever the compute precision."""

import keras
import tensorflow as tf

SMOOTH = 1.0


@keras.saving.register_keras_serializable(package="cm_unet_keras")
class DiceBCELoss(keras.losses.Loss):
    """`dice_weight * soft Dice + (1 - dice_weight) * binary cross-entropy`.

    The Dice term is computed on probabilities, per image, with a smoothing
    of 1 pixel, so it has a gradient everywhere (the original code computed
    Dice on thresholded predictions: zero gradient, so its "Dice + CE" was
    cross-entropy alone). Both terms are computed in float32, which keeps a
    512x512 all-vessel patch finite under mixed precision.

    `y_true` is the mask `[B, H, W, 1]`, or `[B, H, W, 2]` with a per-pixel
    loss weight as second channel (partially labelled pairs,
    `data.pipeline.partial_label_weights`): both terms then count each
    pixel by its weight (weight 0: the pixel is ignored).

    Args:
        dice_weight: weight of the soft Dice term in [0, 1].
    """

    def __init__(self, dice_weight=0.5, name="dice_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= dice_weight <= 1.0:
            raise ValueError(f"dice_weight must be in [0, 1], got {dice_weight}")
        self.dice_weight = float(dice_weight)

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
        return self.dice_weight * soft_dice + (1.0 - self.dice_weight) * bce

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight}
