"""Contrastive masked pretraining: masks, losses, EMA, replicas, transfer, resume.

Tiny models (depth 2, base_filters 8, 64x64 views, batch 2-4) keep the file
within a couple of minutes on two CPU cores.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cm_unet_keras import CMUNet
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.masking import expand_patch_mask, masked_patch_count, random_patch_masks
from cm_unet_keras.data.normalize import normalize_angiogram
from cm_unet_keras.data.synthetic import generate_angiogram
from cm_unet_keras.data.views import TwoViewSampler, UnlabeledAngiograms, ViewConfig
from cm_unet_keras.models.losses import info_nce, normalized_patch_target
from cm_unet_keras.models.pretrainer import PRETRAINED_WEIGHTS, PRETRAINER_CONFIG, ContrastiveMaskedPretrainer
from cm_unet_keras.training.pretrain import save_pretrained_weights
from cm_unet_keras.training.transfer import load_initial_weights

ROOT = Path(__file__).resolve().parents[1]
TINY = {"base_filters": 8, "depth": 2, "projection_dim": 16, "projection_hidden_dim": 32}


def tiny_pretrainer(**overrides):
    pretrainer = ContrastiveMaskedPretrainer(**{**TINY, "seed": 3, **overrides})
    pretrainer.compile(optimizer=keras.optimizers.AdamW(2e-3), jit_compile=False)
    return pretrainer


def random_batch(batch_size=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    online = rng.normal(size=(batch_size, size, size, 1)).astype("float32")
    target = online + 0.1 * rng.normal(size=online.shape).astype("float32")
    return {"online": online, "target": target, "sample_index": np.arange(batch_size, dtype="int64")}


def synthetic_sampler(count=8, size=96, image_size=64, batch_size=4):
    """Two-view sampler over in-memory synthetic angiograms."""
    images = []
    for index in range(count):
        angiogram, _ = generate_angiogram(size, rng=index)
        images.append(normalize_angiogram(angiogram.astype("float32")[..., None]).numpy())
    angiograms = UnlabeledAngiograms(
        [f"synth_{i}" for i in range(count)],
        np.stack(images).astype(np.float16),
        np.full((count, 2), size, np.int32),
    )
    return TwoViewSampler(angiograms, ViewConfig(image_size=image_size), seed=5,
                          samples_per_epoch=count)


def test_each_sample_gets_its_own_count_exact_mask():
    seeds = tf.constant([[7, n] for n in range(6)], tf.int64)
    masks = random_patch_masks(seeds, (4, 4), 0.65).numpy()
    assert masks.shape == (6, 4, 4)
    # round(0.65 * 16) = 10 patches, exactly, in every sample.
    assert masked_patch_count((4, 4), 0.65) == 10
    np.testing.assert_array_equal(masks.reshape(6, -1).sum(axis=1), 10)
    assert len({mask.tobytes() for mask in masks}) == 6, "samples share a mask"
    np.testing.assert_array_equal(masks, random_patch_masks(seeds, (4, 4), 0.65).numpy())
    # 14 x 14 patches at 224 px: the paper's 127 of 196.
    assert masked_patch_count((14, 14), 0.65) == 127

    pretrainer = ContrastiveMaskedPretrainer(**TINY, seed=3)
    views = tf.ones([4, 64, 64, 1])
    masked, patch_mask = pretrainer.mask_views(views, tf.constant([0, 1, 2, 3], tf.int64))
    zero_fraction = 1.0 - tf.reduce_mean(masked, axis=[1, 2, 3]).numpy()
    np.testing.assert_allclose(zero_fraction, 10 / 16)
    np.testing.assert_array_equal(
        masked.numpy(), 1.0 - expand_patch_mask(patch_mask, 16).numpy()
    )
    # The same sample index gives the same mask in another batch position.
    _, again = pretrainer.mask_views(views[:2], tf.constant([3, 0], tf.int64))
    np.testing.assert_array_equal(again.numpy(), patch_mask.numpy()[[3, 0]])


def test_patch_target_normalisation_matches_numpy():
    images = np.random.default_rng(1).normal(3.0, 2.0, size=(2, 32, 48, 1)).astype("float32")
    images[0, :16, :16] = 5.0  # a flat patch must stay finite
    target = normalized_patch_target(images, 16).numpy()
    assert target.shape == (2, 2, 3, 256)
    for b in range(2):
        for row in range(2):
            for col in range(3):
                patch = images[b, row * 16 : row * 16 + 16, col * 16 : col * 16 + 16, 0].ravel()
                expected = (patch - patch.mean()) / np.sqrt(patch.var(ddof=1) + 1e-6)
                np.testing.assert_allclose(target[b, row, col], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(target[0, 0, 0], 0.0)


def test_info_nce_matches_hand_computed_value():
    # Orthogonal unit embeddings: positives have cosine 1, negatives 0, so
    # every row's loss is -log(e^(1/t) / (e^(1/t) + 2)) * 2t; at t = 0.5
    # that is log(1 + 2 / e^2) = 0.2395448...
    eye = np.eye(3, 4, dtype="float32")
    loss, correct = info_nce(eye * 5.0, eye, tf.constant([0, 1, 2]), 0.5)
    np.testing.assert_allclose(loss.numpy(), 0.2395448, rtol=1e-5)
    np.testing.assert_array_equal(correct.numpy(), 1.0)

    tau = 0.07

    query = np.array([[1, 2, 0, -1], [0, 1, 1, 0], [3, 0, 0, 1]], "float32")
    keys = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, -1]], "float32")
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    logits = q @ k.T / tau
    by_hand = (np.log(np.exp(logits).sum(axis=1)) - np.diag(logits)) * 2 * tau
    loss, correct = info_nce(query, keys, tf.constant([0, 1, 2]), tau)
    np.testing.assert_allclose(loss.numpy(), by_hand, rtol=1e-5)
    np.testing.assert_array_equal(correct.numpy(), (logits.argmax(axis=1) == [0, 1, 2]))


def test_ema_update_follows_the_formula_and_target_gets_no_gradient():
    pretrainer = tiny_pretrainer(ema_momentum=0.9)
    pairs = pretrainer._ema_pairs()
    assert pairs, "no EMA pairs"
    for target, online in pairs:  # the target starts as a copy
        np.testing.assert_array_equal(target.numpy(), online.numpy())
    batch = random_batch()
    # Eager steps (no tracing, to keep the test fast). The first moves the
    # online weights, so that target and online differ in the second.
    pretrainer.train_step(batch)
    before = [target.numpy() for target, _ in pairs]
    pretrainer.train_step(batch)
    for (target, online), previous in zip(pairs, before):
        np.testing.assert_allclose(
            target.numpy(), 0.9 * previous + 0.1 * online.numpy(), rtol=1e-5, atol=1e-6
        )

    target_variables = [target for target, _ in pairs]
    with tf.GradientTape() as tape:
        embedding = pretrainer.target_embedding(batch["target"])
        losses = pretrainer.compute_losses(batch["online"], embedding, batch["sample_index"])
    gradients = tape.gradient(losses["loss"], target_variables + pretrainer.online_variables)
    assert all(g is None for g in gradients[: len(target_variables)])
    assert all(g is not None for g in gradients[len(target_variables) :])


def test_a_few_steps_lower_the_reconstruction_loss():
    keras.utils.set_random_seed(0)
    sampler = synthetic_sampler()
    pretrainer = tiny_pretrainer()
    history = pretrainer.fit(
        sampler.dataset(4), epochs=8, steps_per_epoch=4, shuffle=False, verbose=0
    ).history
    reconstruction = history["reconstruction_loss"]
    assert np.isfinite(history["loss"]).all()
    assert np.mean(reconstruction[-2:]) < 0.9 * np.mean(reconstruction[:2]), reconstruction



MODE = "graph"
REPLICA_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras
    import numpy as np
    from cm_unet_keras.models.pretrainer import ContrastiveMaskedPretrainer

    keras.utils.set_random_seed(0)  # the same initial weights in every run: one draw, not a new one each time
    rng = np.random.default_rng(0)
    online = rng.normal(size=(4, 64, 64, 1)).astype("float32")
    batch = {"online": online, "target": online + 0.1 * rng.normal(size=online.shape).astype("float32"),
             "sample_index": np.arange(4, dtype="int64")}
    weights = os.path.join(sys.argv[1], "initial.weights.h5")
    EAGER = sys.argv[2] == "eager"

    def run(strategy, save):
        with strategy.scope():
            model = ContrastiveMaskedPretrainer(base_filters=8, depth=2, projection_dim=16,
                                                projection_hidden_dim=32, seed=3)
            # SGD, not Adam: its step is proportional to the gradient, so a
            # wrong reduction over replicas would show in the second step.
            model.compile(optimizer=keras.optimizers.SGD(0.05), run_eagerly=EAGER)
        if save:
            model.save_weights(weights)
        else:
            model.load_weights(weights)
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        # Two epochs of one step: the second step's losses see the first update.
        return model.fit(dataset, epochs=2, steps_per_epoch=1, shuffle=False, verbose=0).history

    single = run(tf.distribute.get_strategy(), save=True)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    print("RESULT" + json.dumps({"single": single, "mirrored": run(mirrored, save=False)}))
    """
)


