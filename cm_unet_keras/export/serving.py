"""A SavedModel that segments raw angiograms on its own, for TF Serving.

nnU-Net's exports need its Python preprocessing and sliding window around
them; ours carry everything inside the graph: per-image normalisation
(`normalize_angiogram`), mirror padding to a multiple of `2**depth`, the
U-Net (over four flips if exported with `tta`), cropping back, clearing
outside the field of view and the threshold. Two signatures:

    serving_default
        inputs:  angiogram    float32 [batch, H, W, 1], raw intensity
                              (0..255, 0..65535, ...), any H and W
        outputs: probability  float32 [batch, H, W, 1]
                 mask         uint8   [batch, H, W, 1], 1 = vessel
                              (probability >= threshold)

    predict_image_bytes
        inputs:  image_bytes  string [batch], encoded PNG/JPEG/BMP/GIF (the
                              REST `{"b64": ...}` form)
        outputs: probability, mask as above. Images of one request may
                 differ in size: each is segmented alone and the outputs
                 are padded at the bottom/right to the largest H and W
                 (probability 0, mask 0); crop each with its own size.

CLAHE runs in OpenCV on the host and is not exportable: a model trained
with CLAHE is refused by `cm_unet_keras.export.export_model`.
"""

import json
import tempfile
from pathlib import Path

import tensorflow as tf

from cm_unet_keras.data.normalize import normalize_angiogram
from cm_unet_keras.models.full_image import predict_normalized

SERVING_SIGNATURE = "serving_default"
IMAGE_BYTES_SIGNATURE = "predict_image_bytes"
ANGIOGRAM_INPUT = "angiogram"
# Google's hosted TF Serving front ends decode `{"b64": ...}` only into inputs
# whose name ends in `_bytes`; TF Serving itself decodes it for any string.
IMAGE_BYTES_INPUT = "image_bytes"
OUTPUT_NAMES = ("probability", "mask")
METADATA_ASSET = "cm_unet_metadata.json"

ANGIOGRAM_SPEC = tf.TensorSpec([None, None, None, 1], tf.float32, name=ANGIOGRAM_INPUT)
IMAGE_BYTES_SPEC = tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The IHDR bit depth: 8-byte magic, 4-byte chunk length, "IHDR", width, height.
PNG_BIT_DEPTH_BYTE = 24


def decode_angiogram(encoded):
    """One encoded image -> float32 `[H, W, 1]` in its stored intensity.

    16-bit PNGs keep their 0..65535 values (decoded as uint16); everything
    else is decoded as 8-bit. Choosing by the PNG header matters because
    `decode_png(dtype=uint16)` rescales 8-bit images by 257 and
    `decode_image` (uint8) drops the low byte of 16-bit ones: either way the
    values would differ from what `read_angiogram` gives for the same file.
    Colour images become grey (libpng/libjpeg luma), animations their first
    frame.
    """
    # Padding the header lets substr work on strings shorter than a PNG
    # header; decode_image then rejects them with its own message.
    header = tf.strings.join([tf.strings.substr(encoded, 0, PNG_BIT_DEPTH_BYTE + 1), b"\0" * 32])
    sixteen_bit_png = tf.logical_and(
        tf.equal(tf.strings.substr(header, 0, len(PNG_MAGIC)), PNG_MAGIC),
        tf.equal(tf.strings.substr(header, PNG_BIT_DEPTH_BYTE, 1), b"\x10"),
    )
    angiogram = tf.cond(
        sixteen_bit_png,
        lambda: tf.cast(tf.io.decode_png(encoded, channels=1, dtype=tf.uint16), tf.float32),
        lambda: tf.cast(tf.io.decode_image(encoded, channels=1, expand_animations=False), tf.float32),
    )
    return tf.ensure_shape(angiogram, [None, None, 1])


def segment_angiograms(model, angiograms, tta=False):
    """Raw `[B, H, W, 1]` angiograms -> vessel probabilities, same shape.

    The same ops as `cm_unet_keras.inference.segment_angiogram`, batched:
    each image is normalised on its own, padded, predicted (over four flips
    with `tta`), cropped and cleared outside its field of view.
    """
    normalized, fov = normalize_angiogram(angiograms, return_fov=True)
    return predict_normalized(model, normalized, tta=tta, fov=fov)


def segment_encoded_angiograms(model, image_bytes, tta=False):
    """Encoded images `[B]` -> probabilities `[B, H_max, W_max, 1]`.

    Each image is decoded and segmented alone (sizes may differ within the
    batch); the results are padded with 0 to the largest size.
    """

    def segment_one(encoded):
        probability = segment_angiograms(model, decode_angiogram(encoded)[None], tta)[0]
        return tf.RaggedTensor.from_tensor(probability, ragged_rank=1)

    probability = tf.map_fn(
        segment_one,
        image_bytes,
        fn_output_signature=tf.RaggedTensorSpec([None, None, 1], tf.float32, ragged_rank=1),
    )
    return probability.to_tensor(default_value=0.0)


def serving_outputs(probability, threshold):
    """The signatures' outputs: `probability` and the uint8 `mask`."""
    return {"probability": probability, "mask": tf.cast(probability >= threshold, tf.uint8)}


def build_serving_module(model, threshold, metadata_path=None, tta=False):
    """A `tf.Module` holding the U-Net's variables and both endpoints.

    Only the variables are tracked, not the Keras model object: the
    SavedModel then holds one copy of the weights and no Keras object graph
    (TF Serving only runs the signatures).

    Args:
        model: a `CMUNet`.
        threshold: probability at or above which a pixel is vessel.
        metadata_path: a JSON file saved as the `cm_unet_metadata.json`
            asset (the loaded module's `metadata_file`).
        tta: average the four flips of each angiogram in the graph.

    Returns:
        A `tf.Module` with the `tf.function`s `serving_default` and
        `predict_image_bytes`.

    Example:
    ```python
    module = build_serving_module(model, 0.5)
    outputs = module.serving_default(tf.zeros([1, 300, 300, 1]))
    ```
    """
    module = tf.Module(name="cm_unet_serving")
    module.unet_variables = list(model.variables)
    if metadata_path is not None:
        module.metadata_file = tf.saved_model.Asset(str(metadata_path))

    def serving_default(angiogram):
        return serving_outputs(segment_angiograms(model, angiogram, tta), threshold)

    def predict_image_bytes(image_bytes):
        return serving_outputs(segment_encoded_angiograms(model, image_bytes, tta), threshold)

    module.serving_default = tf.function(serving_default, input_signature=[ANGIOGRAM_SPEC], autograph=False)
    module.predict_image_bytes = tf.function(
        predict_image_bytes, input_signature=[IMAGE_BYTES_SPEC], autograph=False
    )
    return module


def write_saved_model(model, path, threshold, metadata, tta=False):
    """Write the serving SavedModel of `model` into the folder `path`.

    Args:
        model: a `CMUNet`.
        path: an empty or missing folder.
        threshold: the mask threshold baked into the graph.
        metadata: a JSON-serialisable dict, saved as the metadata asset.
        tta: flip test-time augmentation in the graph.
    """
    with tempfile.TemporaryDirectory() as scratch:
        metadata_path = Path(scratch) / METADATA_ASSET
        metadata_path.write_text(json.dumps(metadata, indent=2))
        module = build_serving_module(model, threshold, metadata_path, tta)
        signatures = {
            SERVING_SIGNATURE: module.serving_default.get_concrete_function(),
            IMAGE_BYTES_SIGNATURE: module.predict_image_bytes.get_concrete_function(),
        }
        tf.saved_model.save(module, str(path), signatures=signatures)
