"""tf.data pipelines for supervised training on labelled angiograms.

Labelled sets in this field are small (3 to a few hundred pairs), so each
pair is decoded once, in parallel, normalised and held in memory; training
then draws random patches at native resolution (thin vessels are 1-3 px
wide and would vanish if whole angiograms were resized), augments them in
the float domain and batches them.

Every random choice of training sample `n` is drawn from stateless ops seeded
by `(seed, n)`: the stream is the same whatever the parallelism, and a run
resumed at step `s` continues with exactly the samples an uninterrupted run
would have drawn (`start_sample`).
"""

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import tensorflow as tf

from cm_unet_keras.data.conventions import convention_rank
from cm_unet_keras.data.layouts import read_pair
from cm_unet_keras.data.normalize import apply_clahe, normalize_angiogram_host


@dataclasses.dataclass(frozen=True)
class LabelledAngiogram:
    """One decoded, normalised angiogram and its vessel mask.

    Attributes:
        name: the record's name.
        angiogram: float32 `[H, W, 1]`, normalised.
        vessel_mask: uint8 `[H, W, 1]` of 0/1.
        fov: bool `[H, W, 1]` field of view (None: the whole image).
        loss_weight: float32 `[H, W, 1]` per-pixel loss weight (None: 1
            everywhere); partially labelled pairs down-weight or ignore
            their unlabelled background (`partial_label_weights`).
        convention: the mask convention of `vessel_mask`
            (`data.conventions.CONVENTIONS`), or None if not known.
    """

    name: str
    angiogram: np.ndarray
    vessel_mask: np.ndarray
    fov: Optional[np.ndarray] = None
    loss_weight: Optional[np.ndarray] = None
    convention: Optional[str] = None


# Black top-hat (dark, thin structures) above this many standard deviations
# of the normalised angiogram marks a pixel as vessel-like. On 12 pairs of
# ARCADE's training part (`recipes/arcade_split.json`) a 21 px disc flags
# 58% of the annotated main-segment pixels and 6.5% of the rest (0.5: 78%
# and 17%; 1.0: 40% and 3.9%); side branches, thinner, are flagged more.
VESSEL_LIKE_TOPHAT = 0.75
VESSEL_LIKE_KERNEL = 21


def vessel_like(normalized, kernel=VESSEL_LIKE_KERNEL, threshold=VESSEL_LIKE_TOPHAT):
    """bool `[H, W]`: dark thin structures of a normalised `[H, W]` angiogram
    (black top-hat by a `kernel`-px disc above `threshold`)."""
    import cv2

    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    tophat = cv2.morphologyEx(np.ascontiguousarray(normalized, np.float32), cv2.MORPH_BLACKHAT, disc)
    return tophat > threshold


def implied_targets(mask, weight, convention_rank, channel_ranks):
    """Targets of each output of a multi-convention model, from a mask of one convention.

    The conventions nest as sets of vessel pixels (syntax ⊆ tree ⊆
    tree_catheter), so a mask in convention A says something about every
    output B: B = A is supervised as the mask says (with its own weights,
    e.g. `partial_label_weights`); for A ⊆ B, A's vessel pixels are B's
    vessels too (B: A's positives, weight 0 elsewhere); for B ⊆ A, A's
    background is B's background too (B: A's negatives, weight 0
    elsewhere).

    Args:
        mask: float32 `[..., 1]` 0/1 mask in the record's convention.
        weight: float32 `[..., 1]` its per-pixel loss weight (ones for a
            complete mask).
        convention_rank: the record's `data.conventions.convention_rank`.
        channel_ranks: int `[C]`, the rank of each output's convention.

    Returns:
        float32 `[..., 2C]`: the C outputs' masks, then their C weights
        (what `DiceBCELoss` reads).
    """
    mask = tf.cast(mask, tf.float32)
    weight = tf.cast(weight, tf.float32)
    ranks = tf.cast(channel_ranks, tf.int32)
    rank = tf.cast(convention_rank, tf.int32)
    same = tf.cast(ranks == rank, tf.float32)
    wider = tf.cast(ranks > rank, tf.float32)
    narrower = tf.cast(ranks < rank, tf.float32)
    masks = mask * (1.0 - narrower)
    weights = weight * (same + wider * mask + narrower * (1.0 - mask))
    return tf.concat([masks, weights], axis=-1)


