"""The search space: ranges by `FinetuneConfig` field, from a recipe file,
checked, fitted to the base configuration and declared to KerasTuner."""

import copy
import dataclasses

from cm_unet_keras.config import FinetuneConfig, read_recipe
from cm_unet_keras.core.errors import InvalidInputError

# Ranges of the search, by FinetuneConfig field. Each hyperparameter's default
# is the base configuration's value. `recipes/tune_space.yaml` holds the same
# ranges as a file to copy and edit.
DEFAULT_SPACE = {
    "lr": {"type": "float", "min": 1.0e-5, "max": 1.0e-2, "sampling": "log"},
    "weight_decay": {"type": "float", "min": 1.0e-6, "max": 1.0e-2, "sampling": "log"},
    "warmup_fraction": {"type": "float", "min": 0.0, "max": 0.3},
    "frozen_encoder_epochs": {"type": "int", "min": 0, "max": 10},
    "dice_weight": {"type": "float", "min": 0.0, "max": 1.0},
    "augment_strength": {"type": "float", "min": 0.0, "max": 2.0},
    "batch_size": {"type": "choice", "values": [4, 8, 16]},
}

# Fields that define the model, the data or the protocol rather than the
# training: tuning them would change what the folds' scores compare (the
# shared initial weights, the validation pairs, the selection threshold).
UNTUNABLE = ("base_filters", "depth", "seed", "limit", "init", "precision", "val_fraction", "threshold")

SPEC_KEYS = {
    "float": {"type", "min", "max", "sampling", "step"},
    "int": {"type", "min", "max", "sampling", "step"},
    "choice": {"type", "values"},
    "boolean": {"type"},
    "fixed": {"type", "value"},
}


def load_space(path=None):
    """The search space from a recipe file (or `DEFAULT_SPACE`), checked."""
    space = copy.deepcopy(DEFAULT_SPACE) if path is None else read_recipe(path)
    source = path or "DEFAULT_SPACE"
    fields = {field.name for field in dataclasses.fields(FinetuneConfig)}
    for name, spec in space.items():
        if name not in fields:
            raise InvalidInputError(source, f"{name!r} is not a FinetuneConfig field ({sorted(fields)})")
        if name in UNTUNABLE:
            raise InvalidInputError(source, f"{name!r} defines the model or the protocol and cannot be tuned")
        if not isinstance(spec, dict) or spec.get("type") not in SPEC_KEYS:
            raise InvalidInputError(source, f"{name}: a range needs a type among {sorted(SPEC_KEYS)}")
        unknown = set(spec) - SPEC_KEYS[spec["type"]]
        if unknown:
            raise InvalidInputError(source, f"{name}: unknown key(s) {sorted(unknown)} for a {spec['type']} range")
    return space


def resolve_space(space, base, algorithm):
    """Adapt the space to the base configuration; returns (space, notes).

    Raises:
        ValueError: a base value lies outside its range (it is the first
            trial and every hyperparameter's default), or Hyperband is asked
            to search the epochs it allocates itself.
    """
    space = copy.deepcopy(space)
    notes = []
    if algorithm == "hyperband" and "epochs" in space:
        raise ValueError("hyperband allocates the epochs of each trial: remove 'epochs' from the space")
    frozen = space.get("frozen_encoder_epochs")
    if frozen is not None and frozen["type"] == "int":
        if not base.init:
            # A random encoder gains nothing from being frozen; trials would
            # spend their budget on a fixed random feature extractor.
            del space["frozen_encoder_epochs"]
            notes.append("frozen_encoder_epochs not searched: no --init, the encoder starts random")
        elif frozen["max"] > base.epochs - 1:
            # Keep at least one epoch of full fine-tuning.
            frozen["max"] = max(frozen["min"], base.epochs - 1)
            notes.append(f"frozen_encoder_epochs searched up to {frozen['max']} (epochs {base.epochs})")
    for name, spec in space.items():
        _check_default(name, spec, getattr(base, name))
    return space, notes


def _check_default(name, spec, value):
    kind = spec["type"]
    inside = {
        "float": lambda: spec["min"] <= value <= spec["max"],
        "int": lambda: spec["min"] <= value <= spec["max"],
        "choice": lambda: value in spec["values"],
        "boolean": lambda: isinstance(value, bool),
        "fixed": lambda: True,
    }[kind]()
    if not inside:
        raise ValueError(
            f"the base value {name}={value!r} lies outside its search range {spec}: the base "
            "configuration is the first trial, so widen the range or change the base value"
        )


def declare(hp, name, spec, default):
    """Declare one hyperparameter of the space on `hp`; returns its value."""
    kind = spec["type"]
    if kind == "float":
        return hp.Float(name, spec["min"], spec["max"], step=spec.get("step"),
                        sampling=spec.get("sampling", "linear"), default=float(default))
    if kind == "int":
        return hp.Int(name, spec["min"], spec["max"], step=spec.get("step"),
                      sampling=spec.get("sampling", "linear"), default=int(default))
    if kind == "choice":
        return hp.Choice(name, spec["values"], default=default)
    if kind == "boolean":
        return hp.Boolean(name, default=bool(default))
    return hp.Fixed(name, spec["value"])
