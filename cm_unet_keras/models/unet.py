"""The U-Net that CM-UNet pretrains and fine-tunes."""

import keras

from cm_unet_keras.data.conventions import check_convention, check_conventions
from cm_unet_keras.models import layers

# Named widths. 64 is the paper's 31M-parameter network; the smaller ones are
# what a laptop CPU trains in minutes on native-resolution patches.
SIZES = {"tiny": 8, "small": 16, "base": 32, "paper": 64}

# Layer-name prefixes: the encoder and the decoder are addressed as units by
# these prefixes (pretraining trains them, fine-tuning transfers them).
ENCODER_PREFIXES = ("encoder_", "bottleneck_")
DECODER_PREFIXES = ("decoder_",)
HEAD_PREFIXES = ("segmentation_",)

# PyTorch's BatchNorm defaults (momentum 0.1, eps 1e-5), as in the paper's code.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _conv_block(x, filters, name):
    """[Conv3x3 - BatchNorm - ReLU] x 2, named `name_conv{1,2}` etc."""
    for i in (1, 2):
        # No bias: the BatchNorm after it removes any constant (the paper's
        # code keeps one, whose gradient is then zero up to rounding noise,
        # which Adam magnifies into drifting, meaningless weights).
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
            name=f"{name}_conv{i}",
        )(x)
        # Synchronized: under a multi-replica strategy the batch statistics
        # are those of the global batch (same result on 1 or N devices, and
        # identical moving averages on every worker). On one device the
        # training step runs TensorFlow's fused kernel (layers.BatchNormalization).
        x = layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True, name=f"{name}_bn{i}"
        )(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


@keras.saving.register_keras_serializable(package="cm_unet_keras")
class CMUNet(keras.Model):
    """U-Net for vessel segmentation in X-ray angiograms.

    `depth` levels of [Conv3x3-BN-ReLU]x2 then 2x2 max-pooling, a bottleneck
    of `base_filters * 2**depth` channels, and `depth` up levels of a 2x2
    stride-2 transposed convolution, concatenation with the skip and
    [Conv3x3-BN-ReLU]x2; a 1x1 convolution and a sigmoid give the vessel
    probability. The sigmoid runs in float32 under mixed precision.

    With `conventions`, the head has one output channel per mask convention
    (`cm_unet_keras.data.conventions.CONVENTIONS`: what a source's masks
    call vessel), in the order given: the output is `[B, H, W, C]`.
    `single_output(name)` is the one-output U-Net of one of them, which
    `segment`, `predict`, `evaluate`, `select` and `export` run.

    The network's input is a 1-channel angiogram normalised by
    `cm_unet_keras.data.normalize_angiogram`, with sides that are multiples
    of `2**depth` (so `model(x)` and `model.predict(x)` are the bare
    network). `segment` takes raw angiograms of any size and intensity
    range, files and cine runs, and returns the probability and the mask
    thresholded as the model's card or run folder says.

    Layers are named `encoder_level{i}_*`, `bottleneck_*`, `decoder_level{i}_*`
    and `segmentation_head`, so that the encoder and decoder can be moved as
    units (`encoder_layers()`, `decoder_layers()`).

    Args:
        base_filters: channels of the first level; doubles at each level down.
            64 is the paper's network (31.0M parameters at depth 4); see
            `SIZES` for named CPU-friendly widths.
        depth: number of down-sampling levels.
        conventions: None for one output (the masks' convention is then
            recorded beside the model, in its card or run folder), or a
            tuple of convention names, one output channel each.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    ```python
    from cm_unet_keras import CMUNet
    model = CMUNet.from_preset("cmunet_small_xca")
    probability, vessel_mask = model.segment("angiogram.png")  # any size
    probability, vessel_mask = model.segment(frames)  # [N, H, W] raw frames

    untrained = CMUNet(base_filters=16, depth=4)
    probability = untrained(np.zeros((1, 256, 256, 1), "float32"))

    per_convention = CMUNet(16, 4, conventions=("tree_catheter", "tree", "syntax"))
    probabilities = per_convention(np.zeros((1, 256, 256, 1), "float32"))  # [1, 256, 256, 3]
    ```

    Reference:
        Challier et al., "CM-UNet: A Self-Supervised Learning-Based Model for
        Coronary Artery Segmentation in X-Ray Angiography", 2025.
        Ronneberger et al., "U-Net", MICCAI 2015.
    """

    def __init__(self, base_filters=16, depth=4, conventions=None, **kwargs):
        kwargs.setdefault("name", "cm_unet")
        if conventions is not None:
            conventions = check_conventions(conventions)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if base_filters < 1:
            raise ValueError(f"base_filters must be >= 1, got {base_filters}")

        # === Functional Model ===
        angiogram = keras.Input(shape=(None, None, 1), name="angiogram")
        x = angiogram
        skips = []
        for level in range(depth):
            x = _conv_block(x, base_filters * 2**level, f"encoder_level{level}")
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, name=f"encoder_level{level}_pool")(x)
        x = _conv_block(x, base_filters * 2**depth, "bottleneck")
        for level in reversed(range(depth)):
            x = keras.layers.Conv2DTranspose(
                base_filters * 2**level, 2, strides=2,
                name=f"decoder_level{level}_upconv",
            )(x)
            x = keras.layers.Concatenate(name=f"decoder_level{level}_concat")(
                [skips[level], x]
            )
            x = _conv_block(x, base_filters * 2**level, f"decoder_level{level}")
        outputs = 1 if conventions is None else len(conventions)
        logits = keras.layers.Conv2D(outputs, 1, name="segmentation_head")(x)
        probability = keras.layers.Activation(
            "sigmoid", dtype="float32", name="segmentation_probability"
        )(logits)
        super().__init__(inputs=angiogram, outputs=probability, **kwargs)

        # === Config ===
        self.base_filters = base_filters
        self.depth = depth
        self.conventions = conventions
        # Set by `from_preset` / `cm_unet_keras.load_model` from the card or
        # run folder (threshold, CLAHE); None: `segment`'s defaults.
        self.segmentation_settings = None

    @classmethod
    def from_preset(cls, name):
        """The U-Net of preset `name` (`saved_models/NAME`) or a `.keras`
        path, checksum-verified, loaded with `safe_mode`, with the threshold
        and CLAHE setting of its card or run folder. A pretrained-only
        preset (`cmunet_small_pretrained`) loads with a warning: fine-tune
        it before segmenting. A pretraining run's weights load with
        `cm_unet_keras.load_model`."""
        # Imported here to keep `import CMUNet` light (registration alone);
        # models.segmentation is below this module and never imports it.
        from cm_unet_keras.models.segmentation import load_preset

        return load_preset(name)

    def segment(self, angiograms, threshold=None, clahe=None, tta=False, precision="auto", batch_size=8,
                convention=None):
        """Vessel probability and mask of raw angiograms: see `models.segmentation.segment`."""
        from cm_unet_keras.models.segmentation import segment

        return segment(self, angiograms, threshold=threshold, clahe=clahe, tta=tta, precision=precision,
                       batch_size=batch_size, convention=convention)

    def single_output(self, convention):
        """A one-output copy of this U-Net computing the `convention` channel.

        Every layer's weights are copied; the head keeps the chosen
        channel's kernel and bias, so its output is this model's channel
        `conventions.index(convention)`, `[B, H, W, 1]`. It is built in
        this model's dtype policy and records `conventions=(convention,)`.

        Raises:
            ValueError: `convention` is not one of `conventions` (one line
                naming them), or this model has a single output already.
        """
        if self.conventions is None:
            raise ValueError(f"{self.name} has a single output already (no conventions of its own)")
        index = self.conventions.index(check_convention(convention, self.conventions))
        # In this model's policy, not whatever policy the process has now.
        policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(self.dtype_policy)
        try:
            single = CMUNet(self.base_filters, self.depth, conventions=(convention,), name=self.name)
        finally:
            keras.mixed_precision.set_global_policy(policy)
        for layer in single.layers:
            weights = self.get_layer(layer.name).get_weights()
            if layer.name == "segmentation_head":
                kernel, bias = weights
                weights = [kernel[..., index : index + 1], bias[index : index + 1]]
            layer.set_weights(weights)
        return single

    @property
    def size_multiple(self):
        """Input sides must be multiples of this (one per pooling level)."""
        return 2**self.depth

    def _layers_with_prefix(self, prefixes):
        return [
            layer for layer in self.layers
            if layer.name.startswith(prefixes) and layer.weights
        ]

    def encoder_layers(self):
        """The weighted layers of the encoder, bottleneck included."""
        return self._layers_with_prefix(ENCODER_PREFIXES)

    def decoder_layers(self):
        """The weighted layers of the decoder (up-convolutions and blocks)."""
        return self._layers_with_prefix(DECODER_PREFIXES)

    def bottleneck_output(self):
        """The symbolic bottleneck feature map (input of the first up-level)."""
        return self.get_layer("bottleneck_relu2").output

    def decoder_output(self):
        """The symbolic last decoder feature map (input of the head)."""
        return self.get_layer("decoder_level0_relu2").output

    def get_config(self):
        return {
            "base_filters": self.base_filters,
            "depth": self.depth,
            "conventions": None if self.conventions is None else list(self.conventions),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
