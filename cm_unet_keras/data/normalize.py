"""Per-image intensity normalisation of angiograms.

Angiograms differ in bit depth, window and exposure, and many carry a dark
collimator border (the circular field of view of the CIMAT images). Each
image is z-scored with the mean and standard deviation of the pixels inside
its field of view, so that the border neither drags the statistics nor
becomes a large negative region; pixels outside the field of view are set to
0 (the field of view's mean).

`normalize_angiogram` is written in TensorFlow ops so that the same code runs
inside exported SavedModels and ONNX graphs. `normalize_angiogram_host` is
the same computation in OpenCV and numpy for one image on the host (data
loading, `predict`, `segment`): its field of view is identical, its values
agree to float32 rounding, and it costs about a hundredth of the TensorFlow
ops' time on a CPU (`benchmarks/throughput.py --end-to-end`).
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
# Only dark regions with a part wider than a square of this half-width are
# outside the field of view: contrast-filled vessel cores can be darker than
# the cut (18.7% of the vessel pixels of the XCAD sample, and up to 16% of an
# ARCADE image's, fell outside it), and a hole in the field of view is a hole
# in the normalised image and in the prediction. Collimator borders are much
# wider than any vessel. Their thin parts (the corners where a collimator
# disc meets the image edge) are kept by growing the wide parts, and the
# dark runs at least as long along the image edge, back within the dark
# pixels, up to this many pixels (opening by reconstruction).
FOV_MIN_DARK_HALF_WIDTH = 16
FOV_RECONSTRUCTION_STEPS = 48
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
    dark = tf.cast(angiogram <= FOV_FRACTION_OF_MEAN * mean, tf.float32)
    fov = 1.0 - _wide_dark_regions(dark)
    kept = tf.reduce_mean(fov, axis=axes, keepdims=True)
    return tf.logical_or(fov > 0.5, kept < MIN_FOV_FRACTION)


def _square_max(mask, half_width):
    """Max over a (2 h + 1)-square around each pixel of `[B, H, W, 1]`, as two 1-D passes.

    SAME max-pooling ignores the padded border: pixels beyond it neither
    add to a dilation nor take from an erosion.
    """
    size = 2 * half_width + 1
    return _pooled(mask, [1, size], [size, 1], padding="SAME")


def _is_edge(length):
    """1.0 at the first and last of `length` positions, 0.0 between."""
    index = tf.range(length)
    return tf.cast(tf.logical_or(tf.equal(index, 0), tf.equal(index, length - 1)), tf.float32)


def _pad(mask, rows, columns, value):
    return tf.pad(mask, [[0, 0], [rows, rows], [columns, columns], [0, 0]], constant_values=value)


def _pooled(mask, *windows, padding="VALID"):
    """Max-pooling of `[B, H, W, 1]` by each window in turn."""
    for window in windows:
        mask = tf.nn.max_pool2d(mask, window, 1, padding)
    return mask


def _erode(mask, half_width):
    return -_square_max(-mask, half_width)


def _wide_dark_regions(dark, half_width=FOV_MIN_DARK_HALF_WIDTH, steps=FOV_RECONSTRUCTION_STEPS):
    """The dark regions of a 0/1 float mask (`[H, W, 1]` or `[B, H, W, 1]`) that have a wide part.

    Seeds: an opening by a (2 h + 1)-square, whose erosion counts pixels
    beyond the image border as dark (a border strip cut by the image edge is
    as wide as its visible part), and the dark runs of at least 2 h + 1
    pixels along the image's edge rows and columns (the small corners a
    collimator disc leaves). They are grown inside `dark` one pixel a step,
    for `steps` steps. Thin dark structures (vessels) are not reached unless
    they touch a wide region. A fixed count of TensorFlow ops: it runs in the
    exported graphs.
    """
    single = dark.shape.rank == 3
    batch = dark[None] if single else dark
    size = 2 * half_width + 1
    eroded = -_pooled(-_pad(batch, half_width, half_width, 1.0), [1, size], [size, 1])
    wide = _square_max(eroded, half_width)
    # Runs along the edges: 1-D openings, kept on the first/last row and column.
    rows = _pooled(-_pooled(-_pad(batch, 0, half_width, 1.0), [1, size]), [1, size], padding="SAME")
    columns = _pooled(-_pooled(-_pad(batch, half_width, 0, 1.0), [size, 1]), [size, 1], padding="SAME")
    shape = tf.shape(batch)
    edge_rows = tf.reshape(_is_edge(shape[1]), [1, -1, 1, 1])
    edge_columns = tf.reshape(_is_edge(shape[2]), [1, 1, -1, 1])
    wide = tf.maximum(wide, tf.maximum(rows * edge_rows, columns * edge_columns))
    for _ in range(steps):
        wide = tf.minimum(tf.nn.max_pool2d(wide, 3, 1, "SAME"), batch)
    return wide[0] if single else wide


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
    eroded = _erode(fov[None] if single else fov, margin)
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


def field_of_view_host(angiogram):
    """`field_of_view` of one `[H, W]` (or `[H, W, 1]`) angiogram, in OpenCV.

    The same rule and the same result: the square openings and the edge
    runs are OpenCV erosions and dilations of the 0/1 dark mask (pixels
    beyond the image border count as dark for the erosions and are ignored
    by the dilations, as the padded and SAME max-poolings do), and the
    reconstruction stops at its fixed point instead of always taking
    `FOV_RECONSTRUCTION_STEPS` steps (every further step is the identity).

    Returns:
        A boolean array of the input's shape.
    """
    import cv2

    angiogram = np.asarray(angiogram, np.float32)
    image = angiogram[..., 0] if angiogram.ndim == 3 else angiogram
    if image.ndim != 2:
        raise ValueError(f"field_of_view_host expects [H, W] or [H, W, 1], got shape {angiogram.shape}")
    mean = np.float32(np.mean(image, dtype=np.float64))
    dark = (image <= np.float32(FOV_FRACTION_OF_MEAN) * mean).astype(np.uint8)
    size = 2 * FOV_MIN_DARK_HALF_WIDTH + 1
    square, row, column = (np.ones(shape, np.uint8) for shape in ((size, size), (1, size), (size, 1)))

    def opening(mask, kernel):
        eroded = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
        return cv2.dilate(eroded, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)

    wide = opening(dark, square)
    edge_rows = opening(dark[[0, -1], :], row)
    edge_columns = opening(np.ascontiguousarray(dark[:, [0, -1]]), column)
    wide[[0, -1], :] |= edge_rows
    wide[:, [0, -1]] |= edge_columns
    step = np.ones((3, 3), np.uint8)
    for _ in range(FOV_RECONSTRUCTION_STEPS):
        grown = cv2.dilate(wide, step, borderType=cv2.BORDER_CONSTANT, borderValue=0) & dark
        if np.array_equal(grown, wide):
            break
        wide = grown
    fov = wide == 0
    if np.mean(fov, dtype=np.float64) < MIN_FOV_FRACTION:
        fov[:] = True
    return fov.reshape(angiogram.shape)


def normalize_angiogram_host(angiogram, return_fov=False):
    """`normalize_angiogram` of one `[H, W, 1]` (or `[H, W]`) angiogram, in numpy.

    Same field of view (`field_of_view_host`); the mean and variance are
    summed in float64, so values agree with the TensorFlow ops to float32
    rounding (about 1e-6).

    Returns:
        float32 array of the input's shape; with `return_fov`,
        `(normalized, fov)` with a boolean field of view.
    """
    angiogram = np.asarray(angiogram, np.float32)
    inside = field_of_view_host(angiogram)
    count = max(int(np.count_nonzero(inside)), 1)
    values = angiogram[inside].astype(np.float64)
    mean = values.sum() / count
    variance = np.square(values - mean).sum() / count
    scale = np.float32(1.0 / np.sqrt(np.float32(variance) + EPSILON))
    normalized = (angiogram - np.float32(mean)) * scale
    normalized[~inside] = 0.0
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
