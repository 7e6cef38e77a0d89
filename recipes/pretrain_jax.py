"""CM-UNet pretraining on an accelerator that has JAX but no TensorFlow.

The package pretrains with TensorFlow (`cm-unet pretrain`). The GPU machine
lent to this project has JAX but no TensorFlow and no network (its Python
packages travel as wheels of at most 64 MiB, TensorFlow is far larger), so
this recipe runs the same method on Keras 3's JAX backend:

- the networks are the package's own: `CMUNet` with the pretrainer's
  reconstruction head, projector, predictor and EMA target, built by
  `cm_unet_keras.models.pretrainer_networks` (imported without the
  package's TensorFlow start-up) as `ContrastiveMaskedPretrainer` builds them;
- the step (`JaxStep`) is `ContrastiveMaskedPretrainer.train_step` written
  for JAX: MSE to the per-patch-normalised view over the masked patches,
  InfoNCE (tau, x 2 tau) of the predictor's output against the EMA target's
  embeddings of the whole batch, `keras.optimizers.AdamW`'s arithmetic
  (betas 0.9/0.95, decay 0.05 except biases and BatchNorm) with linear
  warm-up from 1e-4 x lr, then cosine to 0, and the EMA update after the
  optimizer step;
- the masks are per-sample and count-exact (MAE's argsort of uniform noise);
- the views are `TwoViewSampler`'s "crops" mode written in JAX (two
  overlapping random resized crops, each flipped and intensity-jittered on
  its own, the target blurred and noisy), drawn on the accelerator.

`check-step` runs one step from weights, views and masks given in a file:
tests/test_pretrain_jax.py gives it the TensorFlow pretrainer's and finds
the same losses (to 1e-5), the same gradients (1e-5 apart at the output, up
to a few 1e-2 at the first levels, where TensorFlow's gradients lie as far
from themselves computed with Keras' BatchNorm instead of its fused kernel),
the same AdamW and EMA update on the same gradients (to 1e-6), the same
learning-rate schedule, and count-exact masks. The views are not compared
(they are a rewrite of `TwoViewSampler`'s, read line by line).

What differs from `cm-unet pretrain`, and why:

- Random streams: JAX's generator, not TensorFlow's stateless seeds, so the
  views and masks are other draws of the same distributions.
- The angiograms travel as 8-bit JPEG (quality 95) of the z-scored images
  at working size (`pack`, 25 MiB): the 1,530 decoded float16 arrays
  (200 MB) do not fit the machine's 64 MiB of carried files. Quantisation
  and JPEG change a pixel by 0.06 z-score units RMS on the 1,530 ARCADE and
  CIMAT angiograms, against a target-view noise sigma near 0.8.
- A view's outermost pixels: `jax.image.scale_and_translate` reads the
  image just outside the crop where `tf.image.resize` of the cropped array
  renormalises its antialiasing kernel inside it; inside a 2 px margin the
  two resizes agree to 3e-6.
- The `--minutes` budget sizes the schedule from a probe of the step (no
  checkpoints: the run is one call on a borrowed machine).

Three steps (the first and last here, with TensorFlow):

    # 1. the angiograms a `cm-unet pretrain` run decoded (its cache/), packed
    python recipes/pretrain_jax.py pack runs/label_efficiency/pretrain/cmunet/cache/angiograms_*.npz \\
        .gpudata/angiograms.npz
    # 2. on the accelerator (Keras, optree and namex carried as wheels; no TensorFlow)
    KERAS_BACKEND=jax python recipes/pretrain_jax.py train .gpudata/angiograms.npz $OUT \\
        --batch-size 256 --minutes 7
    # 3. a pretraining run folder that `--init` and the study take
    python recipes/pretrain_jax.py import $OUT runs/pretrain_gpu/batch256
"""

import argparse
import csv
import importlib.abc
import json
import math
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stored pixel = round((z + OFFSET) * SCALE): z-scores in [-5.3, 5.3] on 8 bits.
SCALE, OFFSET = 24.0, 5.3
JPEG_QUALITY = 95
# What `train` writes and `import` reads: the online and the target
# networks' weights (two files: the device returns files of at most 16 MiB),
# and the run's settings with its history.
ONLINE = ("online_network", "projector", "predictor")
TARGET = ("target_encoder", "target_projector")
WEIGHTS = {"online": ONLINE, "target": TARGET}
SETTINGS = "pretrain_jax.json"
HISTORY = "history.csv"


