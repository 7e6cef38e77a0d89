"""Every job's configuration, in one place: typed dataclasses, loadable from
recipe files (YAML or JSON) and overridable from the command line.

One dataclass per job: `FinetuneConfig` (`cm-unet finetune`),
`PretrainConfig` (`cm-unet pretrain`, with its built-in recipes
`PRETRAIN_RECIPES`), `TuneConfig` (`cm-unet tune`) and `StudyConfig`
(`cm-unet study`). A recipe file sets any subset of the fields; command line
flags override the file; unknown keys are errors (a typo in a recipe must
not silently fall back to a default).

A field that is also a command-line flag is declared with `setting(default,
help)`: `cm-unet` builds the flag from the field (its name, type, default,
help and choices), so adding a flag is adding a field.
"""

import argparse
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.conventions import CONVENTIONS

# Nothing here imports TensorFlow: `cm-unet --help` builds its flags from
# these classes and must answer at once.

# The paper's share of masked patches (127 of the 196 16-px patches of a
# 224 px view); the pretrainer's default too.
MASK_RATIO = 0.65
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# How model.keras is chosen among the epochs of a fine-tuning (`FinetuneConfig.select`).
SELECT_RULES = ("best", "last")
VIEWS = ("crops", "shift")
ALGORITHMS = ("random", "bayesian", "hyperband")
# The study's starting points: a pretraining variant of the same code, or a random start.
INITS = ("cmunet", "scratch", "mae_only", "contrastive_only")


def split_init(name):
    """A study init: `'cmunet'` -> `('cmunet', None)`; `'cmunet@500'` ->
    `('cmunet', 500)`, the same start fine-tuned for 500 steps at every N
    instead of the study's budget (a budget chosen for that start on the
    selection pairs, e.g. by `benchmarks/pretrain_screen.py`).

    Raises:
        ValueError: an unknown start, or steps that are not a positive integer.
    """
    base, at, steps = str(name).partition("@")
    if base not in INITS:
        raise ValueError(f"init {name!r}: choose one of {', '.join(INITS)}, optionally with @STEPS")
    if not at:
        return base, None
    if not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"init {name!r}: write START@STEPS with a positive whole number of steps")
    return base, int(steps)


