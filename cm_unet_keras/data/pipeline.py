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

from cm_unet_keras.data.layouts import read_pair
from cm_unet_keras.data.normalize import apply_clahe, normalize_angiogram


@dataclasses.dataclass(frozen=True)
class LabelledAngiogram:
    """One decoded, normalised angiogram and its vessel mask.

    Attributes:
        name: the record's name.
        angiogram: float32 `[H, W, 1]`, normalised.
        vessel_mask: uint8 `[H, W, 1]` of 0/1.
        fov: bool `[H, W, 1]` field of view (None: the whole image).
    """

    name: str
    angiogram: np.ndarray
    vessel_mask: np.ndarray
    fov: Optional[np.ndarray] = None


def preprocess_angiogram(raw, clahe=False, return_fov=False):
    """Raw-intensity `[H, W]` angiogram -> normalised float32 `[H, W, 1]`.

    With `return_fov`, `(normalized, fov)` with the boolean `[H, W, 1]`
    field of view.
    """
    if clahe:
        raw = apply_clahe(raw)
    normalized, fov = normalize_angiogram(raw[..., None], return_fov=True)
    return (normalized.numpy(), fov.numpy()) if return_fov else normalized.numpy()


def load_labelled(records, clahe=False, workers=4):
    """Decode and normalise labelled records in parallel.

    Args:
        records: `AngiogramRecord`s with masks.
        clahe: apply CLAHE before normalisation.
        workers: decoding threads (OpenCV releases the GIL).

    Returns:
        A list of `LabelledAngiogram`, in the order of `records`.
    """

    def load(record):
        raw, mask = read_pair(record)
        normalized, fov = preprocess_angiogram(raw, clahe, return_fov=True)
        return LabelledAngiogram(record.name, normalized, mask[..., None].astype(np.uint8), fov)

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


def _stack_padded(items, patch_size):
    """Pad every image to a common size (at least one patch) and stack."""
    height = max(max(item.angiogram.shape[0] for item in items), patch_size)
    width = max(max(item.angiogram.shape[1] for item in items), patch_size)
    images = np.zeros((len(items), height, width, 1), np.float32)
    masks = np.zeros((len(items), height, width, 1), np.uint8)
    sizes = np.zeros((len(items), 2), np.int32)
    for i, item in enumerate(items):
        h, w = item.angiogram.shape[:2]
        images[i, :h, :w] = item.angiogram
        masks[i, :h, :w] = item.vessel_mask
        sizes[i] = (h, w)
    return images, masks, sizes


class PatchSampler:
    """Draws random augmented training patches from in-memory angiograms.

    Args:
        items: `LabelledAngiogram`s.
        patch_size: side of the square patches.
        seed: integer seed of the whole stream.
        foreground_fraction: fraction of patches centred on a vessel pixel
            (nnU-Net's oversampling); the rest are placed uniformly.
        augment: an `AugmentConfig`, or None for no augmentation.
    """

    def __init__(self, items, patch_size, seed=0, foreground_fraction=0.33, augment=None):
        if not items:
            raise ValueError("no labelled angiograms to sample patches from")
        images, masks, sizes = _stack_padded(items, patch_size)
        self.images = tf.constant(images)
        self.masks = tf.constant(masks)
        self.sizes = tf.constant(sizes)
        self.count = len(items)
        self.patch_size = patch_size
        self.seed = int(seed)
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment

    def _seed(self, sample_index, stream):
        # One independent stateless seed per (sample, purpose).
        return tf.stack([tf.cast(self.seed, tf.int64) * 1000 + stream, sample_index])

    def _rand(self, sample_index, stream, minval=0.0, maxval=1.0):
        return tf.random.stateless_uniform(
            [], seed=self._seed(sample_index, stream), minval=minval, maxval=maxval
        )

    def _corner(self, sample_index, image_index):
        size = self.sizes[image_index]
        p = self.patch_size
        max_y = tf.maximum(size[0] - p, 0)
        max_x = tf.maximum(size[1] - p, 0)
        uniform_y = tf.cast(self._rand(sample_index, 2) * tf.cast(max_y + 1, tf.float32), tf.int32)
        uniform_x = tf.cast(self._rand(sample_index, 3) * tf.cast(max_x + 1, tf.float32), tf.int32)

        def centred_on_vessel():
            vessels = tf.where(self.masks[image_index, :, :, 0] > 0)
            pick = tf.cast(
                self._rand(sample_index, 4) * tf.cast(tf.shape(vessels)[0], tf.float32), tf.int32
            )
            centre = tf.cast(vessels[pick], tf.int32)
            y = tf.clip_by_value(centre[0] - p // 2, 0, max_y)
            x = tf.clip_by_value(centre[1] - p // 2, 0, max_x)
            return y, x

        has_vessels = tf.reduce_any(self.masks[image_index] > 0)
        want_vessel = self._rand(sample_index, 5) < self.foreground_fraction
        return tf.cond(
            tf.logical_and(has_vessels, want_vessel),
            centred_on_vessel,
            lambda: (uniform_y, uniform_x),
        )

    def sample(self, sample_index):
        """Patch `sample_index` of the stream: (angiogram, vessel_mask float32)."""
        sample_index = tf.cast(sample_index, tf.int64)
        image_index = tf.cast(self._rand(sample_index, 1) * self.count, tf.int32)
        image_index = tf.minimum(image_index, self.count - 1)
        y, x = self._corner(sample_index, image_index)
        p = self.patch_size
        image = self.images[image_index, y : y + p, x : x + p]
        mask = tf.cast(self.masks[image_index, y : y + p, x : x + p], tf.float32)
        image = tf.ensure_shape(image, [p, p, 1])
        mask = tf.ensure_shape(mask, [p, p, 1])
        if self.augment is not None:
            image, mask = augment_patch(image, mask, self.augment, lambda s: self._seed(sample_index, 10 + s))
        return image, mask

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


def augment_patch(image, mask, config, seed_for):
    """Augment one normalised patch and its mask with stateless randomness.

    Args:
        image: float32 `[P, P, 1]`, normalised.
        mask: float32 `[P, P, 1]`.
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

