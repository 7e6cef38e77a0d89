"""CM-UNet pretraining on an accelerator that has JAX but no TensorFlow.

The package pretrains with TensorFlow (`cm-unet pretrain`). The GPU machine
lent to this project has JAX but no TensorFlow and no network (its Python
packages travel as wheels of at most 64 MiB, TensorFlow is far larger), so
this recipe runs the same method on Keras 3's JAX backend:

- the networks are the package's own: `CMUNet` with the pretrainer's
  reconstruction head, projector, predictor and EMA target, built by
  `cm_unet_keras.models.pretrainer_networks` (imported without the
  package's TensorFlow start-up) as `ContrastiveMaskedPretrainer` builds them;
- the step is `ContrastiveMaskedPretrainer.train_step` written for JAX:
  per-sample count-exact 16 px patch masks, MSE to the per-patch-normalised
  view over the masked patches, InfoNCE (tau, x 2 tau) of the predictor's
  output against the EMA target's embeddings of the whole batch, the EMA
  update after the optimizer step; AdamW (betas 0.9/0.95, decay 0.05 except
  biases and BatchNorm) with linear warm-up from 1e-4 x lr, then cosine to 0;
- the views are `TwoViewSampler`'s "crops" mode written in JAX (two
  overlapping random resized crops, each flipped and intensity-jittered on
  its own, the target blurred and noisy), drawn on the accelerator.

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
    # 2. on the accelerator (Keras, optree and namex carried as wheels)
    KERAS_BACKEND=jax python recipes/pretrain_jax.py train .gpudata/angiograms.npz $OUT \\
        --batch-size 256 --minutes 7
    # 3. a pretraining run folder that `--init` and the study take
    python recipes/pretrain_jax.py import $OUT runs/pretrain_gpu/batch256
"""

import argparse
import csv
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
WEIGHTS = {"online": ("online_network", "projector", "predictor"),
           "target": ("target_encoder", "target_projector")}
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