def init_name(name):
    """`name` if `split_init` accepts it: the type of `--inits` values, whose
    refusal argparse prints as it is."""
    try:
        split_init(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return str(name)


def setting(default, help, choices=None, none=None, item=None):
    """A dataclass field that is also a command-line flag.

    Args:
        default: the field's default.
        help: the flag's help, without its default (which is added from the
            field, or from the built-in recipes, when the parser is built).
        choices: the allowed values.
        none: what a None default means, in words ("every pair").
        item: the type of each value of a tuple field (the flag takes several).
    """
    metadata = {"help": help, "choices": choices, "none": none, "item": item}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class FinetuneConfig:
    """Supervised training / fine-tuning of the U-Net on labelled pairs.

    The defaults are tuned for a small U-Net on a laptop CPU; the paper's
    fine-tuning used Adam at 1e-3 without schedule, 128 epochs, batch 32 of
    whole 256 px images. We train on native-resolution patches with AdamW,
    warm-up and cosine decay over a fixed budget (2,000 steps: the N = 3
    validation curves are flat from about 1,000; at N = 30 4,000 steps
    still add 0.006-0.016: `benchmarks/finetune_budget/results.md`; a
    pretrained start with a handful of pairs is better at 500, `--epochs 5`:
    `benchmarks/pretrain_screen/results.md`), on
    every labelled pair, and keep the last epoch, as nnU-Net does: the paper
    picked its checkpoint on its test set, and picking it on 1 or 2 of a
    few labelled images is noisier than not picking at all.
    """

    base_filters: int = setting(16, "U-Net width (16 small, 32 base, 64 paper)")
    depth: int = setting(4, "U-Net levels")
    epochs: int = setting(20, "epochs of --steps-per-epoch steps; a rerun with more extends the run")
    steps_per_epoch: int = setting(100, "optimizer steps per epoch")
    batch_size: int = setting(8, "patches per step")
    patch_size: int = setting(128, "side of the training patches (a multiple of 2**depth)")
    lr: float = setting(2e-3, "peak learning rate (AdamW, warm-up then cosine)")
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    # Fraction of the loss that is soft Dice; the rest is binary cross-entropy.
    dice_weight: float = 0.5
    # Weight of 1 - soft clDice (Shit et al. 2021) added to Dice + BCE. 0:
    # at 0.5 (k = 3, 4 seeds) Dice -0.004, centerline recall +0.023, both
    # intervals across 0, 2.6x the step time (benchmarks/cldice_screen).
    cldice_weight: float = setting(0.0, "weight of a soft clDice term added to Dice + BCE (0: none)")
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
    # Mask conventions (`data.conventions`): one output per convention, each
    # taught what every pair's mask implies for it; None keeps one output.
    conventions: Optional[tuple] = setting(
        None, f"one output per mask convention, of {', '.join(CONVENTIONS)}", none="one output", item=str
    )
    # The convention of pairs that do not state their own: recorded in the
    # run, it is what a one-output model's masks mean at inference.
    convention: Optional[str] = setting(
        None, f"mask convention of the given pairs: {', '.join(CONVENTIONS)}", none="not recorded"
    )
    # Epochs at the start during which the pretrained encoder stays frozen.
    frozen_encoder_epochs: int = setting(0, "epochs at the start with the encoder frozen")
    # BatchNorm layers keep the start's moving statistics and scale/offset
    # (inference mode): a few patches of one or two frames otherwise replace
    # the statistics a start learned over many (momentum 0.9: after 100
    # steps nothing of them is left).
    freeze_batchnorm: bool = setting(False, "BatchNorm layers keep the start's statistics and do not train")
    # Learning-rate multiplier of the layers loaded from `init` (the fresh
    # head always trains at `lr`).
    pretrained_lr_factor: float = setting(1.0, "learning-rate multiplier of the layers loaded by --init")
    # Which epoch's weights become model.keras: "best" (highest validation
    # Dice) or "last" (the end of the fixed budget; validation only watched).
    select: str = setting("last", "model.keras: best validation epoch, or the last epoch", choices=SELECT_RULES)
    # Fraction of the labelled pairs set aside to be scored after each epoch
    # (and to choose the epoch with select="best"); 0 trains on all.
    val_fraction: float = setting(0.0, "share of the pairs scored after each epoch (0: all pairs train)")
    seed: int = setting(0, "seeds the split, the patches and the initialisation")
    limit: Optional[int] = setting(
        None, "use N labelled pairs in all (chosen by the seed; validation carved from them)", none="every pair"
    )
    init: Optional[str] = setting(
        None, "start from a .keras U-Net, a pretraining run or a preset", none="random initialisation"
    )
    precision: str = setting("auto", "compute precision", choices=PRECISIONS)
    clahe: bool = setting(False, "CLAHE before normalisation")
    threshold: float = 0.5
    # Deterministic kernels (slower): bit-reproducible runs and resumes.
    deterministic: bool = setting(False, "deterministic kernels: bit-reproducible runs and resumes")

    def __post_init__(self):
        # A flag gives a list; the run's record compares tuples.
        if self.conventions is not None:
            self.conventions = tuple(self.conventions)


@dataclasses.dataclass
class PretrainConfig:
    """Contrastive masked pretraining of the U-Net on unlabeled angiograms.

    Defaults are the paper's where it has one (mask, heads, EMA, InfoNCE,
    AdamW, schedule, 224 px views, batch 256, 300 epochs, seed 60), except
    the U-Net width (16, as `FinetuneConfig`; the paper: 64).
    """

    base_filters: int = setting(16, "U-Net width (16 small, 32 base, 64 paper)")
    depth: int = setting(4, "U-Net levels")
    image_size: int = setting(224, "side of the views (paper 224)")
    # Shorter side of the decoded images before cropping; the original
    # resized to 256x256. None or 0: native resolution.
    working_size: Optional[int] = setting(256, "shorter side of the decoded images", none="native resolution")
    patch_size: int = 16
    mask_ratio: float = setting(MASK_RATIO, "share of the patches masked")
    projection_dim: int = 256
    # None: 4x the bottleneck width (the paper: 1536 for a 1024 bottleneck).
    projection_hidden_dim: Optional[int] = None
    ema_momentum: float = 0.996
    temperature: float = 0.07
    rc_weight: float = setting(1.0, "reconstruction loss weight (0: contrastive only)")
    ct_weight: float = setting(1.0, "contrastive loss weight (0: MAE only)")
    crop_area: tuple = (0.2, 1.0)
    crop_aspect: tuple = (0.75, 4.0 / 3.0)
    flip: bool = True
    max_shift: int = 31  # pixels at 224 px, scaled with image_size ("shift" views)
    noise_fraction: float = 0.1
    # "shift": the original's crop + shifted noisy copy; "crops": two
    # overlapping crops with intensity jitter and blur (data/views.py).
    views: str = setting("shift", "two overlapping jittered crops, or the original's shifted copy", choices=VIEWS)
    jitter: float = 0.4  # "crops" views: brightness/contrast/gamma strength
    blur_probability: float = 0.5  # "crops" views: chance the target view is blurred
    epochs: int = setting(300, "epochs; a rerun with more extends the run")
    warmup_epochs: int = setting(40, "epochs of linear warm-up")
    # None: one pass over the angiograms (count // batch_size).
    steps_per_epoch: Optional[int] = setting(None, "steps per epoch", none="one pass over the angiograms")
    batch_size: int = setting(256, "global batch over all devices")
    base_lr: float = 1.5e-4  # per 256 samples of global batch
    # The peak learning rate; overrides base_lr scaling.
    lr: Optional[float] = setting(None, "peak learning rate", none="1.5e-4 x batch / 256")
    beta_1: float = 0.9
    beta_2: float = 0.95
    weight_decay: float = 0.05
    warmup_start_factor: float = 1e-4
    seed: int = setting(60, "seeds the views and the initialisation")
    max_images: Optional[int] = setting(None, "use N angiograms, drawn by the seed", none="all of them")
    frame_step: int = setting(1, "every k-th frame of DICOM cine runs")
    recursive: bool = True
    skip_invalid: bool = setting(False, "skip unreadable files instead of stopping")
    grid_every: int = 5  # epochs between reconstruction grids
    precision: str = setting("auto", "compute precision", choices=PRECISIONS)
    # Time budget in minutes for the training epochs: when set, `epochs` and
    # `warmup_epochs` are sized to it from the measured step time and
    # epoch-end cost (the warm-up keeps its share of the recipe's epochs);
    # see `fit_to_budget`.
    minutes: Optional[float] = setting(
        None, "time budget for training: sizes the epochs and the schedule to it from the measured step time",
        none="none, the recipe's epochs",
    )

    def view_config(self):
        from cm_unet_keras.data.views import ViewConfig  # TensorFlow: a job is running

        return ViewConfig(
            image_size=self.image_size,
            crop_area=tuple(self.crop_area),
            crop_aspect=tuple(self.crop_aspect),
            flip=self.flip,
            max_shift=self.max_shift,
            noise_fraction=self.noise_fraction,
            views=self.views,
            jitter=self.jitter,
            blur_probability=self.blur_probability,
        )

    def peak_lr(self):
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256.0

    def pretrainer_kwargs(self):
        """The `ContrastiveMaskedPretrainer` arguments this job sets."""
        return dict(base_filters=self.base_filters, depth=self.depth, patch_size=self.patch_size,
                    mask_ratio=self.mask_ratio, projection_dim=self.projection_dim,
                    projection_hidden_dim=self.projection_hidden_dim, ema_momentum=self.ema_momentum,
                    temperature=self.temperature, rc_weight=self.rc_weight, ct_weight=self.ct_weight, seed=self.seed)

    def check(self, replicas=1):
        multiple = math.lcm(self.patch_size, 2**self.depth)
        if self.image_size % multiple:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of {multiple} "
                f"(patch_size {self.patch_size} and 2**depth)"
            )
        if self.batch_size < 1 or self.batch_size % replicas:
            raise ValueError(f"batch_size {self.batch_size} must be a positive multiple of the {replicas} replicas")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")


