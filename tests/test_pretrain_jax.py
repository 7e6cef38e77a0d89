"""recipes/pretrain_jax.py: its step is the pretrainer's, and what it packs and imports.

Its step runs on Keras' JAX backend (an accelerator without TensorFlow), and
Keras picks its backend once a process: the JAX side runs in a subprocess
(`recipes/pretrain_jax.py check-step`, with KERAS_BACKEND=jax) from the
TensorFlow pretrainer's weights, views and masks, and its losses, gradients,
AdamW update, EMA update, learning-rate schedule and masks are compared with
`ContrastiveMaskedPretrainer.train_step`'s here. The package also depends on
the packed angiograms being the decoded ones and on an imported run loading
as a pretraining run, every weight where it was.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cm_unet_keras.config import PretrainConfig
from cm_unet_keras.data.layouts import index_unlabeled
from cm_unet_keras.data.views import TwoViewSampler, load_unlabeled
from cm_unet_keras.models import layers
from cm_unet_keras.models.loading import load_pretrainer
from cm_unet_keras.models.pretrainer import ContrastiveMaskedPretrainer
from cm_unet_keras.models.saving import float32_policy
from cm_unet_keras.training.pretrain import make_optimizer
from cm_unet_keras.training.schedules import WarmupCosine
from cm_unet_keras.training.transfer import load_initial_weights

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain_jax.py"
# A small pretraining, past its warm-up (Adam's bias correction at t = 8),
# with an EMA momentum whose update is far above float noise.
CONFIG = PretrainConfig(base_filters=4, depth=2, image_size=64, views="crops", batch_size=6, lr=1e-2,
                        ema_momentum=0.99, seed=5)
TOTAL_STEPS, WARMUP_STEPS, STEP = 20, 5, 7


def _networks(pretrainer):
    return {key: getattr(pretrainer, key) for key in
            ("online_network", "projector", "predictor", "target_encoder", "target_projector")}


def _tensorflow_step(module, shared_data, folder):
    """The TensorFlow pretrainer's weights, batch and gradients (in `folder/source.npz`), and
    its metrics and weights after one `train_step`."""
    records = index_unlabeled([shared_data / "xca_vessels" / "train" / f"{i}.png" for i in range(1, 7)])
    sampler = TwoViewSampler(load_unlabeled(records, working_size=96), CONFIG.view_config(), seed=CONFIG.seed)
    samples = [sampler.sample(i) for i in range(CONFIG.batch_size)]
    batch = {name: tf.stack([sample[name] for sample in samples]) for name in ("online", "target", "sample_index")}

    keras.utils.set_random_seed(1)
    pretrainer = ContrastiveMaskedPretrainer(**CONFIG.pretrainer_kwargs())
    rng = np.random.default_rng(0)
    for key in ("target_encoder", "target_projector"):  # a target apart from the online weights
        for variable in getattr(pretrainer, key).trainable_variables:
            variable.assign(variable + rng.normal(0, 0.05, variable.shape).astype(np.float32))
    optimizer = make_optimizer(CONFIG, TOTAL_STEPS, WARMUP_STEPS)
    pretrainer.compile(optimizer=optimizer)
    optimizer.build(pretrainer.online_variables)
    optimizer.iterations.assign(STEP)
    networks = _networks(pretrainer)
    before = module.layer_weights(networks, module.ONLINE + module.TARGET)

    yardstick = _plain_batchnorm_gradients(pretrainer, batch)
    module.load_layer_weights(networks, before, "before")  # undo the BatchNorm statistics' update
    applied = {}
    apply = optimizer.apply

    def recording_apply(gradients, variables):  # what train_step hands its optimizer
        applied.update({id(v): np.asarray(g) for g, v in zip(gradients, variables)})
        return apply(gradients, variables)

    optimizer.apply = recording_apply
    masks = pretrainer.sample_masks(batch["sample_index"], (CONFIG.image_size, CONFIG.image_size))
    metrics = {name: float(value) for name, value in pretrainer.train_step(batch).items()}
    variables = {key: model.trainable_variables for key, model in networks.items()}
    names = {id(variable): name for key, names in module.trainable_names(networks).items()
             for name, variable in zip(names, variables[key])}
    gradients = {names[key]: value for key, value in applied.items()}
    yardstick = {names[id(variable)]: value for variable, value in zip(pretrainer.online_variables, yardstick)}

    settings = dict(base_filters=CONFIG.base_filters, depth=CONFIG.depth, mask_ratio=CONFIG.mask_ratio,
                    peak_lr=CONFIG.peak_lr(), total_steps=TOTAL_STEPS, warmup_steps=WARMUP_STEPS, step=STEP,
                    arguments=dict(patch_size=CONFIG.patch_size, temperature=CONFIG.temperature,
                                   rc_weight=CONFIG.rc_weight, ct_weight=CONFIG.ct_weight,
                                   ema_momentum=CONFIG.ema_momentum, weight_decay=CONFIG.weight_decay,
                                   beta_1=CONFIG.beta_1, beta_2=CONFIG.beta_2))
    np.savez(folder / "source.npz", settings=json.dumps(settings), **before,
             **{"batch/online": batch["online"].numpy(), "batch/target": batch["target"].numpy(),
                "batch/mask": masks.numpy()},
             **{f"gradients/{name}": value for name, value in gradients.items()})
    after = module.layer_weights(networks, module.ONLINE + module.TARGET)
    return dict(metrics=metrics, gradients=gradients, before=before, after=after, masks=masks.numpy(),
                plain_batchnorm_gradients=yardstick)


def _plain_batchnorm_gradients(pretrainer, batch):
    """`train_step`'s gradients with Keras' own BatchNorm arithmetic (what JAX runs) instead of
    TensorFlow's fused kernel: how far two correct float32 computations of them lie apart."""
    fused = layers.BatchNormalization._fused_applies
    layers.BatchNormalization._fused_applies = lambda self, inputs, training, mask: False
    try:
        target_embedding = pretrainer.target_embedding(batch["target"], training=True)
        with tf.GradientTape() as tape:
            losses = pretrainer.compute_losses(batch["online"], target_embedding, batch["sample_index"])
        return [g.numpy() for g in tape.gradient(losses["loss"], pretrainer.online_variables)]
    finally:
        layers.BatchNormalization._fused_applies = fused


