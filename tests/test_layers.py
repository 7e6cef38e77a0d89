"""models.layers.BatchNormalization: Keras' layer, with the training step fused."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cm_unet_keras import CMUNet
from cm_unet_keras.models.layers import BatchNormalization as FusedBatchNormalization


def _pair(shape, rng):
    layers = []
    for cls in (keras.layers.BatchNormalization, FusedBatchNormalization):
        layer = cls(momentum=0.9, epsilon=1e-5, synchronized=True)
        layer.build(shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, shape[-1]))
        layer.beta.assign(np.linspace(-1.0, 1.0, shape[-1]))
        layers.append(layer)
    return layers


def _step(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        # A loss that weights every channel and pixel differently.
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(tf.cast(x, tf.float32)) * tf.range(1.0, x.shape[-1] + 1.0))
    gradients = tape.gradient(loss, [x] + layer.trainable_variables)
    return [np.asarray(t, np.float32) for t in [y] + gradients + [layer.moving_mean, layer.moving_variance]]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_training_step_equals_keras_batchnorm(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(2.0, 3.0, (4, 16, 12, 8)).astype(np.float32)
        x = tf.cast(x, keras.mixed_precision.global_policy().compute_dtype)
        reference, fused = _pair(x.shape, rng)
        expected, got = _step(reference, x), _step(fused, x)
        assert fused(x, training=True).dtype == reference(x, training=True).dtype == x.dtype
        for name, a, b in zip(["output", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance"], expected, got):
            # float32 rounding, relative to each quantity's scale (bfloat16
            # outputs round alike in both layers).
            np.testing.assert_allclose(b, a, atol=2e-6 * np.abs(a).max() + 1e-7, rtol=0, err_msg=name)
        # The moving statistics moved (momentum 0.9 from 0 and 1).
        assert np.abs(got[4]).min() > 0.05 and np.abs(got[5] - 1.0).min() > 0.05
        # Inference uses them, as Keras does.
        np.testing.assert_allclose(np.asarray(fused(x, training=False), np.float32),
                                   np.asarray(reference(x, training=False), np.float32), atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_frozen_fused_layer_uses_moving_statistics():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(5.0, 2.0, (2, 8, 8, 4)).astype(np.float32))
    reference, fused = _pair(x.shape, rng)
    fused.trainable = False
    reference.trainable = False
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=1e-6)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), np.zeros(4, np.float32))


def test_unet_uses_the_fused_layer_and_reloads_in_safe_mode(tmp_path):
    model = CMUNet(base_filters=4, depth=2)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, FusedBatchNormalization) for layer in norms)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 1)).astype(np.float32)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, (x > 0.5).astype(np.float32), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer(norms[0].name)) is FusedBatchNormalization
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_weights_written_with_keras_batchnorm_load_into_the_fused_unet(tmp_path, monkeypatch):
    # Checkpoints, pretraining runs and presets written before the fused
    # layer hold Keras' BatchNormalization: every weight must load, none be
    # left at its initial value (Keras files weights under the class name).
    from cm_unet_keras.models import layers

    rng = np.random.default_rng(3)
    with monkeypatch.context() as patch:
        patch.setattr(layers, "BatchNormalization", keras.layers.BatchNormalization)
        old = CMUNet(base_filters=4, depth=2)
    assert type(old.get_layer("encoder_level0_bn1")) is keras.layers.BatchNormalization
    for weight in old.weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
    old.save_weights(tmp_path / "old.weights.h5")
    old.save(tmp_path / "old.keras")

    new = CMUNet(base_filters=4, depth=2)
    new.load_weights(tmp_path / "old.weights.h5")
    reloaded = keras.saving.load_model(tmp_path / "old.keras", safe_mode=True)
    for model in (new, reloaded):
        assert type(model.get_layer("encoder_level0_bn1")) is FusedBatchNormalization
        for expected, got in zip(old.weights, model.weights):
            assert expected.path == got.path
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_shipped_preset_batchnorm_statistics_are_loaded():
    from cm_unet_keras.models.loading import load_preset

    model = load_preset("cmunet_small_xca")
    norms = [layer for layer in model.layers if isinstance(layer, FusedBatchNormalization)]
    assert len(norms) == 18
    for layer in norms:  # not the initial zeros and ones
        assert np.abs(np.asarray(layer.moving_mean)).max() > 1e-3, layer.name
        assert np.abs(np.asarray(layer.moving_variance) - 1.0).max() > 1e-3, layer.name
