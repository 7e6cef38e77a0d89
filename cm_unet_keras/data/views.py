"""Unlabeled angiograms -> pairs of views for contrastive masked pretraining.

Decoding is the slow part on a CPU (1,500 ARCADE PNGs of 512x512 take
longer to decode than a small U-Net takes to train on them), so each
angiogram is decoded once, in parallel, z-scored within its field of view
(`normalize_angiogram`, as for fine-tuning and inference), resized so that
its shorter side is the working size, and kept in memory as float16; the
array is cached in a file (keyed by the files, their modification times and
the working size) so that a resumed or repeated run skips decoding.

Sample `n` of the stream is drawn from stateless seeds `(seed, n)`, as the
supervised `PatchSampler`: the stream does not depend on parallelism, and a
run resumed at sample `n` sees what an uninterrupted run would have seen.
Within an epoch every angiogram is used once (a permutation seeded by the
epoch).

Two ways of drawing the two views (`ViewConfig.views`):

`"shift"`, the CMAE "pixel shift" of the original code:

1. One random resized crop (area 0.2-1.0 of the image, aspect 3/4-4/3) and a
   horizontal flip, resized to a canvas of `image_size + shift` pixels.
2. Online view: the canvas' top-left `image_size` square.
3. Target view: the square shifted by 0..shift pixels on each axis, plus
   Gaussian noise. `shift` is 31 px at 224 px and scales with `image_size`.

The two views then differ by at most 18 px at 128 px and a little noise:
with 31 negatives the contrastive branch finds the positive 87% of the time
and its loss ends near a tenth of the total (issue 13), too easy a task to
shape the encoder.

`"crops"` (SimCLR / BYOL-style, the CPU recipe's default since issue 13):

1. Two independent random resized crops of the same angiogram (each its own
   area, aspect and flip); the target crop's centre is drawn inside the
   online crop, so the views always overlap (by how much varies).
2. Each view gets its own intensity jitter, as X-ray exposures differ:
   brightness and contrast (+-`jitter` z-score units / factor) and gamma
   (exp(+-`jitter`)), each applied with probability 0.8.
3. The target view alone is blurred (probability `blur_probability`, sigma
   0.1-2 px) and gets the noise: the online view is also the
   reconstruction target, which blur would smear (BYOL blurs its views
   asymmetrically too).

Deviations from the original code:

- Noise sigma. The original adds noise of sigma `max(image) / 10` to
  images whose black level is 0, i.e. a tenth of their dynamic range. Our
  views are z-scored (mean 0 in the field of view), where `max / 10` would
  depend on the z-score's offset, so we use `noise_fraction * (max - min)`
  of the target view: the same noise-to-range ratio as the original on an
  8-bit image, unchanged by the affine z-score.
- Working size. The original squashes every image to 256x256 before the
  crop; we keep the aspect ratio (shorter side = `working_size`, 256 by
  default) and crop within each image's own extent.
- The crop's size is drawn once and clipped to the image, instead of
  torchvision's ten rejection-sampling tries; resizing is bilinear with
  anti-aliasing (the original: bicubic in Pillow).
"""

import dataclasses
import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import tensorflow as tf

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import iter_angiograms
from cm_unet_keras.data.normalize import normalize_angiogram_host
from cm_unet_keras.data.pipeline import gaussian_blur, seeded_stream

# The original code's pixel shift: 31 px on 224 px views.
REFERENCE_SHIFT = 31
REFERENCE_SIZE = 224

VIEW_MODES = ("shift", "crops")

# Independent random streams of one sample (see `TwoViewSampler._seed`).
_ORDER, _AREA, _ASPECT, _CORNER_Y, _CORNER_X, _FLIP, _SHIFT_Y, _SHIFT_X, _NOISE = range(9)
# The "crops" mode's second crop, and the jitter of view v at 30 + 10 v.
_AREA_B, _ASPECT_B, _CENTER_Y_B, _CENTER_X_B, _FLIP_B, _BLUR, _BLUR_SIGMA = range(20, 27)
_JITTER_STREAMS = 30