# Built-in recipes (`cm-unet pretrain --config NAME`); a recipe file holds
# the same keys. `cpu` is the default on a machine without a GPU, `paper`
# (the dataclass defaults: width 16, 224 px, batch 256, 300 epochs) with one.
PRETRAIN_RECIPES = {
    # Issue 13's CPU recipe: a 16-wide, 4-level U-Net on 128 px views cropped
    # from angiograms decoded with their shorter side at 256 px, batch 32,
    # two overlapping crops with intensity jitter and blur, 6,000 steps
    # (about 75 minutes at the 0.7-0.8 s/step measured on 2 busy
    # AVX512_BF16 cores); `--minutes`
    # resizes it.
    "cpu": {
        "base_filters": 16, "depth": 4, "image_size": 128, "working_size": 256, "batch_size": 32,
        "lr": 1e-3, "epochs": 125, "warmup_epochs": 10, "steps_per_epoch": 48, "grid_every": 25,
        "views": "crops",
    },
    "paper": {},
}


def default_recipe_name():
    """`paper` where TensorFlow sees a GPU, else `cpu`."""
    import tensorflow as tf

    return "paper" if tf.config.list_physical_devices("GPU") else "cpu"


@dataclasses.dataclass
class TuneConfig:
    """A hyperparameter search of fine-tuning (`cm-unet tune`).

    The fine-tuning itself is a `FinetuneConfig` (the base configuration);
    this holds how it is searched.

    Args:
        algorithm: "random", "bayesian" or "hyperband".
        max_trials: trials in all; a rerun with a larger value extends the
            search. With Hyperband it caps the trials of its brackets.
        seed: seeds the oracle and the assignment of pairs to folds.
        folds: k of the cross-validation; None picks k-fold (5, or one fold
            per pair below 5) for up to 10 pairs and one validation split of
            the base config's `val_fraction` (0.2 if it has none) above; 1
            forces that single split.
        space: recipe file (YAML/JSON) of ranges by field; None uses
            `DEFAULT_SPACE`.
        initial_points: random trials before the Bayesian model guides the
            search; None takes half the trials (at least 3). KerasTuner's own
            default, 3 per hyperparameter (21), would leave a CPU-sized
            search purely random.
        hyperband_factor: Hyperband's reduction factor (epochs grow and
            trials shrink by it from one round to the next).
    """

    algorithm: str = setting("random", "search algorithm", choices=ALGORITHMS)
    max_trials: int = setting(8, "trials in all; caps Hyperband too")
    seed: int = 0
    folds: Optional[int] = setting(None, "k of k-fold", none="5 up to 10 pairs; above, 1 split")
    space: Optional[str] = setting(None, "search space recipe", none="the ranges of recipes/tune_space.yaml")
    initial_points: Optional[int] = setting(
        None, "random trials before Bayesian guidance", none="half the trials, at least 3"
    )
    hyperband_factor: int = setting(3, "Hyperband's epoch growth per round")