@pytest.fixture(scope="module")
def both_steps(shared_data, recipe_module, tmp_path_factory):
    """(TensorFlow's step, JAX's `check-step` outputs) from the same weights, views and masks."""
    module = recipe_module("pretrain_jax")
    folder = tmp_path_factory.mktemp("jax_step")
    # In float32 whatever policy an earlier test in this worker left (a fine-tune
    # leaves mixed_bfloat16): the JAX side computes in float32.
    with float32_policy():
        reference = _tensorflow_step(module, shared_data, folder)
    # XLA's unoptimised CPU code compiles these small programs in a fifth of the time.
    environment = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
                       XLA_FLAGS="--xla_backend_optimization_level=0")
    done = subprocess.run([sys.executable, str(RECIPE), "check-step", str(folder / "source.npz"),
                           str(folder / "jax.npz")], env=environment, capture_output=True, text=True, timeout=300)
    # jax[cpu] is in the dev extra: without it this fails, naming the missing module.
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(folder / "jax.npz") as stored:
        return reference, dict(stored)


def test_the_jax_step_has_the_pretrainers_losses(both_steps):
    reference, jax_step = both_steps
    for name in ("loss", "reconstruction_loss", "contrastive_loss", "contrastive_accuracy"):
        np.testing.assert_allclose(jax_step[f"metrics/{name}"], reference["metrics"][name], rtol=1e-5, err_msg=name)
    assert reference["metrics"]["contrastive_loss"] > 0.1 and reference["metrics"]["reconstruction_loss"] > 0.1


