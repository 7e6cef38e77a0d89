"""The model's mask of a frame, to start the correction from.

The pre-fill is what `cm-unet predict FOLDER --model M` writes as
`N_mask.png` for the frame: it is computed by `predict_files` itself, with
the model's threshold and CLAHE setting (its card or run folder) and
predict's default precision, then cached in `FOLDER/.annotate/prefill/` so
that each frame is computed once. The model loads on a thread: the page
opens at once and a frame's mask waits for it.
"""

import hashlib
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from cm_unet_keras.core.errors import InvalidInputError

DEFAULT_MODEL = "cmunet_small_general_v3"
NO_MODEL = "none"
# `cm-unet predict`'s default: the machine's fastest precision.
PRECISION = "auto"


class Prefill:
    """Masks of `folder`'s frames by `model_name`, cached on disk.

    Args:
        folder: an `store.AnnotationFolder`.
        model_name: a preset, a `.keras` file or run folder (anything
            `load_model` takes), or "none": frames without a saved mask open
            empty.
        log: a print-like function for what the user should know (the
            settings used, a model that cannot be used).

    Attributes:
        state: "loading", "ready", "none" (no model asked for) or "failed"
            (`problem` says why; frames then open empty).
    """

    def __init__(self, folder, model_name=DEFAULT_MODEL, log=print):
        self.folder, self.model_name, self.log = folder, model_name, log
        self.state, self.problem, self.settings = "loading", None, None
        self._model, self._cache = None, None
        self._loaded = threading.Event()
        self._compute = threading.Lock()  # one forward pass at a time
        if model_name in (None, NO_MODEL):
            self.state = "none"
            self._loaded.set()
        else:
            threading.Thread(target=self._load, name="annotate-model", daemon=True).start()

    def _load(self):
        try:
            from cm_unet_keras.inference.predict import load_model

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = load_model(self.model_name)
            settings = model.segmentation_settings
            if settings is not None and settings.pretrained_only:
                raise InvalidInputError(self.model_name, "is pretrained only: its segmentation head was never trained")
            for warning in caught:
                self.log(f"warning: {warning.message}")
            self._model, self.settings = model, settings
            self._cache = self.folder.state / "prefill" / cache_key(self.model_name, settings)
            self.state = "ready"
            self.log(f"model {self.model_name}: threshold {settings.threshold:g}, CLAHE "
                     f"{'on' if settings.clahe else 'off'}; masks cached in {self._cache}")
        except Exception as error:  # any failure leaves the tool usable, with empty masks
            self.state, self.problem = "failed", str(error)
            self.log(f"warning: model {self.model_name} cannot pre-fill the masks ({error}); "
                     "frames without a mask open empty")
        finally:
            self._loaded.set()

    def status(self):
        """{"model", "state", "problem"}, for the page."""
        return {"model": self.model_name, "state": self.state, "problem": self.problem}

    def mask(self, name):
        """The model's 0/1 mask of frame `name`, or None without a usable model.

        Waits for the model to load; computes the mask once, then reads it
        from the cache (recomputed if the angiogram changed since).
        """
        frame = self.folder.frame(name)
        self._loaded.wait()
        if self.state != "ready":
            return None
        import cv2

        cached = self._cache / f"{name}.png"
        with self._compute:
            if not cached.is_file() or cached.stat().st_mtime < frame.image_path.stat().st_mtime:
                self._predict(frame, cached)
        return (cv2.imread(str(cached), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)

    def _predict(self, frame, cached):
        from cm_unet_keras.inference.predict import predict_files

        cached.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".predict.", dir=cached.parent))
        try:
            (written,) = predict_files(self._model, [frame.image_path], scratch, threshold=self.settings.threshold,
                                       clahe=self.settings.clahe, log=None, precision=PRECISION)
            Path(written["mask"]).replace(cached)  # same folder: atomic
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def cache_key(model_name, settings):
    """A folder name that changes with the model (its file's size and time),
    its threshold and CLAHE setting: a retrained model is not read from an
    old model's cache."""
    path = Path(str(model_name))
    stamp = f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.exists() else ""
    text = f"{model_name}|{stamp}|{settings.threshold}|{settings.clahe}|{PRECISION}"
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name or str(model_name))[:40]
    return f"{label}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