# Probability of each intensity jitter (brightness, contrast, gamma) in
# "crops" mode, as SimCLR's colour jitter; blur sigma range in pixels.
JITTER_PROBABILITY = 0.8
BLUR_SIGMA = (0.1, 2.0)


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """How the online and target views are drawn.

    Attributes:
        image_size: side of both views (a multiple of the patch size and of
            `2**depth`).
        crop_area: range of the crop's area, as a fraction of the image's.
        crop_aspect: range of the crop's width / height.
        flip: flip the crop horizontally with probability 0.5.
        max_shift: largest shift of the target view at 224 px; scaled to
            `image_size`.
        noise_fraction: target-view noise sigma as a fraction of the view's
            intensity range (max - min); 0 switches the noise off.
        views: `"shift"` (the original's one crop and a shifted copy) or
            `"crops"` (two overlapping crops with intensity jitter and blur);
            see the module docstring.
        jitter: `"crops"` only: strength of each view's brightness,
            contrast and gamma jitter; 0 switches it off.
        blur_probability: `"crops"` only: probability of blurring the
            target view.
    """

    image_size: int = 224
    crop_area: tuple = (0.2, 1.0)
    crop_aspect: tuple = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    max_shift: int = REFERENCE_SHIFT
    noise_fraction: float = 0.1
    views: str = "shift"
    jitter: float = 0.4
    blur_probability: float = 0.5

    def __post_init__(self):
        if self.views not in VIEW_MODES:
            raise ValueError(f"views must be one of {', '.join(VIEW_MODES)}, got {self.views!r}")

    @property
    def shift_pixels(self):
        """The target view's largest shift at `image_size`, in pixels."""
        return int(round(self.max_shift * self.image_size / REFERENCE_SIZE))


@dataclasses.dataclass(frozen=True)
class UnlabeledAngiograms:
    """Decoded, normalised angiograms padded into one array.

    Attributes:
        names: record names, in order.
        images: float16 `[N, H, W, 1]`, z-scored, zero-padded at the bottom
            and right to the largest image.
        sizes: int32 `[N, 2]`, each image's own (height, width).
        skipped: (path, problem) of records that could not be read.
    """

    names: list
    images: np.ndarray
    sizes: np.ndarray
    skipped: list = dataclasses.field(default_factory=list)

    def __len__(self):
        return len(self.names)


def preprocess_unlabeled(raw, working_size=None):
    """Raw `[H, W]` angiogram -> z-scored float32 `[h, w]` at the working size.

    The z-score is computed at native resolution (as fine-tuning and
    inference do), then the image is resized so that its shorter side is
    `working_size` (area interpolation when shrinking); None or 0 keeps it.
    """
    normalized = normalize_angiogram_host(raw)
    if not working_size:
        return normalized
    height, width = normalized.shape
    scale = working_size / min(height, width)
    if scale == 1.0:
        return normalized
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(normalized, new_size, interpolation=interpolation)


def load_unlabeled(records, working_size=256, cache_dir=None, workers=None,
                   skip_invalid=False, log=None):
    """Decode, normalise and resize unlabeled angiograms, once.

    Args:
        records: `AngiogramRecord`s (from `index_unlabeled`).
        working_size: shorter side after resizing; None or 0 keeps native sizes.
        cache_dir: folder for the decoded array; reused when the records,
            their files' sizes and modification times and `working_size`
            are unchanged. None: no cache.
        workers: decoding threads (OpenCV and TensorFlow release the GIL);
            default: the number of CPUs.
        skip_invalid: leave out unreadable files (listed in `skipped`)
            instead of raising.
        log: print-like function for progress, or None.

    Returns:
        An `UnlabeledAngiograms`.

    Raises:
        InvalidInputError: a file is unreadable (unless `skip_invalid`), or
            no angiogram is left.
    """
    records = list(records)
    if not records:
        raise InvalidInputError("(no records)", "no unlabeled angiograms to load")
    key = _cache_key(records, working_size)
    cache = Path(cache_dir) / f"angiograms_{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if log:
                log(f"loaded {len(stored['names'])} decoded angiograms from {cache}")
            return UnlabeledAngiograms(
                list(stored["names"]), stored["images"], stored["sizes"],
                [tuple(pair) for pair in stored["skipped"].tolist()],
            )

    def decode(file_records):
        # One file per task: a cine run's frames come from one read of it.
        images = []
        for _, raw in iter_angiograms(file_records):
            if isinstance(raw, InvalidInputError) and not skip_invalid:
                raise raw
            images.append(raw if isinstance(raw, InvalidInputError) else preprocess_unlabeled(raw, working_size))
        return images

    if log:
        log(f"decoding {len(records)} angiograms (once; cached for later runs)")
    started = time.perf_counter()
    by_file = [list(group) for _, group in itertools.groupby(records, key=lambda record: record.image_path)]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        decoded = [image for images in pool.map(decode, by_file) for image in images]
    if log:
        log(f"decoded in {time.perf_counter() - started:.0f} s")
    names, images, skipped = [], [], []
    for record, image in zip(records, decoded):
        if isinstance(image, InvalidInputError):
            skipped.append((image.path, image.problem))
        else:
            names.append(record.name)
            images.append(image)
    if not images:
        raise InvalidInputError(records[0].image_path, "none of the angiograms could be read")
    stacked, sizes = _stack_padded(images)
    angiograms = UnlabeledAngiograms(names, stacked, sizes, skipped)
    if cache is not None:
        _save_cache(cache, angiograms)
    return angiograms


