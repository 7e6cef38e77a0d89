"""The TF Serving model layout `BASE/NAME/VERSION/`, written atomically.

TF Serving polls `BASE/NAME` and loads every folder whose name is a number;
it must never see a half-written version. Each version is written into a
hidden staging folder beside it (same file system, and a non-numeric name
that TF Serving ignores) and renamed into place. Replacing a version renames
the old folder aside first, then the new one in, then deletes the old one:
at no moment is a half-written or half-deleted version visible, although
for the instant between the two renames the version is absent
(`cm_unet_keras.core.files.publish_folder`).

A kill during the write leaves a `.staging-*` folder, which TF Serving
ignores and which can be deleted.
"""

import os
from pathlib import Path

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import publish_folder


def version_dir(base_dir, name, version):
    """`BASE/NAME/VERSION` after checking the name and version."""
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise InvalidInputError(name, "a model name must be a single folder name")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidInputError(version, "TF Serving versions are non-negative integers")
    return Path(base_dir) / name / str(version)


def check_version_free(target, overwrite=False):
    """Raise unless `target` is missing or may be overwritten."""
    if target.exists() and not overwrite:
        raise InvalidInputError(
            target, "this version exists; pass --overwrite to replace it or pick a new version"
        )


def publish_version(base_dir, name, version, write, overwrite=False):
    """Call `write(folder)` on a staging folder, then move it to `BASE/NAME/VERSION`.

    Args:
        base_dir: the model base path TF Serving is pointed at.
        name: the model name.
        version: a non-negative integer.
        write: callable filling the empty staging folder it is given.
        overwrite: replace an existing version (atomically).

    Returns:
        The `Path` of the published version.

    Raises:
        InvalidInputError: the version exists and `overwrite` is False (the
            existing version is left untouched).
    """
    target = version_dir(base_dir, name, version)
    check_version_free(target, overwrite)
    return publish_folder(target, write, overwrite, staging_prefix=f".staging-{version}-")
