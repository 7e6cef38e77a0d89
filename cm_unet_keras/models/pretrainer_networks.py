"""The sub-networks of the CM-UNet pretrainer, built with Keras alone.

`ContrastiveMaskedPretrainer` (`cm_unet_keras.models.pretrainer`) trains
them with TensorFlow; `recipes/pretrain_jax.py` builds the same networks,
with the same layer names, on Keras' JAX backend. This module imports no
TensorFlow so that both can use it.
"""

import keras

from cm_unet_keras.models.unet import BN_EPSILON, BN_MOMENTUM, CMUNet


def projection_mlp(input_dim, hidden_dim, output_dim, name):
    """Linear - BN - ReLU - Linear (no bias), the projector/predictor shape."""
    features = keras.Input(shape=(input_dim,), name=f"{name}_input")
    x = keras.layers.Dense(hidden_dim, name=f"{name}_dense1")(features)
    x = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn"
    )(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    x = keras.layers.Dense(output_dim, use_bias=False, name=f"{name}_dense2")(x)
    return keras.Model(features, x, name=name)


def pretrainer_networks(base_filters, depth, projection_dim=256, projection_hidden_dim=None):
    """The U-Net and the pretrainer's networks, in the order their weights are drawn.

    Returns:
        dict: `unet` (a `CMUNet`), `online_network` (U-Net input ->
        `{"bottleneck", "reconstruction"}`, the reconstruction by a float32
        1x1 `reconstruction_head`), `projector`, `predictor`, and the EMA
        target's `target_encoder` and `target_projector` (clones: their
        weights are freshly drawn; the caller copies the online ones in).
    """
    bottleneck_width = base_filters * 2**depth
    hidden = projection_hidden_dim or 4 * bottleneck_width
    unet = CMUNet(base_filters=base_filters, depth=depth)
    reconstruction = keras.layers.Conv2D(
        1, 1, dtype="float32", name="reconstruction_head"
    )(unet.decoder_output())
    online_network = keras.Model(
        unet.input,
        {"bottleneck": unet.bottleneck_output(), "reconstruction": reconstruction},
        name="online_network",
    )
    projector = projection_mlp(bottleneck_width, hidden, projection_dim, "projector")
    predictor = projection_mlp(projection_dim, hidden, projection_dim, "predictor")
    online_encoder = keras.Model(unet.input, unet.bottleneck_output())
    cloned = keras.models.clone_model(online_encoder)
    target_encoder = keras.Model(cloned.input, cloned.output, name="target_encoder")
    cloned = keras.models.clone_model(projector)
    target_projector = keras.Model(cloned.input, cloned.output, name="target_projector")
    return {"unet": unet, "online_network": online_network, "projector": projector, "predictor": predictor,
            "target_encoder": target_encoder, "target_projector": target_projector}