def test_the_jax_step_has_the_pretrainers_gradients(both_steps):
    """Every gradient within 5% of TensorFlow's (norm of the difference over norm), the band in
    which TensorFlow's own gradients lie when Keras' BatchNorm arithmetic replaces its fused
    kernel: BatchNorm over a small batch, and max-pooling over the masked patches' near-equal
    activations, magnify rounding on the way back (measured over 6 initialisations: 1e-5 at the
    output; at the first levels TensorFlow's own up to 1.5e-2, JAX's up to 1.5e-2 and once
    3.9e-2; on this one 3.9e-3). A difference in the method (a loss term, its weight, a missing
    gradient) moves a gradient by its whole size."""
    reference, jax_step = both_steps
    assert len(reference["gradients"]) > 40

    def apart(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    # The bias before a BatchNorm has zero gradient but for rounding (the norm removes it).
    biases = [name for name in reference["gradients"] if name.endswith("_dense1/1")]
    for name in biases:
        assert np.linalg.norm(reference["gradients"][name]) < 1e-5
        assert np.linalg.norm(jax_step[f"gradients/{name}"]) < 1e-5
    gradients = {name: value for name, value in reference["gradients"].items() if name not in biases}
    noise = max(apart(reference["plain_batchnorm_gradients"][name], value) for name, value in gradients.items())
    assert noise < 0.05
    errors = {name: apart(jax_step[f"gradients/{name}"], value) for name, value in gradients.items()}
    assert max(errors.values()) < 0.05, sorted(errors.items(), key=lambda item: -item[1])[:3]


def test_the_jax_step_applies_the_pretrainers_adamw_and_ema_update(both_steps):
    """On the same gradients, the same AdamW step and the same EMA target after it;
    with the BatchNorm statistics of JAX's own forward passes."""
    reference, jax_step = both_steps
    moved = {"online": 0.0, "target": 0.0}
    for name, value in reference["after"].items():
        if name.endswith(("/2", "/3")):  # BatchNorm's moving statistics, from each one's forward pass
            np.testing.assert_allclose(jax_step[f"given/{name}"], value, rtol=1e-4, atol=1e-5, err_msg=name)
            continue
        np.testing.assert_allclose(jax_step[f"given/{name}"], value, rtol=1e-5, atol=1e-6, err_msg=name)
        kind = "target" if name.startswith("target") else "online"
        moved[kind] = max(moved[kind], float(np.abs(value - reference["before"][name]).max()))
    # Far above the tolerances: the online weights moved by up to 0.45 x lr (fresh moments at
    # Adam's t = 8), the target by (1 - m) x (online - target).
    assert moved["online"] > 2e-3 and moved["target"] > 5e-4, moved


def test_the_jax_schedule_is_warmup_cosine_and_its_masks_are_count_exact(both_steps):
    reference, jax_step = both_steps
    schedule = WarmupCosine(CONFIG.peak_lr(), TOTAL_STEPS, WARMUP_STEPS, CONFIG.warmup_start_factor)
    expected = [float(schedule(step)) for step in range(TOTAL_STEPS + 1)]
    np.testing.assert_allclose(jax_step["schedule"], expected, rtol=1e-6, atol=1e-6 * CONFIG.peak_lr())
    masked = reference["masks"].sum(axis=(1, 2))
    assert set(masked.tolist()) == {round(0.65 * 16)}  # 10 of the 16 patches of a 64 px view
    assert set(jax_step["masks"].sum(axis=(1, 2)).tolist()) == {round(0.65 * 16)}
    assert len({mask.tobytes() for mask in jax_step["masks"]}) == len(jax_step["masks"])


def test_packed_angiograms_are_the_decoded_ones_to_jpeg_precision(tmp_path, shared_data, recipe_module):
    records = index_unlabeled([shared_data / "xca_vessels" / "train" / f"{i}.png" for i in (1, 2, 3)])
    decoded = load_unlabeled(records, working_size=128, cache_dir=tmp_path / "cache")
    cache = next((tmp_path / "cache").glob("angiograms_*.npz"))
    module = recipe_module("pretrain_jax")
    module.pack(cache, tmp_path / "packed.npz")
    images, scale, offset = module.unpack(tmp_path / "packed.npz")
    assert images.shape == (3, 128, 128) and images.dtype == np.uint8
    restored = images.astype(np.float32) / scale - offset
    original = decoded.images[..., 0].astype(np.float32)
    error = np.sqrt(np.mean((restored - original) ** 2, axis=(1, 2)))
    # 8 bits over [-5.3, 5.3] and JPEG at quality 95: a few hundredths of a z-score unit.
    assert np.all(error < 0.1), error
    assert np.corrcoef(restored.ravel(), original.ravel())[0, 1] > 0.999


def test_an_imported_run_loads_as_a_pretraining_run_with_every_weight_in_place(tmp_path, recipe_module):
    module = recipe_module("pretrain_jax")
    networks = module.build_networks(base_filters=4, depth=2)
    rng = np.random.default_rng(0)
    for model in networks.values():
        for layer in model.layers:
            if layer.weights:
                layer.set_weights([w + rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    source = tmp_path / "trained"
    source.mkdir()
    for name, keys in module.WEIGHTS.items():
        np.savez(source / f"{name}.npz", **module.layer_weights(networks, keys))
    settings = dict(base_filters=4, depth=2, patch_size=16, mask_ratio=0.65, ema_momentum=0.996,
                    temperature=0.07, rc_weight=1.0, ct_weight=1.0, seed=3, steps_done=2,
                    history=[{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.2}])
    (source / module.SETTINGS).write_text(json.dumps(settings))

    module.import_run(source, tmp_path / "run")
    pretrainer = load_pretrainer(tmp_path / "run" / "pretrained.weights.h5")
    assert pretrainer.seed == 3 and pretrainer.base_filters == 4
    for key, model in networks.items():
        loaded = getattr(pretrainer, key)
        for layer in model.layers:
            for mine, theirs in zip(layer.get_weights(), loaded.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(mine, theirs)
    assert (tmp_path / "run" / "history.csv").read_text().splitlines()[-1] == "2,1.2"

    # Fine-tuning takes the online U-Net from the run folder.
    from cm_unet_keras import CMUNet

    unet = CMUNet(base_filters=4, depth=2)
    load_initial_weights(unet, str(tmp_path / "run"))
    online = networks["online_network"]
    conv = "encoder_level0_conv1"
    np.testing.assert_array_equal(unet.get_layer(conv).get_weights()[0], online.get_layer(conv).get_weights()[0])
