"""CMUNet: architecture, serialization, precision (keras-hub style checks)."""

import json

import keras
import numpy as np
import pytest

from cm_unet_keras import CMUNet
from cm_unet_keras.models.full_image import predict_normalized


@pytest.fixture
def tiny_model():
    keras.utils.set_random_seed(0)
    return CMUNet(base_filters=4, depth=2)


def test_paper_width_has_the_papers_parameter_count():
    # The paper's U-Net: 31.0M parameters (encoder 18.9M, decoder 12.2M).
    model = CMUNet(base_filters=64, depth=4)
    assert model.count_params() == pytest.approx(31.0e6, rel=0.01)
    encoder = sum(w.numpy().size for layer in model.encoder_layers() for w in layer.weights)
    decoder = sum(w.numpy().size for layer in model.decoder_layers() for w in layer.weights)
    assert encoder == pytest.approx(18.9e6, rel=0.01)
    assert decoder == pytest.approx(12.2e6, rel=0.01)


def test_output_is_a_probability_map_of_the_input_size(tiny_model):
    images = np.random.default_rng(0).normal(size=(2, 64, 48, 1)).astype("float32")
    probability = keras.ops.convert_to_numpy(tiny_model(images))
    assert probability.shape == (2, 64, 48, 1)
    assert probability.min() >= 0.0 and probability.max() <= 1.0


def test_any_size_is_padded_and_cropped(tiny_model):
    image = np.random.default_rng(1).normal(size=(37, 51, 1)).astype("float32")
    probability = predict_normalized(tiny_model, image).numpy()
    assert probability.shape == (37, 51, 1)
    # The visible region equals a prediction on the explicitly padded image
    # (mirrored, split between both sides: tests/test_full_image.py).
    padded = np.pad(image, [(1, 2), (0, 1), (0, 0)], mode="reflect")
    direct = keras.ops.convert_to_numpy(tiny_model(padded[None]))[0, 1:38, :51]
    np.testing.assert_allclose(probability, direct, atol=1e-6)


def test_config_round_trip(tiny_model):
    config = tiny_model.get_config()
    rebuilt = CMUNet.from_config(json.loads(json.dumps(config)))
    assert rebuilt.get_config() == config
    assert rebuilt.count_params() == tiny_model.count_params()


def test_keras_file_round_trip_in_safe_mode(tiny_model, tmp_path):
    images = np.random.default_rng(2).normal(size=(2, 64, 64, 1)).astype("float32")
    path = tmp_path / "unet.keras"
    tiny_model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert isinstance(restored, CMUNet)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(images)), keras.ops.convert_to_numpy(tiny_model(images)), atol=1e-6
    )


def test_encoder_and_decoder_are_addressable_units(tiny_model):
    encoder = {layer.name for layer in tiny_model.encoder_layers()}
    decoder = {layer.name for layer in tiny_model.decoder_layers()}
    assert "bottleneck_conv1" in encoder and "encoder_level0_conv1" in encoder
    assert "decoder_level0_upconv" in decoder
    assert not encoder & decoder
    weighted = {layer.name for layer in tiny_model.layers if layer.weights}
    assert weighted - encoder - decoder == {"segmentation_head"}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_sigmoid_output_stays_float32_under_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = CMUNet(base_filters=4, depth=2)
        output = model(np.zeros((1, 32, 32, 1), "float32"))
        assert output.dtype == "float32"
        assert model.get_layer("encoder_level0_conv1").compute_dtype == policy.split("_")[1]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="depth"):
        CMUNet(base_filters=4, depth=0)
