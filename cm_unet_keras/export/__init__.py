"""Exports for serving: TF Serving SavedModels (and ONNX) that segment raw angiograms.

`export_model` writes `BASE/NAME/VERSION/` from a `.keras` U-Net; see
`serving` for the signatures and `layout` for the atomic version folders.
"""

from cm_unet_keras.export.exporter import FORMATS, export_model
from cm_unet_keras.export.serving import (
    IMAGE_BYTES_SIGNATURE,
    SERVING_SIGNATURE,
    build_serving_module,
    write_saved_model,
)
from cm_unet_keras.models.segmentation import training_context

__all__ = [
    "FORMATS",
    "IMAGE_BYTES_SIGNATURE",
    "SERVING_SIGNATURE",
    "build_serving_module",
    "export_model",
    "training_context",
    "write_saved_model",
]
