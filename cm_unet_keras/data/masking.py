"""Patch masking of the online view: what the masked autoencoder must fill in.

A view `[B, H, W, 1]` is cut into non-overlapping `patch_size` squares;
each sample masks `round(mask_ratio * patches)` of them (count-exact, as
MAE's argsort of uniform noise), drawn from a stateless seed of its own, so
a sample gets the same mask whatever its batch, replica or resume point.
Masked pixels are set to 0 (the field of view's mean after z-scoring).
"""

import tensorflow as tf

# Offset that keeps the mask's random stream apart from the view sampler's
# streams when both are seeded with the same integer.
MASK_STREAM = 500


def patchify(images, patch_size):
    """`[B, H, W, 1]` images -> `[B, H/p, W/p, p*p]` non-overlapping patches."""
    shape = tf.shape(images)
    rows, cols = shape[1] // patch_size, shape[2] // patch_size
    patches = tf.reshape(images, [shape[0], rows, patch_size, cols, patch_size])
    patches = tf.transpose(patches, [0, 1, 3, 2, 4])
    return tf.reshape(patches, [shape[0], rows, cols, patch_size * patch_size])


def unpatchify(patches, patch_size, shape):
    """`[B, H/p, W/p, p*p]` patches -> `[B, H, W, 1]` images of static `shape` (inverse of `patchify`)."""
    batch, height, width = shape[0], shape[1], shape[2]
    rows, cols = height // patch_size, width // patch_size
    x = tf.reshape(patches, [batch, rows, cols, patch_size, patch_size])
    x = tf.transpose(x, [0, 1, 3, 2, 4])
    return tf.reshape(x, [batch, height, width, 1])


def masked_patch_count(grid_size, mask_ratio):
    """Number of masked patches per sample: `round(mask_ratio * patches)`."""
    return int(round(mask_ratio * grid_size[0] * grid_size[1]))


def random_patch_masks(sample_seeds, grid_size, mask_ratio):
    """One count-exact random patch mask per sample.

    Each sample ranks the patches by stateless uniform noise drawn from its
    own seed (MAE's argsort trick) and masks the first
    `round(mask_ratio * patches)`.

    Args:
        sample_seeds: int64 `[B, 2]`, one stateless seed per sample.
        grid_size: (rows, cols) of patches.
        mask_ratio: fraction of patches to mask.

    Returns:
        float32 `[B, rows, cols]`, 1 where the patch is masked.
    """
    rows, cols = grid_size
    patches = rows * cols
    masked = masked_patch_count(grid_size, mask_ratio)

    def one_mask(seed):
        noise = tf.random.stateless_uniform([patches], seed=seed)
        rank = tf.argsort(tf.argsort(noise))
        return tf.cast(rank < masked, tf.float32)

    masks = tf.map_fn(
        one_mask, tf.cast(sample_seeds, tf.int64), fn_output_signature=tf.float32
    )
    return tf.reshape(masks, [-1, rows, cols])


def sample_patch_masks(seed, sample_index, image_shape, patch_size, mask_ratio):
    """Patch masks `[B, rows, cols]` of the samples numbered `sample_index`.

    Sample `n` of a run seeded `seed` always gets the mask of the stateless
    seed `(seed * 1000 + MASK_STREAM, n)`.

    Args:
        seed: the run's integer seed.
        sample_index: int `[B]`, each sample's number in the stream.
        image_shape: static (height, width) of the views.
        patch_size: side of the patches.
        mask_ratio: fraction of patches to mask.
    """
    if image_shape[0] is None or image_shape[1] is None:
        raise ValueError("views need a static height and width (batch them with a fixed size)")
    if image_shape[0] % patch_size or image_shape[1] % patch_size:
        raise ValueError(f"view size {tuple(image_shape)} is not a multiple of patch_size {patch_size}")
    sample_index = tf.cast(sample_index, tf.int64)
    stream = tf.fill(tf.shape(sample_index), tf.cast(seed * 1000 + MASK_STREAM, tf.int64))
    grid = (image_shape[0] // patch_size, image_shape[1] // patch_size)
    return random_patch_masks(tf.stack([stream, sample_index], axis=-1), grid, mask_ratio)


def expand_patch_mask(patch_mask, patch_size):
    """`[B, rows, cols]` patch mask -> `[B, rows*p, cols*p, 1]` pixel mask."""
    pixels = tf.repeat(tf.repeat(patch_mask, patch_size, axis=1), patch_size, axis=2)
    return pixels[..., None]


def apply_patch_mask(views, patch_mask, patch_size):
    """`views` with the pixels of masked patches set to 0."""
    keep = 1.0 - expand_patch_mask(patch_mask, patch_size)
    return views * tf.cast(keep, views.dtype)