# --- train (accelerator, JAX) ---------------------------------------------------
def train(data, out, args):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np
    import optax

    if keras.backend.backend() != "jax":
        raise SystemExit("train runs on Keras' JAX backend: set KERAS_BACKEND=jax")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    images_u8, scale, offset = unpack(data)
    count, height, width = images_u8.shape
    print(f"{count} angiograms {height}x{width}; devices {jax.devices()}", flush=True)
    images = jnp.asarray(images_u8)

    networks = build_networks(args.base_filters, args.depth)
    online, projector, predictor = networks["online_network"], networks["projector"], networks["predictor"]
    target_encoder, target_projector = networks["target_encoder"], networks["target_projector"]
    # target <- online (as the pretrainer's constructor).
    pairs = []  # (target network, variable index, online network, variable index)
    trainable_index = {}
    for key in ("online_network", "projector", "predictor"):
        for index, variable in enumerate(networks[key].trainable_variables):
            trainable_index[id(variable)] = (key, index)
    for target_key, online_key in (("target_encoder", "online_network"), ("target_projector", "projector")):
        target_model = networks[target_key]
        target_variables = {id(v): i for i, v in enumerate(target_model.trainable_variables)}
        for layer in target_model.layers:
            if not layer.trainable_weights:
                continue
            online_layer = networks[online_key].get_layer(layer.name)
            for t, o in zip(layer.trainable_weights, online_layer.trainable_weights):
                t.assign(o)
                pairs.append((target_key, target_variables[id(t)]) + trainable_index[id(o)])

    def state_of(model):
        return ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])

    online_keys = ("online_network", "projector", "predictor")
    params = {key: state_of(networks[key])[0] for key in online_keys}
    buffers = {key: state_of(networks[key])[1] for key in online_keys}
    target = {key: state_of(networks[key])[0] for key in ("target_encoder", "target_projector")}
    target_buffers = {key: state_of(networks[key])[1] for key in ("target_encoder", "target_projector")}
    decay_mask = {key: [not any(word in v.path.split("/")[-1] for word in ("bias", "gamma", "beta"))
                        for v in networks[key].trainable_variables] for key in online_keys}
    adam = optax.chain(optax.scale_by_adam(b1=0.9, b2=0.95, eps=1e-7),
                       optax.add_decayed_weights(args.weight_decay, mask=decay_mask))
    opt_state = adam.init(params)

    size, patch = args.image_size, args.patch_size
    grid = size // patch
    masked_count = int(round(args.mask_ratio * grid * grid))
    log_aspect = (math.log(3 / 4), math.log(4 / 3))

    # --- views: TwoViewSampler's "crops" mode ---
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

    # --- masks and losses: cm_unet_keras.data.masking, cm_unet_keras.models.losses ---
    def patch_masks(key, batch):
        rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, grid * grid)), axis=-1), axis=-1)
        return (rank < masked_count).astype(jnp.float32).reshape(batch, grid, grid)

    def patchify(x):
        batch = x.shape[0]
        x = x.reshape(batch, grid, patch, grid, patch).transpose(0, 1, 3, 2, 4)
        return x.reshape(batch, grid, grid, patch * patch)

    def reconstruction_loss(reconstruction, view, mask):
        target = patchify(view.astype(jnp.float32))
        mean = target.mean(-1, keepdims=True)
        variance = ((target - mean) ** 2).sum(-1, keepdims=True) / (patch * patch - 1)
        target = (target - mean) / jnp.sqrt(variance + 1e-6)
        error = ((patchify(reconstruction.astype(jnp.float32)) - target) ** 2).mean(-1)
        return (error * mask).sum() / mask.sum()

    def info_nce(query, keys):
        query = query / jnp.maximum(jnp.linalg.norm(query, axis=-1, keepdims=True), 1e-12)
        keys = keys / jnp.maximum(jnp.linalg.norm(keys, axis=-1, keepdims=True), 1e-12)
        logits = query @ keys.T / args.temperature
        labels = jnp.arange(query.shape[0])
        loss = -jax.nn.log_softmax(logits)[labels, labels]
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return loss.mean() * 2 * args.temperature, correct.mean()

    def pooled(features):
        return features.astype(jnp.float32).mean(axis=(1, 2))

    def losses(params, buffers, online_view, mask, keys):
        pixel_mask = jnp.repeat(jnp.repeat(mask, patch, 1), patch, 2)[..., None]
        masked = online_view * (1.0 - pixel_mask)
        outputs, online_buffers = online.stateless_call(params["online_network"], buffers["online_network"],
                                                        masked, training=True)
        rc = reconstruction_loss(outputs["reconstruction"], online_view, mask)
        projected, projector_buffers = projector.stateless_call(params["projector"], buffers["projector"],
                                                                pooled(outputs["bottleneck"]), training=True)
        query, predictor_buffers = predictor.stateless_call(params["predictor"], buffers["predictor"],
                                                            projected, training=True)
        ct, accuracy = info_nce(query.astype(jnp.float32), keys)
        loss = args.rc_weight * rc + args.ct_weight * ct
        new_buffers = {"online_network": online_buffers, "projector": projector_buffers,
                       "predictor": predictor_buffers}
        return loss, (new_buffers, {"loss": loss, "reconstruction_loss": rc, "contrastive_loss": ct,
                                    "contrastive_accuracy": accuracy})

    def learning_rate(step, total, warmup):
        step = step.astype(jnp.float32)
        warm = args.lr * (1e-4 + (1 - 1e-4) * jnp.minimum(step / jnp.maximum(warmup, 1), 1.0))
        progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1), 0.0, 1.0)
        return jnp.where(step < warmup, warm, args.lr * 0.5 * (1 + jnp.cos(math.pi * progress)))

    @jax.jit
    def step(state, indices, key, total, warmup):
        params, buffers, target, target_buffers, opt_state, step_number = state
        k_views, k_mask = jax.random.split(key)
        online_view, target_view = jax.vmap(two_views)(indices, jax.random.split(k_views, indices.shape[0]))
        features, encoder_buffers = target_encoder.stateless_call(
            target["target_encoder"], target_buffers["target_encoder"], target_view, training=True)
        embedding, projector_buffers = target_projector.stateless_call(
            target["target_projector"], target_buffers["target_projector"], pooled(features), training=True)
        keys = jax.lax.stop_gradient(embedding.astype(jnp.float32))
        mask = patch_masks(k_mask, indices.shape[0])
        (_, (buffers, metrics)), grads = jax.value_and_grad(losses, has_aux=True)(
            params, buffers, online_view, mask, keys)
        updates, opt_state = adam.update(grads, opt_state, params)
        lr = learning_rate(step_number, total, warmup)
        params = jax.tree_util.tree_map(lambda p, u: (p - lr * u).astype(p.dtype), params, updates)
        # target <- m * target + (1 - m) * online, after the optimizer step.
        m = args.ema_momentum
        target = {name: list(values) for name, values in target.items()}
        for target_key, target_index, online_key, online_index in pairs:
            average = m * target[target_key][target_index] + (1 - m) * params[online_key][online_index]
            target[target_key][target_index] = average.astype(target[target_key][target_index].dtype)
        target_buffers = {"target_encoder": encoder_buffers, "target_projector": projector_buffers}
        metrics["lr"] = lr
        return (params, buffers, target, target_buffers, opt_state, step_number + 1), metrics

    initial = (params, buffers, target, target_buffers, opt_state, jnp.zeros((), jnp.int32))
    rng = np.random.default_rng(args.seed)
    key = jax.random.PRNGKey(args.seed)

    def batches():
        while True:
            order = rng.permutation(count)
            for first in range(0, count - args.batch_size + 1, args.batch_size):
                yield jnp.asarray(order[first:first + args.batch_size])

    stream = batches()
    # Probe: compile, then time steps, from the initial state (thrown away).
    state = initial
    for i in range(args.probe_steps + 2):
        if i == 2:
            jax.block_until_ready(state[0])
            probe_started = time.perf_counter()
        state, metrics = step(state, next(stream), jax.random.fold_in(key, 10**9 + i), 10**6, 10**5)
    jax.block_until_ready(state[0])
    step_seconds = (time.perf_counter() - probe_started) / args.probe_steps
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
        params, buffers, target, target_buffers = state[:4]
        for key_ in online_keys:
            for variable, value in zip(networks[key_].trainable_variables, params[key_]):
                variable.assign(value)
            for variable, value in zip(networks[key_].non_trainable_variables, buffers[key_]):
                variable.assign(value)
        for key_ in ("target_encoder", "target_projector"):
            for variable, value in zip(networks[key_].trainable_variables, target[key_]):
                variable.assign(value)
            for variable, value in zip(networks[key_].non_trainable_variables, target_buffers[key_]):
                variable.assign(value)
        for name, keys in WEIGHTS.items():
            np.savez(out / f"{name}.tmp.npz", **layer_weights(networks, keys))
            os.replace(out / f"{name}.tmp.npz", out / f"{name}.npz")
        (out / SETTINGS).write_text(json.dumps(dict(settings, steps_done=done, history=history,
                                                    seconds=time.perf_counter() - started), indent=1))

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
    used = set()
    for key in ("online_network", "projector", "predictor", "target_encoder", "target_projector"):
        for layer in getattr(pretrainer, key).layers:
            if not layer.weights:
                continue
            names = [f"{key}/{layer.name}/{i}" for i in range(len(layer.weights))]
            missing = [name for name in names if name not in stored]
            if missing:
                raise SystemExit(f"{source}: no weights for {missing[0]}")
            layer.set_weights([stored[name] for name in names])
            used.update(names)
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
    p = commands.add_parser("import", help="train's output -> a pretraining run folder")
    p.add_argument("source")
    p.add_argument("run_dir")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.cache, args.out)
    elif args.command == "train":
        train(args.data, args.out, args)
    elif args.command == "initial-weights":
        initial_weights(args.out, args)
    else:
        import_run(args.source, args.run_dir)


if __name__ == "__main__":
    main()
