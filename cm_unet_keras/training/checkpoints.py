"""Atomic writes live in `cm_unet_keras.core.files`; these names stay for old imports."""

from cm_unet_keras.core.files import atomic_write, atomic_write_json, save_model_atomic

__all__ = ["atomic_write", "atomic_write_json", "save_model_atomic"]
