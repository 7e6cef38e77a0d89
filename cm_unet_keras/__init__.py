"""cm-unet-keras: coronary artery segmentation in X-ray angiograms with few labels.

`CMUNet` is the U-Net; `cm_unet_keras.data`, `.training`, `.inference` and
`.evaluation` hold the stages of the pipeline, and `cm-unet` the commands.
"""

import os

# Keras 3 picks its backend at import; this package is written for TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up chatter hides the messages users need.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cm_unet_keras.version import __version__  # noqa: E402

__all__ = ["CMUNet", "SIZES", "__version__"]


def __getattr__(name):
    # Lazy: the readers, synthetic data and metrics need no TensorFlow, and
    # importing it costs seconds.
    if name in ("CMUNet", "SIZES"):
        from cm_unet_keras.models import unet

        return getattr(unet, name)
    raise AttributeError(f"module 'cm_unet_keras' has no attribute {name!r}")
