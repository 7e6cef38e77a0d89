"""Per-image intensity normalisation of angiograms.

Angiograms differ in bit depth, window and exposure, and many carry a dark
collimator border (the circular field of view of the CIMAT images). Each
image is z-scored with the mean and standard deviation of the pixels inside
its field of view, so that the border neither drags the statistics nor
becomes a large negative region; pixels outside the field of view are set to
0 (the field of view's mean).

`normalize_angiogram` is written in TensorFlow ops so that the same code runs
in the tf.data pipeline, in eager numpy inference and inside exported
SavedModels.
"""

import numpy as np
import tensorflow as tf

# A pixel belongs to the field of view if it is brighter than this fraction of
# the image mean. Collimator borders sit near 0-20 on 8-bit images whose
# anatomy averages 80-110; contrast-filled vessels stay well above the cut.
FOV_FRACTION_OF_MEAN = 0.3
# If the cut keeps less than this fraction of the image, the image has no
# border worth excluding (or is mostly dark): use every pixel.
MIN_FOV_FRACTION = 0.5
EPSILON = 1e-6


def field_of_view(angiogram):
    """Boolean field-of-view mask of a raw-intensity angiogram.

    Args:
        angiogram: float tensor `[H, W, 1]` or `[B, H, W, 1]`, raw intensity.

    Returns:
        A boolean tensor of the same shape.
    """
    angiogram = tf.convert_to_tensor(angiogram, tf.float32)
    axes = [-3, -2, -1]
    mean = tf.reduce_mean(angiogram, axis=axes, keepdims=True)
    fov = angiogram > FOV_FRACTION_OF_MEAN * mean
    kept = tf.reduce_mean(tf.cast(fov, tf.float32), axis=axes, keepdims=True)
    return tf.logical_or(fov, kept < MIN_FOV_FRACTION)


def normalize_angiogram(angiogram):
    """Z-score an angiogram within its field of view.

    Args:
        angiogram: float tensor or array `[H, W, 1]` or `[B, H, W, 1]` in raw
            intensity (0..255, 0..65535 or DICOM units after the modality
            LUT); each image of a batch is normalised on its own.

    Returns:
        float32 tensor of the same shape: zero mean and unit variance inside
        the field of view, 0 outside.
    """
    angiogram = tf.convert_to_tensor(angiogram, tf.float32)
    axes = [-3, -2, -1]
    fov = tf.cast(field_of_view(angiogram), tf.float32)
    count = tf.maximum(tf.reduce_sum(fov, axis=axes, keepdims=True), 1.0)
    mean = tf.reduce_sum(angiogram * fov, axis=axes, keepdims=True) / count
    variance = tf.reduce_sum(tf.square(angiogram - mean) * fov, axis=axes, keepdims=True) / count
    # A flat image (all one value) has no contrast to keep: map it to zeros
    # instead of dividing by zero.
    normalized = (angiogram - mean) / tf.sqrt(variance + EPSILON)
    return normalized * fov


def apply_clahe(angiogram, clip_limit=2.0, tile_grid_size=8):
    """Contrast-limited adaptive histogram equalisation (optional).

    Runs in OpenCV on the host, before `normalize_angiogram`; it is not part
    of exported graphs.

    Args:
        angiogram: float array `[H, W]` in raw intensity.
        clip_limit: CLAHE clip limit.
        tile_grid_size: number of tiles per side.

    Returns:
        float32 array `[H, W]` in 0..255.
    """
    import cv2

    low, high = float(np.min(angiogram)), float(np.max(angiogram))
    scaled = np.zeros(angiogram.shape, np.uint8)
    if high > low:
        scaled = np.round((angiogram - low) * (255.0 / (high - low))).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid_size, tile_grid_size))
    return clahe.apply(scaled).astype(np.float32)
