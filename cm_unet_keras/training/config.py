"""Job configurations live in `cm_unet_keras.config`; these names stay for old imports."""

from cm_unet_keras.config import (
    FinetuneConfig,
    build_config,
    coerce,
    config_to_dict,
    read_recipe,
    refuse_changed_settings,
    settings_changed,
    write_recipe,
)

__all__ = [
    "FinetuneConfig",
    "build_config",
    "coerce",
    "config_to_dict",
    "read_recipe",
    "refuse_changed_settings",
    "settings_changed",
    "write_recipe",
]