# --- pack (TensorFlow machine) ------------------------------------------------
def pack(cache, out):
    """A `load_unlabeled` cache (float16 z-scores) -> JPEG bytes of 8-bit images."""
    import cv2
    import numpy as np

    with np.load(cache, allow_pickle=False) as stored:
        images, sizes, names = stored["images"], stored["sizes"], stored["names"]
    if len(set(map(tuple, sizes.tolist()))) != 1:
        raise SystemExit(f"{cache}: the angiograms have several sizes; pack expects one working size")
    blobs, errors = [], []
    for image in images[..., 0].astype(np.float32):
        quantised = np.clip(np.round((image + OFFSET) * SCALE), 0, 255).astype(np.uint8)
        ok, blob = cv2.imencode(".jpg", quantised, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise SystemExit(f"{cache}: JPEG encoding failed")
        decoded = cv2.imdecode(blob, cv2.IMREAD_GRAYSCALE).astype(np.float32) / SCALE - OFFSET
        errors.append(float(np.sqrt(np.mean((decoded - image) ** 2))))
        blobs.append(blob.ravel())
    offsets = np.cumsum([0] + [len(blob) for blob in blobs])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, jpeg=np.concatenate(blobs), offsets=offsets, names=names, scale=SCALE, offset=OFFSET)
    print(f"{len(blobs)} angiograms {images.shape[1]}x{images.shape[2]} -> {out} "
          f"({offsets[-1] / 2**20:.1f} MiB); RMS change {np.mean(errors):.3f} z-units (max {np.max(errors):.3f})")


def unpack(path):
    import cv2
    import numpy as np

    with np.load(path, allow_pickle=False) as stored:
        jpeg, offsets = stored["jpeg"], stored["offsets"]
        scale, offset = float(stored["scale"]), float(stored["offset"])
    images = [cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_GRAYSCALE) for i in range(len(offsets) - 1)]
    return np.stack(images), scale, offset


# --- the networks (either backend) --------------------------------------------
def _package_without_tensorflow():
    """Make `cm_unet_keras.models` importable without running the package's
    __init__ (which needs TensorFlow), with a one-device BatchNorm off TensorFlow."""
    if "cm_unet_keras" not in sys.modules:
        package = types.ModuleType("cm_unet_keras")
        package.__path__ = [str(ROOT / "cm_unet_keras")]
        sys.modules["cm_unet_keras"] = package
    import keras

    from cm_unet_keras.models import layers

    if keras.backend.backend() != "tensorflow" and layers.BatchNormalization.__name__ != "_OneDeviceBatchNorm":
        # The U-Net asks for synchronised BatchNorm (global-batch statistics
        # over replicas), which Keras implements on TensorFlow only; on one
        # device it is plain BatchNorm.
        class _OneDeviceBatchNorm(keras.layers.BatchNormalization):
            def __init__(self, synchronized=False, **kwargs):
                super().__init__(**kwargs)

        layers.BatchNormalization = _OneDeviceBatchNorm


def build_networks(base_filters, depth, projection_dim=256):
    """online_network, projector, predictor, target_encoder, target_projector:
    `ContrastiveMaskedPretrainer`'s sub-networks (`models.pretrainer_networks`)."""
    _package_without_tensorflow()
    from cm_unet_keras.models.pretrainer_networks import pretrainer_networks

    networks = pretrainer_networks(base_filters, depth, projection_dim)
    networks.pop("unet")  # its layers are the online network's
    return networks


def layer_weights(networks, keys):
    """{"network/layer/index": array} of every layer holding weights in `networks[keys]`."""
    import numpy as np

    stored = {}
    for key in keys:
        model = networks[key]
        for layer in model.layers:
            if layer.weights:
                for index, value in enumerate(layer.get_weights()):
                    stored[f"{key}/{layer.name}/{index}"] = np.asarray(value, np.float32)
    return stored


def trainable_names(networks):
    """{network: the `layer_weights` name of each trainable variable, in `trainable_variables` order}."""
    names = {}
    for key in ONLINE:
        model = networks[key]
        by_id = {id(w): f"{key}/{layer.name}/{i}" for layer in model.layers for i, w in enumerate(layer.weights)}
        names[key] = [by_id[id(v)] for v in model.trainable_variables]
    return names


def load_layer_weights(networks, stored, source):
    """Set every weight of `networks` from `stored` (`layer_weights`' names); the names used."""
    used = set()
    for key, model in networks.items():
        for layer in model.layers:
            if not layer.weights:
                continue
            names = [f"{key}/{layer.name}/{i}" for i in range(len(layer.weights))]
            missing = [name for name in names if name not in stored]
            if missing:
                raise SystemExit(f"{source}: no weights for {missing[0]}")
            layer.set_weights([stored[name] for name in names])
            used.update(names)
    return used


