"""cm-unet-keras: coronary artery segmentation in X-ray angiograms with few labels.

`CMUNet` is the U-Net; `cm_unet_keras.data`, `.training`, `.inference` and
`.evaluation` hold the stages of the pipeline, and `cm-unet` the commands.
"""

import os

# Keras 3 picks its backend at import; this package is written for TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up chatter hides the messages users need.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import tensorflow  # noqa: F401
except ImportError:  # TensorFlow is an extra: say which one to install
    raise ImportError(
        "cm-unet-keras needs TensorFlow, an extra of the package: pip install '.[cpu]' (CPU) "
        "or '.[cuda]' (NVIDIA GPU) in the checkout, or 'cm-unet-keras[cpu]' from a wheel"
    ) from None

# Imported eagerly (not lazily): `import cm_unet_keras` must register CMUNet
# with Keras so that `keras.models.load_model("model.keras")` finds it.
from cm_unet_keras.models.unet import SIZES, CMUNet  # noqa: E402
from cm_unet_keras.version import __version__  # noqa: E402

__all__ = ["CMUNet", "SIZES", "__version__"]
