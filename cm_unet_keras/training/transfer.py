"""Moving weights between U-Nets: pretrained or fine-tuned -> a new U-Net.

Weights are matched by layer name (`encoder_*`, `bottleneck_*`, `decoder_*`,
optionally the head) with strict shape checks: a mismatch is an error, not
a silent skip, because a silently half-loaded encoder looks like a model
that "does not benefit from pretraining".
"""

from pathlib import Path

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.models.loading import load_pretrainer, load_unet, pretrained_weights_path
from cm_unet_keras.models.presets import is_pretrained_preset, resolve_model_path
from cm_unet_keras.models.unet import DECODER_PREFIXES, ENCODER_PREFIXES, HEAD_PREFIXES


def copy_layer_weights(source_layers, target_model, source_name="source"):
    """Copy weights of same-named layers into `target_model`.

    Args:
        source_layers: iterable of layers holding the weights to copy.
        target_model: the model receiving them.
        source_name: file or model name used in error messages.

    Returns:
        The list of copied layer names.
    """
    copied = []
    for layer in source_layers:
        try:
            target = target_model.get_layer(layer.name)
        except ValueError as error:
            raise InvalidInputError(source_name, f"layer {layer.name!r} has no counterpart in the U-Net") from error
        source_shapes = [tuple(w.shape) for w in layer.get_weights()]
        target_shapes = [tuple(w.shape) for w in target.get_weights()]
        if source_shapes != target_shapes:
            raise InvalidInputError(
                source_name,
                f"layer {layer.name!r} has weights of shapes {source_shapes}, the U-Net expects "
                f"{target_shapes} (different base_filters or depth?)",
            )
        target.set_weights(layer.get_weights())
        copied.append(layer.name)
    return copied


def transfer_from_model(source_model, target_model, include_head=False, source_name="source"):
    """Copy encoder + decoder (and optionally the head) between U-Nets.

    Returns:
        `{"loaded": [...], "skipped": [...]}` layer names: the report written
        as `transfer_report.json`.
    """
    prefixes = ENCODER_PREFIXES + DECODER_PREFIXES + (HEAD_PREFIXES if include_head else ())
    if getattr(source_model, "depth", target_model.depth) != target_model.depth:
        raise InvalidInputError(
            source_name, f"depth {source_model.depth} does not match the U-Net's depth {target_model.depth}"
        )
    source_layers = [layer for layer in source_model.layers if layer.name.startswith(prefixes) and layer.weights]
    loaded = copy_layer_weights(source_layers, target_model, source_name)
    skipped = [layer.name for layer in target_model.layers if layer.weights and layer.name not in loaded]
    return {"loaded": loaded, "skipped": skipped}


def load_initial_weights(model, init):
    """Initialise `model` from `init`: a pretraining run, a `.keras` U-Net or a preset.

    - A pretraining run folder (holding `pretrained.weights.h5`) or that
      file: encoder and decoder are loaded, the segmentation head stays
      freshly initialised (pretraining never trained it).
    - A fine-tuned `.keras` U-Net (or a fine-tuned preset): encoder, decoder
      and head; the head only if it has the same outputs (`conventions`)
      as `model`'s, else it stays freshly initialised.
    - A pretrained preset (card `"kind": "pretrained"`): encoder and decoder;
      the head stays freshly initialised, as from a pretraining run.

    Shapes are checked layer by layer; a mismatch raises `InvalidInputError`.

    Returns:
        The transfer report `{"loaded": [...], "skipped": [...]}`.
    """
    pretrained = pretrained_weights_path(init)
    if pretrained is not None:
        return transfer_from_pretraining(model, pretrained)
    path = Path(resolve_model_path(init))
    if path.name.endswith(".weights.h5"):  # a pretrained preset stored as a pretrainer
        return transfer_from_pretraining(model, path)
    if path.suffix != ".keras":
        raise InvalidInputError(path, "--init expects a .keras U-Net, a pretraining run folder or a preset name")
    source = load_unet(path)
    # A pretrained preset's head was never trained, and a head of other
    # outputs (conventions) means other things: keep this run's seeded head.
    include_head = not is_pretrained_preset(init) and getattr(source, "conventions", None) == getattr(model, "conventions", None)
    return transfer_from_model(source, model, include_head=include_head, source_name=str(path))


def transfer_from_pretraining(model, weights_path):
    """Load a pretraining run's encoder and decoder into `model`.

    The pretrainer is rebuilt from `pretrainer.json` beside the weights, its
    weights loaded (`models.loading.load_pretrainer`), and its U-Net's
    encoder and decoder copied with strict shape checks; the segmentation
    head is left as initialised.

    Returns:
        The transfer report.
    """
    pretrainer = load_pretrainer(weights_path)
    return transfer_from_model(pretrainer.unet, model, include_head=False, source_name=str(weights_path))