# --- the pretrainer's step (JAX) ------------------------------------------------
# What `cm-unet pretrain` compiles (`training.pretrain.make_optimizer`, which
# imports TensorFlow): `keras.optimizers.AdamW` with its default epsilon, no
# decay on the variables named as `training.run.NO_DECAY` names them.
ADAM_EPSILON = 1e-7
NO_DECAY = ("bias", "gamma", "beta")


def ema_pairs(networks):
    """(target network, variable number, online network, variable number) of every
    averaged weight, matched by layer name as `ContrastiveMaskedPretrainer._ema_pairs`."""
    number = {id(v): (key, i) for key in ONLINE for i, v in enumerate(networks[key].trainable_variables)}
    pairs = []
    for target_key, online_key in zip(TARGET, ONLINE[:2]):
        target_number = {id(v): i for i, v in enumerate(networks[target_key].trainable_variables)}
        for layer in networks[target_key].layers:
            if layer.trainable_weights:
                online_layer = networks[online_key].get_layer(layer.name)
                for target, online in zip(layer.trainable_weights, online_layer.trainable_weights):
                    pairs.append((target_key, target_number[id(target)]) + number[id(online)])
    return pairs


def patchify(images, patch_size):
    """`[B, H, W, 1]` -> `[B, H/p, W/p, p*p]`, as `cm_unet_keras.data.masking.patchify`."""
    batch, height, width = images.shape[:3]
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, rows, patch_size, cols, patch_size).transpose(0, 1, 3, 2, 4)
    return patches.reshape(batch, rows, cols, patch_size * patch_size)


def reconstruction_loss(reconstruction, view, mask, patch_size):
    """`models.losses.masked_reconstruction_loss`: MSE to the per-patch normalised view, masked patches only."""
    import jax.numpy as jnp

    target = patchify(view.astype(jnp.float32), patch_size)
    mean = target.mean(-1, keepdims=True)
    variance = ((target - mean) ** 2).sum(-1, keepdims=True) / (patch_size * patch_size - 1)
    target = (target - mean) / jnp.sqrt(variance + 1e-6)
    error = ((patchify(reconstruction.astype(jnp.float32), patch_size) - target) ** 2).mean(-1)
    return (error * mask).sum() / mask.sum()


def info_nce(query, keys, temperature):
    """`models.losses.info_nce` on one device (query i's positive is key i): (mean loss, top-1)."""
    import jax
    import jax.numpy as jnp

    query = query / jnp.maximum(jnp.linalg.norm(query, axis=-1, keepdims=True), 1e-12)
    keys = keys / jnp.maximum(jnp.linalg.norm(keys, axis=-1, keepdims=True), 1e-12)
    logits = query @ keys.T / temperature
    labels = jnp.arange(query.shape[0])
    loss = -jax.nn.log_softmax(logits)[labels, labels]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return loss.mean() * 2 * temperature, correct.mean()


def pooled(features):
    return features.astype("float32").mean(axis=(1, 2))


def patch_masks(key, batch, grid, masked_count):
    """Count-exact patch masks `[B, grid, grid]` (MAE's argsort of uniform noise), JAX's draws."""
    import jax
    import jax.numpy as jnp

    rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, grid * grid)), axis=-1), axis=-1)
    return (rank < masked_count).astype(jnp.float32).reshape(batch, grid, grid)


def learning_rate(step, peak, total, warmup, start_factor=1e-4):
    """`training.schedules.WarmupCosine` (linear warm-up from `start_factor` x peak, cosine to 0)."""
    import jax.numpy as jnp

    step = jnp.asarray(step, jnp.float32)
    total, warmup = jnp.maximum(total, 1), jnp.clip(warmup, 0, jnp.maximum(total, 1))
    warm = peak * (start_factor + (1 - start_factor) * jnp.minimum(step / jnp.maximum(warmup, 1), 1.0))
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1), 0.0, 1.0)
    return jnp.where(step < warmup, warm, peak * 0.5 * (1 + jnp.cos(math.pi * progress)))


