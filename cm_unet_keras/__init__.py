"""cm-unet-keras: coronary artery segmentation in X-ray angiograms with few labels.

```python
from cm_unet_keras import CMUNet
model = CMUNet.from_preset("cmunet_small_xca")
probability, vessel_mask = model.segment("angiogram.png")
```

The flat API: `CMUNet`, `ContrastiveMaskedPretrainer`, `load_model`,
`segment`, `read_angiogram`, `finetune` with `FinetuneConfig`, `pretrain`
with `PretrainConfig`. `cm_unet_keras.data`, `.models`, `.training`,
`.inference` and `.evaluation` hold the stages of the pipeline (on
`.core`, with every job's configuration in `.config`), `.tuning` and
`.experiments` build on them, and `cm-unet` holds the commands.
"""

import importlib
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

# The rest of the flat API is imported on first use: `import cm_unet_keras`
# stays as light as the U-Net it must register.
_LAZY = {
    "ContrastiveMaskedPretrainer": "cm_unet_keras.models.pretrainer",
    "FinetuneConfig": "cm_unet_keras.config",
    "PretrainConfig": "cm_unet_keras.config",
    "finetune": "cm_unet_keras.training.finetune",
    "load_model": "cm_unet_keras.inference.predict",
    "pretrain": "cm_unet_keras.training.pretrain",
    "read_angiogram": "cm_unet_keras.data.readers",
    "segment": "cm_unet_keras.inference.predict",
}

__all__ = ["CMUNet", "SIZES", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
