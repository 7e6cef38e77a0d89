"""Typed job configurations, loadable from recipe files (YAML or JSON).

One dataclass per job. A recipe file sets any subset of the fields; command
line flags override the file; unknown keys are errors (a typo in a recipe
must not silently fall back to a default).
"""

import dataclasses
import json
import typing
from pathlib import Path
from typing import Optional

import yaml

from cm_unet_keras.core.errors import InvalidInputError


@dataclasses.dataclass
class FinetuneConfig:
    """Supervised training / fine-tuning of the U-Net on labelled pairs.

    The defaults are tuned for a small U-Net on a laptop CPU; the paper's
    fine-tuning used Adam at 1e-3 without schedule, 128 epochs, batch 32 of
    whole 256 px images. We train on native-resolution patches with AdamW,
    warm-up and cosine decay over a fixed budget (2,000 steps: the N = 3
    validation curves are flat from about 1,000; at N = 30 4,000 steps
    still add 0.006-0.016: `benchmarks/finetune_budget/results.md`), on
    every labelled pair, and keep the last epoch, as nnU-Net does: the paper
    picked its checkpoint on its test set, and picking it on 1 or 2 of a
    few labelled images is noisier than not picking at all.
    """

    base_filters: int = 16
    depth: int = 4
    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 8
    patch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    # Fraction of the loss that is soft Dice; the rest is binary cross-entropy.
    dice_weight: float = 0.5
    augment_strength: float = 1.0
    # Zoom range of the training patches (log-uniform; > 1 widens vessels).
    augment_scale: tuple = (1.0, 1.0)
    # Chance of a simulated dark frame border / collimator edge per patch.
    augment_borders: float = 0.0
    foreground_fraction: float = 0.33
    # Partially labelled pairs (`finetune(..., partial_records=...)`, e.g.
    # ARCADE's main segments without side branches): loss weight of their
    # background pixels, whether unlabelled vessel-like pixels are ignored,
    # and the share of patches drawn from them (None: by image count).
    partial_background_weight: float = 1.0
    partial_ignore_vessel_like: bool = False
    partial_share: Optional[float] = None
    # Epochs at the start during which the pretrained encoder stays frozen.
    frozen_encoder_epochs: int = 0
    # Learning-rate multiplier of the layers loaded from `init` (the fresh
    # head always trains at `lr`).
    pretrained_lr_factor: float = 1.0
    # Which epoch's weights become model.keras: "best" (highest validation
    # Dice) or "last" (the end of the fixed budget; validation only watched).
    select: str = "last"
    # Fraction of the labelled pairs set aside to be scored after each epoch
    # (and to choose the epoch with select="best"); 0 trains on all.
    val_fraction: float = 0.0
    seed: int = 0
    limit: Optional[int] = None
    init: Optional[str] = None
    precision: str = "auto"
    clahe: bool = False
    threshold: float = 0.5
    # Deterministic kernels (slower): bit-reproducible runs and resumes.
    deterministic: bool = False


def config_to_dict(config):
    return dataclasses.asdict(config)


def read_recipe(path):
    """Read a recipe file (YAML or JSON) into a dict, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "recipe file not found")
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise InvalidInputError(path, f"cannot parse recipe: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidInputError(path, "a recipe must be a mapping of field: value")
    return values


def build_config(config_class, recipe=None, **overrides):
    """Make a config from defaults, then a recipe file, then overrides.

    Args:
        config_class: the dataclass of the job.
        recipe: path of a YAML/JSON recipe, a (name, mapping) pair of a
            built-in recipe, or None.
        **overrides: field values (None means "not given" and is ignored).

    Returns:
        An instance of `config_class`.
    """
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    types = typing.get_type_hints(config_class)
    values = {}
    if isinstance(recipe, tuple):
        recipe, values = f"built-in recipe {recipe[0]!r}", dict(recipe[1])
    elif recipe is not None:
        values = read_recipe(recipe)
    if values:
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InvalidInputError(
                recipe, f"unknown key(s) {unknown}; {config_class.__name__} has {sorted(fields)}"
            )
        for name, value in values.items():
            try:
                values[name] = coerce(value, types[name])
            except (TypeError, ValueError) as error:
                raise InvalidInputError(recipe, f"{name}: {error}") from None
    for name, value in overrides.items():
        if name not in fields:
            raise ValueError(f"{config_class.__name__} has no field {name!r}")
        if value is not None:
            values[name] = value
    return config_class(**values)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce(value, field_type):
    """`value` read from a recipe, as `field_type` (int, float, bool, str, tuple or Optional of one).

    YAML 1.1 reads `1e-3` (no dot) as a string and a quoted `"8"` is one:
    both are converted; what cannot be is a `ValueError` that says why.
    """
    if typing.get_origin(field_type) is typing.Union:
        if value is None:
            return None
        (field_type,) = [arg for arg in typing.get_args(field_type) if arg is not type(None)]
    if field_type is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in _TRUE + _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if field_type is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        number = float(value) if isinstance(value, (int, float, str)) else None
        if number is None or not number.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(number)
    if field_type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if field_type is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if field_type is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(value)
    return value


def settings_changed(config, recorded, may_differ=()):
    """Fields where `config` differs from the configuration a run recorded.

    Args:
        config: the configuration asked for now (a dataclass).
        recorded: the run's `config.yaml` as a mapping; its values are
            coerced to the field types first (YAML gives lists for tuples).
            A field it lacks (written by an older version) is compared with
            the field's default.
        may_differ: names of fields that do not change what the run makes
            (epochs of an extension, logging).

    Returns:
        `[(name, recorded_value, requested_value)]`, in field order.
    """
    types = typing.get_type_hints(type(config))
    changed = []
    for field in dataclasses.fields(config):
        if field.name in may_differ:
            continue
        requested = getattr(config, field.name)
        if field.name in recorded:
            try:
                before = coerce(recorded[field.name], types[field.name])
            except (TypeError, ValueError):
                before = recorded[field.name]
        else:
            before = field.default if field.default is not dataclasses.MISSING else None
        if before != requested:
            changed.append((field.name, before, requested))
    return changed


def refuse_changed_settings(run_dir, changed):
    """Stop a rerun whose settings would make another model than the run
    folder records: one line naming each field, its recorded and its asked value."""
    if changed:
        listed = ", ".join(f"{name} {before!r} -> {after!r}" for name, before, after in changed)
        raise InvalidInputError(
            run_dir,
            f"holds a run made with other settings ({listed}); rerun with the settings of its "
            "config.yaml to resume it, or give a new --out for a new run",
        )


def write_recipe(config, path):
    """Write a config as a YAML recipe that `build_config` reads back."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