class JaxStep:
    """`ContrastiveMaskedPretrainer.train_step` on Keras' JAX backend, as pure functions of a state.

    The state is a dict of arrays: `params` and `buffers` (trainable and other
    variables of the online networks), `target` and `target_buffers` (of the
    EMA target), AdamW's `moments` and `velocities`, and `step` (the
    optimizer's iterations). Views and masks are arguments: `train` draws
    them; `check-step` takes the TensorFlow pretrainer's, so that
    tests/test_pretrain_jax.py can compare the two steps.

    Args:
        networks: `build_networks`' sub-networks.
        patch_size, temperature, rc_weight, ct_weight, ema_momentum: as
            `ContrastiveMaskedPretrainer`'s.
        weight_decay, beta_1, beta_2: as `PretrainConfig`'s.
    """

    def __init__(self, networks, patch_size=16, temperature=0.07, rc_weight=1.0, ct_weight=1.0,
                 ema_momentum=0.996, weight_decay=0.05, beta_1=0.9, beta_2=0.95):
        self.networks = networks
        self.patch_size, self.temperature = patch_size, temperature
        self.rc_weight, self.ct_weight, self.ema_momentum = rc_weight, ct_weight, ema_momentum
        self.weight_decay, self.beta_1, self.beta_2 = weight_decay, beta_1, beta_2
        self.pairs = ema_pairs(networks)
        self.decays = {key: [not any(word in v.name for word in NO_DECAY) for v in networks[key].trainable_variables]
                       for key in ONLINE}

    def initial_state(self, step=0):
        """The networks' variables as a state (the optimizer's moments at 0, at iteration `step`)."""
        import jax.numpy as jnp

        def values(keys, kind):
            return {key: [v.value for v in getattr(self.networks[key], kind)] for key in keys}

        params = values(ONLINE, "trainable_variables")
        return {"params": params, "buffers": values(ONLINE, "non_trainable_variables"),
                "target": values(TARGET, "trainable_variables"),
                "target_buffers": values(TARGET, "non_trainable_variables"),
                "moments": {key: [jnp.zeros_like(p) for p in params[key]] for key in ONLINE},
                "velocities": {key: [jnp.zeros_like(p) for p in params[key]] for key in ONLINE},
                "step": jnp.asarray(step, jnp.int32)}

    def assign(self, state):
        """Write `state`'s weights into the networks' variables."""
        for keys, trainable, other in ((ONLINE, "params", "buffers"), (TARGET, "target", "target_buffers")):
            for key in keys:
                model = self.networks[key]
                for variable, value in zip(model.trainable_variables, state[trainable][key]):
                    variable.assign(value)
                for variable, value in zip(model.non_trainable_variables, state[other][key]):
                    variable.assign(value)

    def target_keys(self, state, target_view):
        """`target_embedding(training=True)`: the EMA target's projections (no gradient), and
        its updated BatchNorm statistics."""
        import jax
        import jax.numpy as jnp

        encoder, projector = (self.networks[key] for key in TARGET)
        features, encoder_buffers = encoder.stateless_call(
            state["target"]["target_encoder"], state["target_buffers"]["target_encoder"], target_view, training=True)
        embedding, projector_buffers = projector.stateless_call(
            state["target"]["target_projector"], state["target_buffers"]["target_projector"], pooled(features),
            training=True)
        buffers = {"target_encoder": encoder_buffers, "target_projector": projector_buffers}
        return jax.lax.stop_gradient(embedding.astype(jnp.float32)), buffers

    def losses(self, params, buffers, online_view, mask, keys):
        """`compute_losses(training=True)`: (loss, (updated buffers, the four metrics))."""
        import jax.numpy as jnp

        online, projector, predictor = (self.networks[key] for key in ONLINE)
        patch = self.patch_size
        pixel_mask = jnp.repeat(jnp.repeat(mask, patch, 1), patch, 2)[..., None]
        masked = online_view * (1.0 - pixel_mask).astype(online_view.dtype)
        outputs, online_buffers = online.stateless_call(params["online_network"], buffers["online_network"],
                                                        masked, training=True)
        rc = reconstruction_loss(outputs["reconstruction"], online_view, mask, patch)
        projected, projector_buffers = projector.stateless_call(params["projector"], buffers["projector"],
                                                                pooled(outputs["bottleneck"]), training=True)
        query, predictor_buffers = predictor.stateless_call(params["predictor"], buffers["predictor"],
                                                            projected, training=True)
        ct, accuracy = info_nce(query.astype(jnp.float32), keys, self.temperature)
        loss = self.rc_weight * rc + self.ct_weight * ct
        buffers = {"online_network": online_buffers, "projector": projector_buffers, "predictor": predictor_buffers}
        return loss, (buffers, {"loss": loss, "reconstruction_loss": rc, "contrastive_loss": ct,
                                "contrastive_accuracy": accuracy})

    def apply_gradients(self, state, grads, lr):
        """`keras.optimizers.AdamW`'s step: decoupled decay, then Adam with Keras' epsilon
        (added to sqrt(v), not to sqrt(v / (1 - beta_2^t)) as optax adds it)."""
        import jax.numpy as jnp

        t = (state["step"] + 1).astype(jnp.float32)
        alpha = lr * jnp.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        new = {"params": {}, "moments": {}, "velocities": {}}
        for key in ONLINE:
            rows = zip(state["params"][key], grads[key], state["moments"][key], state["velocities"][key],
                       self.decays[key])
            for name in new:
                new[name][key] = []
            for p, g, m, v, decays in rows:
                if decays:
                    p = p - p * self.weight_decay * lr
                m = m + (g - m) * (1 - self.beta_1)
                v = v + (g * g - v) * (1 - self.beta_2)
                p = p - m * alpha / (jnp.sqrt(v) + ADAM_EPSILON)
                for name, value in zip(new, (p, m, v)):
                    new[name][key].append(value)
        return dict(state, **new, step=state["step"] + 1)

    def moving_average(self, state):
        """`update_target`: target <- m * target + (1 - m) * online."""
        m = self.ema_momentum
        target = {key: list(values) for key, values in state["target"].items()}
        for target_key, target_index, online_key, online_index in self.pairs:
            target[target_key][target_index] = (m * target[target_key][target_index]
                                                + (1.0 - m) * state["params"][online_key][online_index])
        return dict(state, target=target)

    def __call__(self, state, online_view, target_view, mask, lr):
        """One `train_step` on (views, masks) at learning rate `lr`: (state, metrics, gradients)."""
        import jax

        keys, target_buffers = self.target_keys(state, target_view)
        (_, (buffers, metrics)), grads = jax.value_and_grad(self.losses, has_aux=True)(
            state["params"], state["buffers"], online_view, mask, keys)
        state = self.apply_gradients(dict(state, buffers=buffers, target_buffers=target_buffers), grads, lr)
        return self.moving_average(state), metrics, grads


