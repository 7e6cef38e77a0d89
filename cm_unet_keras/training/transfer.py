"""Moving weights between U-Nets: pretrained or fine-tuned -> a new U-Net.

Weights are matched by layer name (`encoder_*`, `bottleneck_*`, `decoder_*`,
optionally the head) with strict shape checks: a mismatch is an error, not
a silent skip, because a silently half-loaded encoder looks like a model
that "does not benefit from pretraining".
"""

from pathlib import Path

import keras

from cm_unet_keras.core.errors import InvalidInputError
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
      and head.
    - A pretrained preset (card `"kind": "pretrained"`): encoder and decoder;
      the head stays freshly initialised, as from a pretraining run.

    Shapes are checked layer by layer; a mismatch raises `InvalidInputError`.

    Returns:
        The transfer report `{"loaded": [...], "skipped": [...]}`.
    """
    from cm_unet_keras.models.presets import is_pretrained_preset, resolve_model_path

    pretrained = _pretrained_weights_path(init)
    if pretrained is not None:
        return transfer_from_pretraining(model, pretrained)
    path = Path(resolve_model_path(init))
    if path.name.endswith(".weights.h5"):  # a pretrained preset stored as a pretrainer
        return transfer_from_pretraining(model, path)
    if path.suffix != ".keras":
        raise InvalidInputError(path, "--init expects a .keras U-Net, a pretraining run folder or a preset name")
    source = load_unet(path)
    # A pretrained preset's head was never trained: keep this run's own seeded head.
    include_head = not is_pretrained_preset(init)
    return transfer_from_model(source, model, include_head=include_head, source_name=str(path))


def load_unet(path):
    """Load a `.keras` U-Net with `safe_mode` (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "model file not found")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except ValueError as error:
        raise InvalidInputError(path, f"refused or unreadable model file: {error}") from error
    except (OSError, KeyError) as error:
        raise InvalidInputError(path, f"not a readable .keras model file: {error}") from error


def _pretrained_weights_path(init):
    """`init` as the path of pretrained weights, or None if it is something else."""
    from cm_unet_keras.training.pretrain import PRETRAINED_WEIGHTS

    path = Path(init)
    if path.is_dir():
        weights = path / PRETRAINED_WEIGHTS
        if not weights.is_file():
            raise InvalidInputError(path, f"is a folder without {PRETRAINED_WEIGHTS}: not a pretraining run")
        return weights
    if path.name.endswith(".weights.h5"):
        if not path.is_file():
            raise InvalidInputError(path, "pretrained weights file not found")
        return path
    return None


def transfer_from_pretraining(model, weights_path):
    """Load a pretraining run's encoder and decoder into `model`.

    The pretrainer is rebuilt from `pretrainer.json` beside the weights, its
    weights loaded, and its U-Net's encoder and decoder copied with strict
    shape checks; the segmentation head is left as initialised.

    Returns:
        The transfer report.
    """
    import json

    from cm_unet_keras.models.pretrainer import PRETRAINER_CONFIG, ContrastiveMaskedPretrainer

    weights_path = Path(weights_path)
    config_path = weights_path.parent / PRETRAINER_CONFIG
    if not config_path.is_file():
        raise InvalidInputError(
            weights_path, f"no {PRETRAINER_CONFIG} beside it: cannot tell the pretrained U-Net's shape"
        )
    try:
        config = json.loads(config_path.read_text())
        pretrainer = ContrastiveMaskedPretrainer.from_config(config)
    except (ValueError, TypeError) as error:
        raise InvalidInputError(config_path, f"not a pretrainer configuration: {error}") from error
    try:
        pretrainer.load_weights(weights_path)
    except (ValueError, OSError, KeyError) as error:
        raise InvalidInputError(weights_path, f"cannot load pretrained weights: {error}") from error
    return transfer_from_model(pretrainer.unet, model, include_head=False, source_name=str(weights_path))