def partial_label_weights(normalized, vessel_mask, background_weight=1.0, ignore_vessel_like=False, margin=2):
    """Per-pixel loss weights of a pair whose mask labels only some vessels.

    Labelled vessel pixels weigh 1. Background pixels weigh
    `background_weight`; with `ignore_vessel_like`, unlabelled pixels that
    look like vessels (`vessel_like`, farther than `margin` px from a
    labelled vessel, whose edges stay supervised) weigh 0: the side branches
    such a mask leaves out are neither taught as background nor as vessel.

    Args:
        normalized: float32 `[H, W]` or `[H, W, 1]` normalised angiogram.
        vessel_mask: `[H, W]` or `[H, W, 1]` 0/1 mask.

    Returns:
        float32 `[H, W, 1]`.
    """
    import cv2

    image = np.asarray(normalized, np.float32).reshape(np.shape(normalized)[:2])
    mask = np.asarray(vessel_mask).reshape(image.shape) > 0
    weights = np.where(mask, 1.0, float(background_weight)).astype(np.float32)
    if ignore_vessel_like:
        near = cv2.dilate(mask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
        weights[vessel_like(image) & ~near] = 0.0
    return weights[..., None]


def preprocess_angiogram(raw, clahe=False, return_fov=False):
    """Raw-intensity `[H, W]` angiogram -> normalised float32 `[H, W, 1]`.

    With `return_fov`, `(normalized, fov)` with the boolean `[H, W, 1]`
    field of view.
    """
    if clahe:
        raw = apply_clahe(raw)
    normalized, fov = normalize_angiogram_host(np.asarray(raw, np.float32)[..., None], return_fov=True)
    return (normalized, fov) if return_fov else normalized


def load_labelled(records, clahe=False, workers=4, partial=None):
    """Decode and normalise labelled records in parallel.

    Args:
        records: `AngiogramRecord`s with masks.
        clahe: apply CLAHE before normalisation.
        workers: decoding threads (OpenCV releases the GIL).
        partial: None for complete masks, or a dict of
            `partial_label_weights` arguments (`background_weight`,
            `ignore_vessel_like`) for masks that label only some vessels.

    Returns:
        A list of `LabelledAngiogram`, in the order of `records`.
    """

    def load(record):
        raw, mask = read_pair(record)
        normalized, fov = preprocess_angiogram(raw, clahe, return_fov=True)
        weight = None if partial is None else partial_label_weights(normalized, mask, **partial)
        return LabelledAngiogram(record.name, normalized, mask[..., None].astype(np.uint8), fov, weight,
                                 record.convention)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(load, records))


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Magnitudes of the training augmentations.

    `strength` scales every intensity augmentation at once (0 switches them
    off; geometric flips and rotations stay on unless `geometric` is False).
    All work on normalised float images: nothing is clipped to [0, 1] (the
    original code's albumentations transforms clipped z-scored images).
    """

    strength: float = 1.0
    geometric: bool = True
    brightness: float = 0.2  # additive shift, in standard deviations
    contrast: float = 0.25  # multiplicative factor range 1 +- contrast
    gamma: float = 0.3  # log-gamma range
    noise: float = 0.1  # max std of additive Gaussian noise
    blur_probability: float = 0.2
    blur_sigma: tuple = (0.5, 1.2)
    probability: float = 0.5  # of each intensity augmentation
    # Zoom range (log-uniform): a patch of patch_size / s pixels is resized
    # to patch_size, so s > 1 widens the vessels; (1, 1) crops at native scale.
    scale: tuple = (1.0, 1.0)
    # Probability of a simulated dark frame border or collimator edge (a
    # straight band along a side, or the outside of a circle) painted over
    # the patch, labelled background.
    border_probability: float = 0.0


def _stack_padded(items, patch_size):
    """Pad every image to a common size (at least one patch) and stack.

    Returns (images float32, masks uint8, weights float16 or None, sizes)."""
    height = max(max(item.angiogram.shape[0] for item in items), patch_size)
    width = max(max(item.angiogram.shape[1] for item in items), patch_size)
    images = np.zeros((len(items), height, width, 1), np.float32)
    masks = np.zeros((len(items), height, width, 1), np.uint8)
    weighted = any(item.loss_weight is not None for item in items)
    weights = np.zeros((len(items), height, width, 1), np.float16) if weighted else None
    sizes = np.zeros((len(items), 2), np.int32)
    for i, item in enumerate(items):
        h, w = item.angiogram.shape[:2]
        images[i, :h, :w] = item.angiogram
        masks[i, :h, :w] = item.vessel_mask
        if weighted:
            weights[i, :h, :w] = 1.0 if item.loss_weight is None else item.loss_weight
        sizes[i] = (h, w)
    return images, masks, weights, sizes


class PatchSampler:
    """Draws random augmented training patches from in-memory angiograms.

    Args:
        items: `LabelledAngiogram`s.
        patch_size: side of the square patches.
        seed: integer seed of the whole stream.
        foreground_fraction: fraction of patches centred on a vessel pixel
            (nnU-Net's oversampling); the rest are placed uniformly.
        augment: an `AugmentConfig`, or None for no augmentation.
        image_weights: relative chance of drawing each item (None: equal),
            e.g. to balance two sources of different sizes.
        conventions: the outputs of a multi-convention model (a tuple of
            convention names), or None for one output. Every item must then
            have a `convention`.

    Patches are `(angiogram [P, P, 1], label)`; `label` is the vessel mask
    `[P, P, 1]`, or `[P, P, 2]` (mask, per-pixel loss weight) when any item
    has a `loss_weight` (`DiceBCELoss` reads both layouts); with
    `conventions`, `[P, P, 2C]` (`implied_targets`).
    """

    def __init__(self, items, patch_size, seed=0, foreground_fraction=0.33, augment=None, image_weights=None,
                 conventions=None):
        if not items:
            raise ValueError("no labelled angiograms to sample patches from")
        self.channel_ranks = None
        if conventions is not None:
            unknown = [item.name for item in items if item.convention is None]
            if unknown:
                raise ValueError(f"{len(unknown)} pairs have no mask convention ({', '.join(unknown[:3])}"
                                 f"{', ...' if len(unknown) > 3 else ''}): a model with one output per convention "
                                 "needs each pair's")
            self.channel_ranks = tf.constant([convention_rank(name) for name in conventions], tf.int32)
            self.ranks = tf.constant([convention_rank(item.convention) for item in items], tf.int32)
        images, masks, weights, sizes = _stack_padded(items, patch_size)
        self.images = tf.constant(images)
        self.masks = tf.constant(masks)
        self.weights = None if weights is None else tf.constant(weights)
        self.sizes = tf.constant(sizes)
        self.count = len(items)
        self.patch_size = patch_size
        self.seed = int(seed)
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment
        self.cumulative = None
        if image_weights is not None:
            image_weights = np.asarray(image_weights, np.float64)
            if image_weights.shape != (self.count,) or (image_weights < 0).any() or image_weights.sum() <= 0:
                raise ValueError(f"image_weights must be {self.count} non-negative numbers, not all 0")
            self.cumulative = tf.constant(np.cumsum(image_weights / image_weights.sum())[:-1], tf.float32)

    def _seed(self, sample_index, stream):
        # One independent stateless seed per (sample, purpose).
        return tf.stack([tf.cast(self.seed, tf.int64) * 1000 + stream, sample_index])

    def _rand(self, sample_index, stream, minval=0.0, maxval=1.0):
        return tf.random.stateless_uniform(
            [], seed=self._seed(sample_index, stream), minval=minval, maxval=maxval
        )

    def _image_index(self, sample_index):
        draw = self._rand(sample_index, 1)
        if self.cumulative is not None:
            return tf.cast(tf.searchsorted(self.cumulative, draw[None], side="right")[0], tf.int32)
        return tf.minimum(tf.cast(draw * self.count, tf.int32), self.count - 1)

    def _crop_side(self, sample_index, image_index):
        """Side of the square cut before resizing to the patch size."""
        p = self.patch_size
        scale = self.augment.scale if self.augment is not None else (1.0, 1.0)
        if tuple(scale) == (1.0, 1.0):
            return p
        log_scale = self._rand(sample_index, 6, float(np.log(scale[0])), float(np.log(scale[1])))
        side = tf.cast(tf.round(p / tf.exp(log_scale)), tf.int32)
        smallest = tf.reduce_min(self.sizes[image_index])
        return tf.clip_by_value(side, 8, tf.maximum(smallest, 8))

    def _corner(self, sample_index, image_index, side):
        size = self.sizes[image_index]
        max_y = tf.maximum(size[0] - side, 0)
        max_x = tf.maximum(size[1] - side, 0)
        uniform_y = tf.cast(self._rand(sample_index, 2) * tf.cast(max_y + 1, tf.float32), tf.int32)
        uniform_x = tf.cast(self._rand(sample_index, 3) * tf.cast(max_x + 1, tf.float32), tf.int32)

        def centred_on_vessel():
            vessels = tf.where(self.masks[image_index, :, :, 0] > 0)
            pick = tf.cast(
                self._rand(sample_index, 4) * tf.cast(tf.shape(vessels)[0], tf.float32), tf.int32
            )
            centre = tf.cast(vessels[pick], tf.int32)
            y = tf.clip_by_value(centre[0] - side // 2, 0, max_y)
            x = tf.clip_by_value(centre[1] - side // 2, 0, max_x)
            return y, x

        has_vessels = tf.reduce_any(self.masks[image_index] > 0)
        want_vessel = self._rand(sample_index, 5) < self.foreground_fraction
        return tf.cond(
            tf.logical_and(has_vessels, want_vessel),
            centred_on_vessel,
            lambda: (uniform_y, uniform_x),
        )

    def sample(self, sample_index):
        """Patch `sample_index` of the stream: (angiogram, label float32)."""
        sample_index = tf.cast(sample_index, tf.int64)
        image_index = self._image_index(sample_index)
        p = self.patch_size
        side = self._crop_side(sample_index, image_index)
        y, x = self._corner(sample_index, image_index, side)
        image = self.images[image_index, y : y + side, x : x + side]
        label = tf.cast(self.masks[image_index, y : y + side, x : x + side], tf.float32)
        if self.weights is not None:
            weight = tf.cast(self.weights[image_index, y : y + side, x : x + side], tf.float32)
            label = tf.concat([label, weight], axis=-1)
        if not isinstance(side, int):  # zoomed: resize the cut to the patch size
            image = tf.image.resize(image, [p, p], method="bilinear", antialias=True)
            label = tf.image.resize(label, [p, p], method="bilinear", antialias=True)
            mask = tf.cast(label[..., :1] >= 0.5, tf.float32)
            label = tf.concat([mask, label[..., 1:]], axis=-1) if self.weights is not None else mask
        channels = 1 if self.weights is None else 2
        image = tf.ensure_shape(image, [p, p, 1])
        label = tf.ensure_shape(label, [p, p, channels])
        if self.channel_ranks is not None:
            weight = tf.ones_like(label) if self.weights is None else label[..., 1:]
            label = implied_targets(label[..., :1], weight, self.ranks[image_index], self.channel_ranks)
        if self.augment is not None:
            image, label = augment_patch(image, label, self.augment, lambda s: self._seed(sample_index, 10 + s))
        return image, label

    def dataset(self, batch_size, start_sample=0):
        """An infinite, batched, prefetched `tf.data.Dataset` of patches."""
        return seeded_stream(self.sample, batch_size, start_sample)


def seeded_stream(sample, batch_size, start_sample=0):
    """Batches of `sample(n)` for n = start_sample, start_sample + 1, ...

    Each element depends only on its index, so the stream is the same at
    any parallelism and resumes exactly at `start_sample`.
    """
    return (
        tf.data.Dataset.counter(start=start_sample, dtype=tf.int64)
        .map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def gaussian_blur(image, sigma, radius=2):
    """`[H, W, 1]` image blurred by a Gaussian of `sigma` px (a tensor is
    fine), truncated at `radius` px, with mirrored borders."""
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel_1d = tf.exp(-0.5 * tf.square(offsets / sigma))
    kernel_1d = kernel_1d / tf.reduce_sum(kernel_1d)
    kernel = tf.tensordot(kernel_1d, kernel_1d, axes=0)[:, :, None, None]
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    return tf.nn.conv2d(padded, kernel, strides=1, padding="VALID")[0]


def paint_border(image, label, uniform):
    """A dark frame border or collimator edge over a patch, labelled background.

    Half the time a straight band along one side (2 px to a third of the
    patch wide), else the outside of a circle whose edge crosses the patch;
    its intensity is below the patch's darkest pixel (as an unexposed border
    is darker than contrast-filled vessels) with a soft edge of 1-6 px.
    Vessel labels under it are cleared; loss-weight channels there become
    1 (the border is known background, in every convention).

    Args:
        image: `[P, P, 1]`; label: `[P, P, 1]` (a mask) or `[P, P, 2C]` (C
            masks, then their C weights).
        uniform: `uniform(stream, low, high)` drawing stateless scalars.
    """
    p = float(image.shape[0])
    coords = tf.range(image.shape[0], dtype=tf.float32)
    rows, cols = coords[:, None], coords[None, :]
    ramp = uniform(24, 1.0, 6.0)

    def band():
        width = uniform(22, 2.0, p / 3.0)
        distances = tf.stack([rows + 0.0 * cols, cols + 0.0 * rows, p - 1.0 - rows + 0.0 * cols,
                              p - 1.0 - cols + 0.0 * rows])
        side = tf.minimum(tf.cast(uniform(21) * 4.0, tf.int32), 3)
        return tf.clip_by_value((width - tf.gather(distances, side)) / ramp + 0.5, 0.0, 1.0)

    def circle():
        angle = uniform(25, 0.0, 2.0 * np.pi)
        reach = uniform(26, 0.6 * p, 2.0 * p)  # circle centre's distance from the patch centre
        centre_y, centre_x = p / 2.0 + reach * tf.sin(angle), p / 2.0 + reach * tf.cos(angle)
        radius = reach + uniform(27, -p / 3.0, p / 3.0)
        distance = tf.sqrt(tf.square(rows - centre_y) + tf.square(cols - centre_x))
        return tf.clip_by_value((distance - radius) / ramp + 0.5, 0.0, 1.0)

    alpha = tf.cond(uniform(23) < 0.5, band, circle)[..., None]
    dark = tf.reduce_min(image) - uniform(28, 0.2, 1.5)
    image = image * (1.0 - alpha) + dark * alpha
    covered = tf.cast(alpha >= 0.5, tf.float32)
    masks = max(label.shape[-1] // 2, 1)
    mask = label[..., :masks] * (1.0 - covered)
    rest = label[..., masks:]
    rest = tf.maximum(rest, covered) if label.shape[-1] > 1 else rest
    return image, tf.concat([mask, rest], axis=-1)


def augment_patch(image, mask, config, seed_for):
    """Augment one normalised patch and its mask with stateless randomness.

    Args:
        image: float32 `[P, P, 1]`, normalised.
        mask: float32 `[P, P, K]`: the mask, then any weights (every channel
            follows the geometric transforms; see `paint_border`).
        config: an `AugmentConfig`.
        seed_for: callable mapping a small integer to a stateless seed.

    Returns:
        The augmented (image, mask).
    """

    def uniform(stream, low=0.0, high=1.0):
        return tf.random.stateless_uniform([], seed=seed_for(stream), minval=low, maxval=high)

    if config.geometric:
        pair = tf.concat([image, mask], axis=-1)
        pair = tf.cond(uniform(0) < 0.5, lambda: tf.reverse(pair, [1]), lambda: pair)
        pair = tf.cond(uniform(1) < 0.5, lambda: tf.reverse(pair, [0]), lambda: pair)
        pair = tf.image.rot90(pair, k=tf.cast(uniform(2) * 4.0, tf.int32) % 4)
        image, mask = pair[..., :1], pair[..., 1:]

    if config.border_probability > 0:
        image, mask = tf.cond(
            uniform(20) < config.border_probability,
            lambda: paint_border(image, mask, uniform),
            lambda: (image, mask),
        )

    s = float(config.strength)
    if s <= 0:
        return image, mask
    p = config.probability

    shift = uniform(4, -config.brightness * s, config.brightness * s)
    image = tf.where(uniform(3) < p, image + shift, image)

    factor = uniform(6, 1.0 - config.contrast * s, 1.0 + config.contrast * s)
    mean = tf.reduce_mean(image)
    image = tf.where(uniform(5) < p, (image - mean) * factor + mean, image)

    # Gamma acts on [0, 1]: rescale the patch there and back, so that the
    # z-scored range is kept rather than clipped.
    gamma = tf.exp(uniform(8, -config.gamma * s, config.gamma * s))
    low, high = tf.reduce_min(image), tf.reduce_max(image)
    span = tf.maximum(high - low, 1e-6)
    gamma_image = tf.pow((image - low) / span, gamma) * span + low
    image = tf.where(uniform(7) < p, gamma_image, image)

    noise_std = uniform(10, 0.0, config.noise * s)
    noise = tf.random.stateless_normal(tf.shape(image), seed=seed_for(11)) * noise_std
    image = tf.where(uniform(9) < p, image + noise, image)

    sigma = uniform(13, config.blur_sigma[0], config.blur_sigma[1])
    image = tf.cond(
        uniform(12) < config.blur_probability * min(s, 1.0),
        lambda: gaussian_blur(image, sigma),
        lambda: image,
    )
    return image, mask