# --- the views (JAX) ------------------------------------------------------------
def crop_views(images_u8, scale, offset, size):
    """`two_views(image number, key)`: `TwoViewSampler`'s "crops" mode written in JAX
    (its default jitter, blur and noise), drawn by JAX's generator."""
    import jax
    import jax.numpy as jnp

    images = jnp.asarray(images_u8)
    _, height, width = images.shape
    log_aspect = (math.log(3 / 4), math.log(4 / 3))

    def crop_size(key):
        k_area, k_aspect = jax.random.split(key)
        area = height * width * jax.random.uniform(k_area, minval=0.2, maxval=1.0)
        aspect = jnp.exp(jax.random.uniform(k_aspect, minval=log_aspect[0], maxval=log_aspect[1]))
        crop_w = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, width)
        crop_h = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, height)
        return crop_h, crop_w

    def random_int(key, upper):
        return jnp.minimum(jnp.floor(jax.random.uniform(key) * (upper + 1)), upper)

    def resized(image, top, left, crop_h, crop_w, flip):
        scales = jnp.stack([size / crop_h, size / crop_w])
        view = jax.image.scale_and_translate(image, (size, size), (0, 1), scales,
                                             -jnp.stack([top, left]) * scales, method="linear", antialias=True)
        return jnp.where(flip, view[:, ::-1], view)

    def jitter(view, key):
        keys = jax.random.split(key, 6)
        chance = [jax.random.uniform(keys[i]) < 0.8 for i in (0, 2, 4)]
        strength = 0.4
        view = jnp.where(chance[0], view + jax.random.uniform(keys[1], minval=-strength, maxval=strength), view)
        factor = jax.random.uniform(keys[3], minval=1 - strength, maxval=1 + strength)
        mean = view.mean()
        view = jnp.where(chance[1], (view - mean) * factor + mean, view)
        gamma = jnp.exp(jax.random.uniform(keys[5], minval=-strength, maxval=strength))
        low, high = view.min(), view.max()
        span = jnp.maximum(high - low, 1e-6)
        return jnp.where(chance[2], ((view - low) / span) ** gamma * span + low, view)

    def blur(view, key):
        k_apply, k_sigma = jax.random.split(key)
        sigma = jax.random.uniform(k_sigma, minval=0.1, maxval=2.0)
        radius = 4
        weights = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
        weights = weights / weights.sum()
        padded = jnp.pad(view, radius, mode="reflect")
        rows = sum(weights[i] * padded[i:i + size, :] for i in range(2 * radius + 1))
        blurred = sum(weights[i] * rows[:, i:i + size] for i in range(2 * radius + 1))
        return jnp.where(jax.random.uniform(k_apply) < 0.5, blurred, view)

    def two_views(index, key):
        keys = jax.random.split(key, 12)
        image = images[index].astype(jnp.float32) / scale - offset
        crop_h, crop_w = crop_size(keys[0])
        top = random_int(keys[1], height - crop_h)
        left = random_int(keys[2], width - crop_w)
        crop_h_b, crop_w_b = crop_size(keys[3])
        center_y = top + random_int(keys[4], crop_h - 1)
        center_x = left + random_int(keys[5], crop_w - 1)
        top_b = jnp.clip(center_y - jnp.floor(crop_h_b / 2), 0, height - crop_h_b)
        left_b = jnp.clip(center_x - jnp.floor(crop_w_b / 2), 0, width - crop_w_b)
        first = resized(image, top, left, crop_h, crop_w, jax.random.uniform(keys[6]) < 0.5)
        second = resized(image, top_b, left_b, crop_h_b, crop_w_b, jax.random.uniform(keys[7]) < 0.5)
        first = jitter(first, keys[8])
        second = blur(jitter(second, keys[9]), keys[10])
        second = second + 0.1 * (second.max() - second.min()) * jax.random.normal(keys[11], second.shape)
        return first[..., None], second[..., None]

    return two_views


