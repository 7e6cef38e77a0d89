"""`InvalidInputError` lives in `cm_unet_keras.core.errors`; this name stays for old imports."""

from cm_unet_keras.core.errors import InvalidInputError

__all__ = ["InvalidInputError"]