def _cache_key(records, working_size):
    """Hash of what the decoded array depends on."""
    digest = hashlib.sha1(json.dumps({"working_size": working_size}).encode())
    for record in records:
        try:
            stat = os.stat(record.image_path)
            signature = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            signature = None
        digest.update(json.dumps([record.name, os.path.abspath(record.image_path),
                                  record.frame, signature]).encode())
    return digest.hexdigest()[:16]


def _save_cache(path, angiograms):
    """Write the cache atomically: a killed run leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(
                file,
                names=np.array(angiograms.names, dtype=str),
                images=angiograms.images,
                sizes=angiograms.sizes,
                skipped=np.array(angiograms.skipped, dtype=str).reshape(-1, 2),
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache need not be
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _stack_padded(images):
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    # float16 halves the memory; z-scored values keep ~3 significant digits.
    stacked = np.zeros((len(images), height, width, 1), np.float16)
    sizes = np.zeros((len(images), 2), np.int32)
    for index, image in enumerate(images):
        stacked[index, : image.shape[0], : image.shape[1], 0] = image
        sizes[index] = image.shape
    return stacked, sizes


class TwoViewSampler:
    """Draws (online view, target view) pairs from in-memory angiograms.

    Args:
        angiograms: an `UnlabeledAngiograms`.
        config: a `ViewConfig`.
        seed: integer seed of the whole stream.
        samples_per_epoch: samples in one epoch (steps x global batch); each
            epoch walks a fresh permutation of the angiograms (wrapping
            around when it holds more samples than angiograms).
    """

    def __init__(self, angiograms, config, seed=0, samples_per_epoch=None):
        if len(angiograms) == 0:
            raise ValueError("no angiograms to draw views from")
        self.images = tf.constant(angiograms.images)
        self.sizes = tf.constant(angiograms.sizes)
        self.count = len(angiograms)
        self.config = config
        self.seed = int(seed)
        self.samples_per_epoch = int(samples_per_epoch or self.count)

    def _seed(self, sample_index, stream):
        # One independent stateless seed per (sample, purpose).
        return tf.stack([tf.cast(self.seed, tf.int64) * 1000 + stream, sample_index])

    def _uniform(self, sample_index, stream, low=0.0, high=1.0):
        return tf.random.stateless_uniform(
            [], seed=self._seed(sample_index, stream), minval=low, maxval=high
        )

    def _random_int(self, sample_index, stream, upper):
        """Uniform integer in [0, upper]."""
        upper = tf.cast(upper, tf.int32)
        draw = tf.cast(self._uniform(sample_index, stream) * tf.cast(upper + 1, tf.float32), tf.int32)
        return tf.minimum(draw, upper)

    def image_index(self, sample_index):
        """Which angiogram sample `sample_index` is drawn from."""
        epoch = sample_index // self.samples_per_epoch
        position = tf.cast(sample_index % self.samples_per_epoch, tf.int32) % self.count
        noise = tf.random.stateless_uniform(
            [self.count], seed=tf.stack([tf.cast(self.seed, tf.int64) * 1000 + _ORDER, epoch])
        )
        return tf.argsort(noise)[position]

    def _crop_size(self, sample_index, size, area_stream, aspect_stream):
        """(height, width) of a random crop of an image of `size`."""
        config = self.config
        height, width = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
        area = height * width * self._uniform(sample_index, area_stream, *config.crop_area)
        log_aspect = self._uniform(
            sample_index, aspect_stream, math.log(config.crop_aspect[0]), math.log(config.crop_aspect[1])
        )
        aspect = tf.exp(log_aspect)
        crop_width = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32), 1, size[1])
        crop_height = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32), 1, size[0])
        return crop_height, crop_width

    def _resized(self, sample_index, image_index, box, side, flip_stream):
        """The `box` (top, left, height, width) of an image, resized to `side` and maybe flipped."""
        top, left, height, width = box
        crop = self.images[image_index, top : top + height, left : left + width]
        view = tf.image.resize(tf.cast(crop, tf.float32), [side, side], method="bilinear", antialias=True)
        if self.config.flip:
            view = tf.cond(
                self._uniform(sample_index, flip_stream) < 0.5, lambda: tf.reverse(view, [1]), lambda: view
            )
        return view

    def crop_boxes(self, sample_index, image_index):
        """(top, left, height, width) of the online crop and, in "crops" mode,
        of the target crop (whose centre lies inside the online crop)."""
        size = self.sizes[image_index]
        height, width = self._crop_size(sample_index, size, _AREA, _ASPECT)
        top = self._random_int(sample_index, _CORNER_Y, size[0] - height)
        left = self._random_int(sample_index, _CORNER_X, size[1] - width)
        online = (top, left, height, width)
        if self.config.views != "crops":
            return online, None
        height_b, width_b = self._crop_size(sample_index, size, _AREA_B, _ASPECT_B)
        center_y = top + self._random_int(sample_index, _CENTER_Y_B, height - 1)
        center_x = left + self._random_int(sample_index, _CENTER_X_B, width - 1)
        top_b = tf.clip_by_value(center_y - height_b // 2, 0, size[0] - height_b)
        left_b = tf.clip_by_value(center_x - width_b // 2, 0, size[1] - width_b)
        return online, (top_b, left_b, height_b, width_b)

    def _jitter(self, view, sample_index, which):
        """Brightness, contrast and gamma jitter of view `which` (0 or 1)."""
        strength = float(self.config.jitter)
        if strength <= 0:
            return view
        base = _JITTER_STREAMS + 10 * which

        def chance(offset):
            return self._uniform(sample_index, base + offset) < JITTER_PROBABILITY

        shift = self._uniform(sample_index, base + 1, -strength, strength)
        view = tf.where(chance(0), view + shift, view)
        factor = self._uniform(sample_index, base + 3, 1.0 - strength, 1.0 + strength)
        mean = tf.reduce_mean(view)
        view = tf.where(chance(2), (view - mean) * factor + mean, view)
        gamma = tf.exp(self._uniform(sample_index, base + 5, -strength, strength))
        low, high = tf.reduce_min(view), tf.reduce_max(view)
        span = tf.maximum(high - low, 1e-6)
        view = tf.where(chance(4), tf.pow((view - low) / span, gamma) * span + low, view)
        return view

    def _blur(self, view, sample_index):
        sigma = self._uniform(sample_index, _BLUR_SIGMA, *BLUR_SIGMA)
        return tf.cond(
            self._uniform(sample_index, _BLUR) < self.config.blur_probability,
            lambda: gaussian_blur(view, sigma, radius=int(math.ceil(2 * BLUR_SIGMA[1]))),
            lambda: view,
        )

    def _noisy(self, view, sample_index):
        if self.config.noise_fraction <= 0:
            return view
        sigma = self.config.noise_fraction * (tf.reduce_max(view) - tf.reduce_min(view))
        noise = tf.random.stateless_normal(tf.shape(view), seed=self._seed(sample_index, _NOISE))
        return view + sigma * noise

    def _shift_views(self, sample_index, image_index):
        config = self.config
        size, shift = config.image_size, config.shift_pixels
        box, _ = self.crop_boxes(sample_index, image_index)
        canvas = self._resized(sample_index, image_index, box, size + shift, _FLIP)
        online = canvas[:size, :size]
        dy = self._random_int(sample_index, _SHIFT_Y, shift)
        dx = self._random_int(sample_index, _SHIFT_X, shift)
        return online, self._noisy(canvas[dy : dy + size, dx : dx + size], sample_index)

    def _crop_views(self, sample_index, image_index):
        size = self.config.image_size
        online_box, target_box = self.crop_boxes(sample_index, image_index)
        online = self._resized(sample_index, image_index, online_box, size, _FLIP)
        target = self._resized(sample_index, image_index, target_box, size, _FLIP_B)
        online = self._jitter(online, sample_index, 0)
        target = self._noisy(self._blur(self._jitter(target, sample_index, 1), sample_index), sample_index)
        return online, target

    def sample(self, sample_index):
        """Sample `sample_index` of the stream.

        Returns:
            dict: `online` and `target` float32 `[S, S, 1]` views and
            `sample_index` (int64, which seeds the sample's mask).
        """
        sample_index = tf.cast(sample_index, tf.int64)
        size = self.config.image_size
        draw = self._crop_views if self.config.views == "crops" else self._shift_views
        online, target = draw(sample_index, self.image_index(sample_index))
        return {
            "online": tf.ensure_shape(online, [size, size, 1]),
            "target": tf.ensure_shape(target, [size, size, 1]),
            "sample_index": sample_index,
        }

    def dataset(self, batch_size, start_sample=0):
        """An infinite, batched, prefetched `tf.data.Dataset` of view pairs."""
        return seeded_stream(self.sample, batch_size, start_sample)


def unlabeled_summary(angiograms: UnlabeledAngiograms, working_size: Optional[int]):
    """One line describing what was loaded, for logs."""
    height, width = angiograms.images.shape[1:3]
    megabytes = angiograms.images.nbytes / 2**20
    scale = f"shorter side {working_size} px" if working_size else "native resolution"
    return (
        f"{len(angiograms)} angiograms in memory at {scale} "
        f"(array {height}x{width}, {megabytes:.0f} MiB)"
        + (f"; {len(angiograms.skipped)} unreadable skipped" if angiograms.skipped else "")
    )