# --- train (accelerator, JAX) ---------------------------------------------------
class _WithoutTensorFlow(importlib.abc.MetaPathFinder):
    """Refuses to import TensorFlow, as on the accelerator, which has none. Where it is
    installed, Keras imports it to serialise a layer's configuration (in `clone_model`),
    which costs 20 s of CPU and no result."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r} (pretrain_jax.py runs without TensorFlow)")
        return None


def _jax_backend():
    if "tensorflow" not in sys.modules and not any(isinstance(f, _WithoutTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _WithoutTensorFlow())
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("this command runs on Keras' JAX backend: set KERAS_BACKEND=jax")


def _step_settings(args):
    return dict(patch_size=args.patch_size, temperature=args.temperature, rc_weight=args.rc_weight,
                ct_weight=args.ct_weight, ema_momentum=args.ema_momentum, weight_decay=args.weight_decay)


def _image_batches(rng, count, batch_size):
    """Batches of image numbers, a fresh permutation each pass (its last partial batch dropped)."""
    import jax.numpy as jnp

    while True:
        order = rng.permutation(count)
        for first in range(0, count - batch_size + 1, batch_size):
            yield jnp.asarray(order[first:first + batch_size])


def _probe(step, state, stream, key, probe_steps):
    """Seconds a step, timed after two compiling steps, from `state` (the steps are thrown away)."""
    import jax

    for i in range(probe_steps + 2):
        if i == 2:
            jax.block_until_ready(state["params"])
            started = time.perf_counter()
        state, _ = step(state, next(stream), jax.random.fold_in(key, 10**9 + i), 10**6, 10**5)
    jax.block_until_ready(state["params"])
    return (time.perf_counter() - started) / probe_steps


def _save(out, pretrainer_step, state, settings):
    """The online and target weights (`WEIGHTS`), each file replaced whole, and `settings`."""
    import numpy as np

    pretrainer_step.assign(state)
    for name, keys in WEIGHTS.items():
        np.savez(out / f"{name}.tmp.npz", **layer_weights(pretrainer_step.networks, keys))
        os.replace(out / f"{name}.tmp.npz", out / f"{name}.npz")
    (out / SETTINGS).write_text(json.dumps(settings, indent=1))


def train(data, out, args):
    _jax_backend()
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    images_u8, scale, offset = unpack(data)
    count, height, width = images_u8.shape
    print(f"{count} angiograms {height}x{width}; devices {jax.devices()}", flush=True)

    networks = build_networks(args.base_filters, args.depth)
    pretrainer_step = JaxStep(networks, **_step_settings(args))
    for target_key, target_index, online_key, online_index in pretrainer_step.pairs:
        # target <- online, as the pretrainer's constructor.
        networks[target_key].trainable_variables[target_index].assign(
            networks[online_key].trainable_variables[online_index])
    two_views = crop_views(images_u8, scale, offset, args.image_size)
    grid = args.image_size // args.patch_size
    masked_count = int(round(args.mask_ratio * grid * grid))

    @jax.jit
    def step(state, indices, key, total, warmup):
        k_views, k_mask = jax.random.split(key)
        online_view, target_view = jax.vmap(two_views)(indices, jax.random.split(k_views, indices.shape[0]))
        mask = patch_masks(k_mask, indices.shape[0], grid, masked_count)
        lr = learning_rate(state["step"], args.lr, total, warmup)
        state, metrics, _ = pretrainer_step(state, online_view, target_view, mask, lr)
        return state, dict(metrics, lr=lr)

    initial = pretrainer_step.initial_state()
    key = jax.random.PRNGKey(args.seed)
    stream = _image_batches(np.random.default_rng(args.seed), count, args.batch_size)
    step_seconds = _probe(step, initial, stream, key, args.probe_steps)
    left = args.minutes * 60 - (time.perf_counter() - started) - args.reserve_seconds
    total = int(args.steps or max(1, left // step_seconds))
    warmup = int(round(args.warmup_share * total))
    print(f"probe: {step_seconds * 1000:.1f} ms a step of {args.batch_size} -> {total} steps "
          f"({total * args.batch_size / count:.0f} passes over {count} angiograms), {warmup} of warm-up", flush=True)

    settings = dict(vars(args), total_steps=total, warmup_steps=warmup, step_seconds=step_seconds,
                    n_images=count, working_size=[height, width], keras=keras.__version__, jax=jax.__version__,
                    device=str(jax.devices()[0]), data=str(data))
    settings.pop("func", None)

    def save(state, history, done):
        _save(out, pretrainer_step, state, dict(settings, steps_done=done, history=history,
                                                seconds=time.perf_counter() - started))

    state, history, sums = initial, [], None
    train_started = time.perf_counter()
    for number in range(total):
        state, metrics = step(state, next(stream), jax.random.fold_in(key, number), total, warmup)
        sums = metrics if sums is None else jax.tree_util.tree_map(jnp.add, sums, metrics)
        if (number + 1) % args.log_every == 0 or number + 1 == total:
            span = args.log_every if (number + 1) % args.log_every == 0 else (number + 1) % args.log_every
            row = {name: float(value) / span for name, value in sums.items()}
            row.update(step=number + 1, lr=float(metrics["lr"]), seconds=time.perf_counter() - train_started)
            history.append(row)
            sums = None
            print("step {step}: loss {loss:.4f} rc {reconstruction_loss:.4f} ct {contrastive_loss:.4f} "
                  "top1 {contrastive_accuracy:.3f} lr {lr:.2e} {seconds:.0f} s".format(**row), flush=True)
        if (number + 1) % args.save_every == 0 and number + 1 < total:
            save(state, history, number + 1)
        if args.steps is None and time.perf_counter() - started > args.minutes * 60 - 10:
            # Slower than the probe said (another job on the device): keep
            # what was trained rather than lose it all to the call's limit.
            print(f"out of time after {number + 1} of {total} steps", flush=True)
            total = number + 1
            break
    save(state, history, total)
    print(f"done: {total} steps in {time.perf_counter() - train_started:.0f} s; weights in {out}", flush=True)


# --- check-step (JAX): one step from the TensorFlow pretrainer's weights and batch ---
def check_step(source, out):
    """One step of `train` from the weights, views and masks in `source` -> `out`.

    `source` (an .npz) holds `settings` (JSON: `base_filters`, `depth`,
    `mask_ratio`, `arguments` of `JaxStep`, `peak_lr`, `total_steps`,
    `warmup_steps`, and `step`, the optimizer's iterations before the step),
    every weight of the five networks (`layer_weights`' names), `batch/online`,
    `batch/target`, `batch/mask`, and `gradients/NAME` of the online weights.
    `out` gets `metrics/NAME` and `gradients/NAME` of JAX's step, `given/NAME`
    (every weight after AdamW and the EMA applied to `source`'s gradients, with
    the BatchNorm statistics of JAX's forward passes), `schedule` (the learning
    rate at steps 0..total) and `masks` (8 of JAX's masks at the view size).
    tests/test_pretrain_jax.py compares them with
    `ContrastiveMaskedPretrainer.train_step`.
    """
    _jax_backend()
    import jax
    import jax.numpy as jnp
    import numpy as np

    with np.load(source, allow_pickle=False) as stored:
        stored = dict(stored)
    settings = json.loads(str(stored.pop("settings")))
    networks = build_networks(settings["base_filters"], settings["depth"])
    load_layer_weights(networks, stored, source)
    pretrainer_step = JaxStep(networks, **settings["arguments"])
    state = pretrainer_step.initial_state(settings["step"])
    lr = learning_rate(state["step"], settings["peak_lr"], settings["total_steps"], settings["warmup_steps"])
    batch = [jnp.asarray(stored[f"batch/{name}"]) for name in ("online", "target", "mask")]
    after, metrics, grads = jax.jit(pretrainer_step)(state, *batch, lr)
    names = trainable_names(networks)
    tf_grads = {key: [jnp.asarray(stored[f"gradients/{name}"]) for name in names[key]] for key in ONLINE}
    given = dict(state, buffers=after["buffers"], target_buffers=after["target_buffers"])
    given = jax.jit(lambda state, grads, lr: pretrainer_step.moving_average(
        pretrainer_step.apply_gradients(state, grads, lr)))(given, tf_grads, lr)
    results = {f"metrics/{name}": np.asarray(value) for name, value in metrics.items()}
    results.update({f"gradients/{name}": np.asarray(value)
                    for key in ONLINE for name, value in zip(names[key], grads[key])})
    pretrainer_step.assign(given)
    results.update({f"given/{name}": value for name, value in layer_weights(networks, ONLINE + TARGET).items()})
    steps = jnp.arange(settings["total_steps"] + 1)
    results["schedule"] = np.asarray(learning_rate(steps, settings["peak_lr"], settings["total_steps"],
                                                   settings["warmup_steps"]))
    grid = batch[0].shape[1] // settings["arguments"]["patch_size"]
    masked_count = int(round(settings["mask_ratio"] * grid * grid))
    results["masks"] = np.asarray(patch_masks(jax.random.PRNGKey(0), 8, grid, masked_count))
    np.savez(out, **results)


def initial_weights(out, args):
    """The online networks' weights as `train` starts them (same seed, same backend), for
    `benchmarks/weight_change.py`: JAX and TensorFlow draw other initial values."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    networks = build_networks(args.base_filters, args.depth)
    np.savez(out, **layer_weights(networks, WEIGHTS["online"]))


# --- import (TensorFlow machine) --------------------------------------------------
def import_run(source, run_dir):
    """`train`'s output -> a pretraining run folder (`pretrained.weights.h5`, `pretrainer.json`)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from cm_unet_keras.core.files import atomic_write_json
    from cm_unet_keras.models.pretrainer import PRETRAINED_WEIGHTS, PRETRAINER_CONFIG, ContrastiveMaskedPretrainer

    source, run_dir = Path(source), Path(run_dir)
    settings = json.loads((source / SETTINGS).read_text())
    pretrainer = ContrastiveMaskedPretrainer(
        base_filters=settings["base_filters"], depth=settings["depth"], patch_size=settings["patch_size"],
        mask_ratio=settings["mask_ratio"], ema_momentum=settings["ema_momentum"],
        temperature=settings["temperature"], rc_weight=settings["rc_weight"], ct_weight=settings["ct_weight"],
        seed=settings["seed"])
    stored = {}
    for name in WEIGHTS:
        with np.load(source / f"{name}.npz") as arrays:
            stored.update(arrays)
    used = load_layer_weights({key: getattr(pretrainer, key) for key in ONLINE + TARGET}, stored, source)
    if set(stored) - used:
        raise SystemExit(f"{source}: weights of no layer: {sorted(set(stored) - used)[:3]}")
    run_dir.mkdir(parents=True, exist_ok=True)
    pretrainer.save_weights(run_dir / PRETRAINED_WEIGHTS)
    atomic_write_json(run_dir / PRETRAINER_CONFIG, pretrainer.get_config())
    history = settings.pop("history")
    atomic_write_json(run_dir / SETTINGS, settings)
    with open(run_dir / HISTORY, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    print(f"{len(used)} arrays -> {run_dir / PRETRAINED_WEIGHTS}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="a load_unlabeled cache -> JPEG-packed angiograms")
    p.add_argument("cache")
    p.add_argument("out")
    p = commands.add_parser("train", help="pretrain on Keras' JAX backend")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--mask-ratio", type=float, default=0.65)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-share", type=float, default=0.08, help="10 of the CPU recipe's 125 epochs")
    p.add_argument("--ema-momentum", type=float, default=0.996)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--rc-weight", type=float, default=1.0)
    p.add_argument("--ct-weight", type=float, default=1.0)
    p.add_argument("--minutes", type=float, default=7.0, help="the whole call, loading and compiling included")
    p.add_argument("--steps", type=int, default=None, help="a fixed number of steps instead of --minutes")
    p.add_argument("--reserve-seconds", type=float, default=30.0)
    p.add_argument("--probe-steps", type=int, default=20)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--precision", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--seed", type=int, default=60)
    p = commands.add_parser("initial-weights", help="the online networks' weights before training")
    p.add_argument("out")
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seed", type=int, default=60)
    p = commands.add_parser("check-step", help="one step from given weights and batch (tests/test_pretrain_jax.py)")
    p.add_argument("source")
    p.add_argument("out")
    p = commands.add_parser("import", help="train's output -> a pretraining run folder")
    p.add_argument("source")
    p.add_argument("run_dir")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.cache, args.out)
    elif args.command == "train":
        train(args.data, args.out, args)
    elif args.command == "check-step":
        check_step(args.source, args.out)
    elif args.command == "initial-weights":
        initial_weights(args.out, args)
    else:
        import_run(args.source, args.run_dir)


if __name__ == "__main__":
    main()