@dataclasses.dataclass
class StudyConfig:
    """What the label-efficiency study runs; the budgets live in the two job configs.

    Args:
        pretrain: the `PretrainConfig` shared by the three variants (their
            loss weights are set per variant).
        finetune: the `FinetuneConfig` shared by every fine-tune (its
            `seed` and `init` are set per run; it trains on all N pairs and
            keeps the last epoch).
        n_labels: numbers of labelled training pairs.
        seeds: seeds of the subsets and initialisations.
        seeds_by_n: {N: seeds} where an N gets other seeds than `seeds`
            (more where the spread is larger: few labels).
        steps_by_n: {N: fine-tuning steps} where an N needs another budget
            than `finetune`'s (the same for every init at that N).
        inits: `scratch` and/or pretraining variants; `VARIANT@STEPS`
            fine-tunes that start for STEPS steps at every N (`split_init`).
        frangi: include the Frangi baseline.
        frangi_sigma_sets / frangi_thresholds: the Frangi grid; thresholds
            are fractions of each image's largest vesselness in its field
            of view.
        max_unlabeled: None for the whole pool, else a seeded subset.
        max_holdout: None for all 10 reported pairs (only `--quick` lowers it).
    """

    pretrain: PretrainConfig
    finetune: FinetuneConfig
    n_labels: tuple = setting((3, 10, 30), "numbers of labelled pairs", item=int)
    seeds: tuple = setting((0, 1, 2), "seeds of every N", item=int)
    seeds_by_n: dict = dataclasses.field(default_factory=dict)
    steps_by_n: dict = dataclasses.field(default_factory=dict)
    inits: tuple = setting(INITS, f"initialisations: {', '.join(INITS)}; START@STEPS fine-tunes that start for "
                                  "STEPS steps at every N instead of the study's budget", item=init_name)
    frangi: bool = True
    frangi_sigma_sets: tuple = ((1, 2), (1, 2, 3), (1, 2, 3, 4), (2, 3, 4), (1, 2, 3, 4, 5, 6), (2, 4, 6))
    frangi_thresholds: tuple = tuple(np.round(np.geomspace(0.01, 0.5, 24), 4))
    max_unlabeled: Optional[int] = None
    max_holdout: Optional[int] = None


# --- recipe files ---------------------------------------------------------------
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


def write_recipe(config, path):
    """Write a config as a YAML recipe that `build_config` reads back."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


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


def optional_type(field_type):
    """`X` of `Optional[X]`; any other type as it is."""
    if typing.get_origin(field_type) is typing.Union:
        (field_type,) = [arg for arg in typing.get_args(field_type) if arg is not type(None)]
    return field_type


def coerce(value, field_type):
    """`value` read from a recipe, as `field_type` (int, float, bool, str, tuple or Optional of one).

    YAML 1.1 reads `1e-3` (no dot) as a string and a quoted `"8"` is one:
    both are converted; what cannot be is a `ValueError` that says why.
    """
    if typing.get_origin(field_type) is typing.Union and value is None:
        return None
    field_type = optional_type(field_type)
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


# --- run folders as records -------------------------------------------------------
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
