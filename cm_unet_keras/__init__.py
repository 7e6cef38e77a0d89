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

`import cm_unet_keras` imports neither TensorFlow nor Keras (the names above
are imported on first use); importing Keras registers `CMUNet` with it.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

# Keras 3 picks its backend at import; this package is written for TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up chatter hides the messages users need.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow is an extra: say which one to install, without importing it
# (`cm-unet --help` and `--version` answer at once; a job imports it).
if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
        "cm-unet-keras needs TensorFlow, an extra of the package: pip install '.[cpu]' (CPU) "
        "or '.[cuda]' (NVIDIA GPU) in the checkout, or 'cm-unet-keras[cpu]' from a wheel"
    )

from cm_unet_keras.version import __version__  # noqa: E402

# Imported on first use (PEP 562): `import cm_unet_keras` imports neither
# TensorFlow nor Keras. `CMUNet` is also registered with Keras as soon as
# Keras is imported (below), so that `keras.models.load_model("model.keras")`
# finds it after `import cm_unet_keras`, whichever of the two came first.
_LAZY = {
    "CMUNet": "cm_unet_keras.models.unet",
    "SIZES": "cm_unet_keras.models.unet",
    "ContrastiveMaskedPretrainer": "cm_unet_keras.models.pretrainer",
    "FinetuneConfig": "cm_unet_keras.config",
    "PretrainConfig": "cm_unet_keras.config",
    "finetune": "cm_unet_keras.training.finetune",
    "load_model": "cm_unet_keras.inference.predict",
    "pretrain": "cm_unet_keras.training.pretrain",
    "read_angiogram": "cm_unet_keras.data.readers",
    "segment": "cm_unet_keras.inference.predict",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


_NETWORK = "cm_unet_keras.models.unet"


class _RegisterWhenKerasLoads(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import the network (registering `CMUNet`) right after Keras itself is imported.

    It finds `keras` as the other finders do, then runs Keras' own loader and,
    once Keras is whole, imports `models.unet`. It leaves `sys.meta_path` at
    the first import of Keras.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self._keras_loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._keras_loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self._keras_loader  # Keras' own, from now on
        self._keras_loader.exec_module(module)
        # A module that imports Keras on its way to importing the network gets
        # the partly imported network here; it is completed by that import.
        importlib.import_module(_NETWORK)


if "keras" in sys.modules:
    importlib.import_module(_NETWORK)
else:
    sys.meta_path.insert(0, _RegisterWhenKerasLoads())
