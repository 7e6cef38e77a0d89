"""Atomic writes: a kill during a save leaves the previous file whole."""

import json
import os
import tempfile
from pathlib import Path


def atomic_write(path, write):
    """Call `write(tmp_path)` then rename the result onto `path`.

    The temporary file sits in the same folder (same file system), so the
    final `os.replace` is atomic. The suffix is kept because Keras picks the
    format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A process killed during an earlier write of this file left its
    # temporary behind; one writer per file, so it is safe to clear.
    for stale in path.parent.glob(f".{path.name}.*"):
        stale.unlink(missing_ok=True)
    # Keep the full multi-part suffix (".weights.h5"): Keras checks it.
    suffix = "".join(path.suffixes) or ".tmp"
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(descriptor)
    os.unlink(tmp)  # Keras refuses to overwrite some files; let it create it.
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path, value):
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=2, default=_jsonable)))


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save_model_atomic(model, path):
    atomic_write(path, model.save)
