"""Writes that a kill leaves whole or not at all: files, folders, JSON.

A file is written to a temporary name beside it and renamed over it; a
folder is filled under a hidden staging name beside it and renamed into
place. A rename within one file system is atomic, so a reader (a resumed
run, TF Serving polling its model folder, a user loading a preset) sees the
old version or the new one, never part of either.
"""

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cm_unet_keras.core.errors import InvalidInputError


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
    """`value` as indented JSON (numpy scalars as numbers), written atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=2, default=_jsonable)))


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save_model_atomic(model, path):
    """`model.save(path)` (a `.keras` file), written atomically."""
    atomic_write(path, model.save)


def json_safe(value):
    """`value` with what JSON cannot hold made plain: NaN and infinity become
    None (null), numpy scalars Python numbers, tuples lists, in nested dicts
    and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def publish_folder(target, write, overwrite=False, staging_prefix=None, clear_stale=False):
    """Fill a folder with `write` and move it to `target` whole.

    `write(folder)` fills an empty staging folder beside `target` (same file
    system, a hidden name); the folder is then renamed onto `target`. An
    existing `target` is refused unless `overwrite`: then it is renamed
    aside, the new folder renamed in, and the old one deleted, so that at no
    moment is a half-written or half-deleted folder visible (for the instant
    between the two renames `target` is absent).

    Args:
        target: the folder to publish.
        write: callable filling the staging folder it is given.
        overwrite: replace an existing `target`.
        staging_prefix: name prefix of the staging folder (default
            `.NAME.`). A kill during `write` leaves that folder behind.
        clear_stale: first delete staging folders that a killed earlier
            write of `target` left (only where one process writes `target`).

    Returns:
        `target` as a `Path`.

    Raises:
        InvalidInputError: `target` exists, or appeared while it was being
            written, and `overwrite` is False; nothing is changed.
    """
    target = Path(target)
    prefix = staging_prefix or f".{target.name}."
    if target.exists() and not overwrite:
        raise InvalidInputError(target, "exists; pass overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    if clear_stale:
        for stale in target.parent.glob(f"{prefix}*"):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        # mkdtemp makes a private (0700) folder; a server or another user
        # must be able to read what is published.
        os.chmod(staging, 0o755)
        write(staging)
        _move_into_place(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _move_into_place(staging, target, overwrite):
    if not overwrite:
        try:
            # Fails if another writer published a non-empty `target` meanwhile.
            os.rename(staging, target)
        except OSError as error:
            raise InvalidInputError(target, f"appeared while this one was being written ({error})") from error
        return
    replaced = None
    if target.exists():
        replaced = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced.", dir=target.parent))
        os.rename(target, replaced)  # onto the empty folder: atomic
    try:
        os.rename(staging, target)
    except OSError:
        if replaced is not None:
            os.rename(replaced, target)
        raise
    if replaced is not None:
        shutil.rmtree(replaced)
