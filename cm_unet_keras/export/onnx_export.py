"""ONNX export of the float signature, preprocessing included.

`keras.Model.export(format="onnx")` converts the bare network only; we
convert the whole `serving_default` function with tf2onnx (which Keras' own
exporter uses), so normalisation, padding, cropping and the threshold are in
the ONNX graph too. ONNX has no image decoder, so there is no
`predict_image_bytes` here. The folder layout `NAME/VERSION/model.onnx` is
the one NVIDIA Triton reads.

Needs the optional extra `pip install cm-unet-keras[onnx]` (tf2onnx,
onnxruntime).
"""

import json
from pathlib import Path

import tensorflow as tf

from cm_unet_keras.export.serving import ANGIOGRAM_SPEC, segment_angiograms, serving_outputs

ONNX_FILE = "model.onnx"
# Opset 17 is supported by every onnxruntime since 1.11 and by Triton.
ONNX_OPSET = 17
METADATA_KEY = "cm_unet_metadata"


def write_onnx(model, folder, threshold, metadata, opset=ONNX_OPSET, tta=False):
    """Write `folder/model.onnx`: input `angiogram`, outputs `probability`, `mask`.

    Args:
        model: a `CMUNet`.
        folder: an existing, empty folder.
        threshold: the mask threshold baked into the graph.
        metadata: a JSON-serialisable dict, stored in the model's
            `metadata_props` under `cm_unet_metadata` (onnxruntime:
            `session.get_modelmeta().custom_metadata_map`).
        opset: the ONNX opset.
        tta: flip test-time augmentation in the graph.
    """
    try:
        import onnx
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: pip install 'cm-unet-keras[onnx]'"
        ) from error

    @tf.function(input_signature=[ANGIOGRAM_SPEC], autograph=False)
    def serving_default(angiogram):
        probability = segment_angiograms(model, angiogram, tta)
        # The outputs are reshaped to the input's shape, the mask from that:
        # tf2onnx rewrites the field-of-view ops' transposes into Reshape and
        # Squeeze nodes, and once (CI, 2026-12-02; not reproduced here) the
        # `probability` output came out [1, 1, H, W, 1] while the mask was
        # [1, H, W, 1]. A last Reshape to the angiogram's shape makes any
        # such rewrite either give the declared shape or fail loudly.
        return serving_outputs(tf.reshape(probability, tf.shape(angiogram)), threshold)

    model_proto, _ = tf2onnx.convert.from_function(
        serving_default, input_signature=serving_default.input_signature, opset=opset
    )
    entry = model_proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(metadata)
    onnx.save(model_proto, str(Path(folder) / ONNX_FILE))