def test_losses_agree_on_one_and_two_replicas(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [sys.executable, "-c", REPLICA_SCRIPT, str(tmp_path), MODE],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT")]
    assert completed.returncode == 0 and lines, completed.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    # Summation order differs between one and two replicas (synchronized
    # BatchNorm moments, gradient all-reduce), and InfoNCE at tau 0.07
    # magnifies it to ~1e-3 relative after a step (seen: 1.1e-3). A wrong
    # reduction (per-replica negatives, unsynchronized statistics, a gradient
    # summed instead of averaged) would move them far more. One replica now
    # trains with the fused BatchNorm kernel and two with Keras' synchronized
    # layer (models/layers.py): another summation order again, which the
    # contrastive term magnifies to 5.9e-3 after two steps (seen once); the
    # reconstruction and total losses stay within 5e-3. The weights used to
    # be drawn anew in each run, and one draw took the contrastive loss to
    # 0.19 after a step, where the same absolute difference was 1.6e-2
    # relative: the script now seeds them, and that draw gives 8e-4.
    for name, rtol in (("loss", 5e-3), ("reconstruction_loss", 5e-3), ("contrastive_loss", 1e-2),
                       ("contrastive_accuracy", 1e-2)):
        np.testing.assert_allclose(
            result["mirrored"][name], result["single"][name], rtol=rtol, atol=1e-5, err_msg=name
        )


def test_transfer_copies_encoder_and_decoder_exactly(tmp_path):
    pretrainer = ContrastiveMaskedPretrainer(**TINY, seed=3)
    run_dir = tmp_path / "pretrain_run"
    run_dir.mkdir()
    save_pretrained_weights(pretrainer, run_dir / PRETRAINED_WEIGHTS)
    (run_dir / PRETRAINER_CONFIG).write_text(json.dumps(pretrainer.get_config()))

    for init in (run_dir, run_dir / PRETRAINED_WEIGHTS):
        unet = CMUNet(base_filters=8, depth=2)
        fresh_head = [w.copy() for w in unet.get_layer("segmentation_head").get_weights()]
        report = load_initial_weights(unet, str(init))
        source = pretrainer.unet
        expected = [layer.name for layer in source.encoder_layers() + source.decoder_layers()]
        assert sorted(report["loaded"]) == sorted(expected)
        assert report["skipped"] == ["segmentation_head"]
        for name in expected:
            for mine, theirs in zip(unet.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
                np.testing.assert_array_equal(mine, theirs)
        for mine, fresh in zip(unet.get_layer("segmentation_head").get_weights(), fresh_head):
            np.testing.assert_array_equal(mine, fresh)

    with pytest.raises(InvalidInputError, match="shapes"):
        load_initial_weights(CMUNet(base_filters=16, depth=2), str(run_dir))


def test_a_mixed_bfloat16_step_gives_finite_losses():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        pretrainer = tiny_pretrainer()
        assert pretrainer.unet.get_layer("encoder_level0_conv1").compute_dtype == "bfloat16"
        # One eager step: tracing a bfloat16 graph costs more than it runs.
        logs = pretrainer.train_step(random_batch())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for name in ("loss", "reconstruction_loss", "contrastive_loss"):
        assert np.isfinite(float(logs[name])), (name, logs[name])
    assert int(pretrainer.optimizer.iterations.numpy()) == 1


def test_pretrain_resumes_without_repeating_finished_epochs(tmp_path, shared_data):
    from cm_unet_keras.cli import main

    run_dir = tmp_path / "run"
    arguments = [
        "pretrain", "--images", str(shared_data / "arcade_stenosis"), "--out", str(run_dir),
        "--max-images", "8", "--batch-size", "4", "--image-size", "64", "--working-size", "96",
        "--base-filters", "8", "--depth", "2", "--lr", "1e-3", "--warmup-epochs", "1",
        "--steps-per-epoch", "2", "--verbose", "0",
    ]
    assert main(arguments + ["--epochs", "2"]) == 0
    state = json.loads((run_dir / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    weights_mtime = (run_dir / PRETRAINED_WEIGHTS).stat().st_mtime_ns
    # The run records the 8 angiograms it draws from, and a rerun never rewrites that.
    pool = json.loads((run_dir / "images.json").read_text())
    assert pool["count"] == len(pool["images"]) == 8 and all(Path(path).is_file() for path in pool["images"])
    pool_mtime = (run_dir / "images.json").stat().st_mtime_ns

    assert main(arguments + ["--epochs", "3"]) == 0
    state = json.loads((run_dir / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert state["checkpoint"] == "checkpoints/epoch_0003"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["epoch_0003"]
    assert (run_dir / PRETRAINED_WEIGHTS).stat().st_mtime_ns > weights_mtime
    assert len(list((run_dir / "cache").glob("angiograms_*.npz"))) == 1
    assert (run_dir / "grids" / "epoch_0003.png").is_file()
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert (run_dir / "history.csv").read_text().count("\n") == 4
    assert (run_dir / "images.json").stat().st_mtime_ns == pool_mtime
    # Each sitting records where it ran and the precision `auto` resolved to there.
    sittings = json.loads((run_dir / "state.json").read_text())["sittings"]
    assert [sitting["after_epoch"] for sitting in sittings] == [0, 2]
    assert {sitting["precision"] for sitting in sittings} <= {"float32", "mixed_bfloat16", "mixed_float16"}

    # Asking again for 3 epochs trains nothing.
    assert main(arguments + ["--epochs", "3"]) == 0
    assert len(json.loads((run_dir / "state.json").read_text())["history"]) == 3


def test_pretrain_rerun_is_refused_other_settings_and_records_an_extension(tmp_path, shared_data, capsys):
    from cm_unet_keras.cli import main

    run_dir = tmp_path / "run"
    arguments = [
        "pretrain", "--images", str(shared_data / "arcade_stenosis" / "val" / "images"), "--out", str(run_dir),
        "--max-images", "4", "--batch-size", "2", "--image-size", "32", "--working-size", "64",
        "--base-filters", "4", "--depth", "2", "--lr", "1e-3", "--warmup-epochs", "1",
        "--steps-per-epoch", "1", "--quiet",
    ]
    assert main(arguments + ["--epochs", "1"]) == 0
    recorded = (run_dir / "config.yaml").read_bytes()
    capsys.readouterr()
    # The case: other settings on a finished run folder.
    assert main(arguments + ["--epochs", "1", "--mask-ratio", "0.5", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err
    assert "mask_ratio 0.65 -> 0.5" in error and "seed 60 -> 1" in error and "new --out" in error
    # A longer run with its warm-up changed: an extension, noted in the state.
    assert main(arguments + ["--epochs", "2", "--warmup-epochs", "2", "--skip-invalid"]) == 0
    state = json.loads((run_dir / "state.json").read_text())
    assert len(state["history"]) == 2
    assert state["length_changed"] == [{"after_epoch": 1, "epochs": 2, "warmup_epochs": 2}]
    assert (run_dir / "config.yaml").read_bytes() == recorded
    capsys.readouterr()
    # The same length with another warm-up is not an extension.
    assert main(arguments + ["--epochs", "2", "--warmup-epochs", "1"]) == 2
    assert "warmup_epochs 2 -> 1" in capsys.readouterr().err
    assert main(arguments + ["--epochs", "2", "--warmup-epochs", "2"]) == 0
