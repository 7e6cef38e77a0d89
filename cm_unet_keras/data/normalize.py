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
# Predictions are kept only inside the field of view shrunk by this many
# pixels: the collimator rim is the strongest edge of a CIMAT angiogram and
# the U-Nets trace it as a vessel. Chosen on the XCA validation pairs
# (`benchmarks/inference/results.md`: 0, 2, 4 and 8 px tried; 4 best). The
# image border is not a rim: an angiogram without collimator loses nothing.
FOV_MARGIN = 4


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


def prediction_region(fov, margin=FOV_MARGIN):
    """Where predictions are kept: the field of view shrunk by `margin` px.

    A square erosion (Chebyshev distance) in TensorFlow ops, so that it runs
    in the exported graphs; pixels beyond the image border count as inside,
    so only the collimator rim is shrunk.

    Args:
        fov: boolean `[B, H, W, 1]` (or `[H, W, 1]`) field-of-view mask.
        margin: pixels to shrink by (0 keeps the field of view as it is).

    Returns:
        float32 tensor of 0/1, same shape.
    """
    fov = tf.cast(fov, tf.float32)
    if margin <= 0:
        return fov
    single = fov.shape.rank == 3
    batch = fov[None] if single else fov
    size = 2 * margin + 1
    # min-pool = -max-pool(-x); SAME max-pooling ignores the padded border.
    eroded = -tf.nn.max_pool2d(-batch, ksize=size, strides=1, padding="SAME")
    return eroded[0] if single else eroded


def normalize_angiogram(angiogram, return_fov=False):
    """Z-score an angiogram within its field of view.

    Args:
        angiogram: float tensor or array `[H, W, 1]` or `[B, H, W, 1]` in raw
            intensity (0..255, 0..65535 or DICOM units after the modality
            LUT); each image of a batch is normalised on its own.
        return_fov: also return the boolean field-of-view mask.

    Returns:
        float32 tensor of the same shape: zero mean and unit variance inside
        the field of view, 0 outside; with `return_fov`, `(normalized, fov)`.
    """
    angiogram = tf.convert_to_tensor(angiogram, tf.float32)
    axes = [-3, -2, -1]
    inside = field_of_view(angiogram)
    fov = tf.cast(inside, tf.float32)
    count = tf.maximum(tf.reduce_sum(fov, axis=axes, keepdims=True), 1.0)
    mean = tf.reduce_sum(angiogram * fov, axis=axes, keepdims=True) / count
    variance = tf.reduce_sum(tf.square(angiogram - mean) * fov, axis=axes, keepdims=True) / count
    # A flat image (all one value) has no contrast to keep: map it to zeros
    # instead of dividing by zero.
    normalized = (angiogram - mean) / tf.sqrt(variance + EPSILON) * fov
    return (normalized, inside) if return_fov else normalized


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
