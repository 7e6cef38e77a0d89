"""`cm-unet`: the command line. Each subcommand parses flags and calls the API.

Each command's flags sit just above its `cmd_*` function. The flags of a
job's settings are built from the fields of its configuration class
(`cm_unet_keras.config`): name, type, choices, help and default come from
the field, and the names listed in `*_FLAGS` are passed back to the class
as they are.

Building the parser, `--help`, `--version` and `presets` import neither
TensorFlow nor Keras, so they answer at once: each job imports what it
needs, TensorFlow included, in its `cmd_*` function.
"""

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

import cm_unet_keras  # noqa: F401  (sets the backend and log level first; imports no TensorFlow)
from cm_unet_keras.annotate.prefill import DEFAULT_MODEL as DEFAULT_ANNOTATION_MODEL
from cm_unet_keras.config import (
    PRECISIONS,
    PRETRAIN_RECIPES,
    FinetuneConfig,
    PretrainConfig,
    StudyConfig,
    TuneConfig,
    build_config,
    optional_type,
    read_recipe,
)
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.conventions import CONVENTIONS, DEFAULT_CONVENTION
from cm_unet_keras.data.layouts import NNUNET_SUBSETS

# The fields of each job that are flags (`--base-filters` is `base_filters`).
FINETUNE_FLAGS = (
    "base_filters", "depth", "epochs", "steps_per_epoch", "batch_size", "lr", "patch_size", "val_fraction",
    "seed", "limit", "init", "frozen_encoder_epochs", "freeze_batchnorm", "pretrained_lr_factor", "select",
    "precision", "clahe", "deterministic", "cldice_weight", "conventions", "convention",
)
PRETRAIN_FLAGS = (
    "minutes", "views", "base_filters", "depth", "epochs", "warmup_epochs", "steps_per_epoch", "batch_size",
    "image_size", "working_size", "mask_ratio", "rc_weight", "ct_weight", "lr", "seed", "max_images", "frame_step",
    "skip_invalid", "precision",
)
TUNE_FLAGS = ("space", "algorithm", "max_trials", "folds", "initial_points", "hyperband_factor")
TUNE_FINETUNE_FLAGS = (
    "base_filters", "depth", "seed", "init", "epochs", "steps_per_epoch", "patch_size", "val_fraction", "precision",
    "clahe",
)
STUDY_FLAGS = ("seeds", "n_labels", "inits")


# --- shared flags -----------------------------------------------------------------
class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends an option's argparse default to its help, unless the help
    states its default already (the config-backed options do)."""

    def _get_help_string(self, action):
        help = action.help or ""
        if "default" not in help and not any(action.default is value for value in (None, False, argparse.SUPPRESS)):
            help += " (default: %(default)s)"
        return help


def _shown(value):
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _config_flags(parser, config_class, names, recipes=None, helps=None):
    """Add `--flag` for each field of `config_class` in `names`, built from the field.

    The field gives the flag's type (a bool is a switch; a tuple takes
    several values of its `item` type), its choices and its help
    (`helps[name]` replaces it), which ends with the field's default, or
    each built-in recipe's where they differ. The flag's own default stays
    None: a recipe file sets the field unless the flag is given.

    Args:
        recipes: {label: {field: value}}, e.g. {"with the cpu recipe": ...}:
            the defaults shown per recipe.
    """
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    types = typing.get_type_hints(config_class)
    for name in names:
        field, kind = fields[name], optional_type(types[name])
        options = {"choices": list(field.metadata["choices"])} if field.metadata["choices"] else {}
        if kind is bool:
            options["action"] = "store_true"
        elif kind is tuple:
            options.update(nargs="+", type=field.metadata["item"])
        else:
            options["type"] = kind
        help = (helps or {}).get(name, field.metadata["help"])
        parser.add_argument(f"--{name.replace('_', '-')}", default=None,
                            help=f"{help} {_default_note(field, kind, recipes)}", **options)


def _default_note(field, kind, recipes):
    """'(default: X)', or '(default: X with the cpu recipe, Y with the paper recipe)'."""
    values = {label: recipe.get(field.name, field.default) for label, recipe in (recipes or {"": {}}).items()}

    def shown(value):
        if value is None:
            return field.metadata["none"]
        return ("on" if value else "off") if kind is bool else _shown(value)

    texts = {label: shown(value) for label, value in values.items()}
    if len(set(texts.values())) == 1:
        return f"(default: {next(iter(texts.values()))})"
    return "(default: " + ", ".join(f"{text} {label}".strip() for label, text in texts.items()) + ")"


def _flag_values(args, names):
    """{field: value} of the config flags in `names` (None: not given)."""
    return {name: getattr(args, name) for name in names}


def _add_layout_arguments(parser, default_part="train"):
    group = parser.add_argument_group("labelled dataset (one layout)")
    group.add_argument("--pairs", help="folder of N.png + N<suffix>.png pairs")
    group.add_argument("--mask-suffix", default="_gt", help="mask file suffix for --pairs")
    group.add_argument("--images", help="folder of angiograms (with --masks: same file names)")
    group.add_argument("--masks", help="folder of vessel masks: 0/1, or 0/255 with values >= 128 vessel")
    group.add_argument("--nnunet", help="nnU-Net raw dataset folder: dataset.json, imagesTr/CASE_0000.png, labelsTr/CASE.png")
    group.add_argument(
        "--nnunet-set", choices=sorted(NNUNET_SUBSETS), default="train",
        help="with --nnunet: imagesTr/labelsTr (train) or imagesTs/labelsTs (test)",
    )
    group.add_argument(
        "--nnunet-labels", nargs="+", metavar="NAME",
        help="with --nnunet: the dataset.json labels that are vessel (default: every label but background)",
    )
    group.add_argument("--split", help="split file written by `cm-unet split`: use one part of the dataset")
    group.add_argument("--part", default=default_part, help="part of --split to use")
    group.add_argument(
        "--skip-invalid", action="store_true",
        help="leave out unreadable or unmatched files (listed on stderr) instead of stopping",
    )


def _labelled_job(command, name, help, out, config):
    """A command that trains on a labelled dataset: its layout flags, `--out` and `--config`."""
    parser = command(name, help)
    _add_layout_arguments(parser)
    parser.add_argument("--out", required=True, help=out)
    parser.add_argument("--config", help=config)
    return parser


def _records_from_layout(args):
    """(labelled records of the layout flags, the files `--skip-invalid` left
    out as `[{"path", "problem"}]`, or None without it)."""
    from cm_unet_keras.data.layouts import index_images_masks, index_nnunet, index_pairs, validate_records

    if sum(map(bool, (args.pairs, args.images or args.masks, args.nnunet))) > 1:
        raise SystemExit("error: give one of --pairs, --images/--masks or --nnunet")
    skipped = [] if args.skip_invalid else None
    if args.pairs:
        from cm_unet_keras.annotate.store import STATE_FOLDER

        # In a folder `cm-unet annotate` serves, an angiogram without a mask is
        # a frame not annotated yet; anywhere else a missing mask is an error.
        unlabelled = [] if (Path(args.pairs) / STATE_FOLDER).is_dir() else None
        records = index_pairs(args.pairs, mask_suffix=args.mask_suffix, skipped=skipped, unlabelled=unlabelled)
        if unlabelled:
            names = ", ".join(Path(path).name for path in unlabelled[:5]) + (", ..." if len(unlabelled) > 5 else "")
            print(f"note: left out {len(unlabelled)} angiogram(s) of {args.pairs} not annotated yet (no "
                  f"{args.mask_suffix} mask): {names}", file=sys.stderr)
    elif args.images and args.masks:
        records = index_images_masks(args.images, args.masks, skipped=skipped)
    elif args.nnunet:
        records = index_nnunet(args.nnunet, args.nnunet_set, args.nnunet_labels, skipped=skipped)
    else:
        raise SystemExit(
            "error: a labelled dataset is needed: --pairs DIR, --images DIR --masks DIR or --nnunet DIR"
        )
    if getattr(args, "split", None):
        from cm_unet_keras.data.splits import select_part

        records = select_part(records, args.split, args.part)
    if not args.skip_invalid:
        return records, None
    records, unreadable = validate_records(records, skip_invalid=True)
    return records, _report_skipped(skipped + unreadable)


def _report_skipped(skipped):
    """Print the files `--skip-invalid` left out; returns them as dicts."""
    for path, problem in skipped:
        print(f"skipped: {path}: {problem}", file=sys.stderr)
    print(f"skipped {len(skipped)} invalid input(s)", file=sys.stderr)
    return [{"path": path, "problem": problem} for path, problem in skipped]


def _add_verbosity(parser, default="auto", what=""):
    """`--verbose` (a flag: one line per epoch), `--verbose LEVEL` and `--quiet`."""
    parser.add_argument(
        "--verbose", nargs="?", const=2, type=_verbosity, default=default, metavar="LEVEL",
        help=f"Keras progress{' ' + what if what else ''}: alone, one line per epoch (2); or auto, 0, 1 (a progress bar), 2",
    )
    parser.add_argument("--quiet", dest="verbose", action="store_const", const=0, help="no Keras progress (0)")


def _verbosity(value):
    if value == "auto":
        return value
    if value in ("0", "1", "2"):
        return int(value)
    raise argparse.ArgumentTypeError(f"invalid level {value!r}: auto, 0, 1 or 2")


def _add_convention(parser):
    # Checked by the command (convention_model), not by argparse: a wrong
    # name is one line naming the choices, not a usage screen.
    parser.add_argument("--convention", metavar="NAME",
                        help=f"mask convention to segment in: {', '.join(CONVENTIONS)} (default: {DEFAULT_CONVENTION} "
                        "for a model with one output per convention; a one-output model has its own, from its "
                        "card or run, and accepts only that one)")


def _add_inference_settings(parser):
    _add_convention(parser)
    parser.add_argument("--threshold", type=float,
                        help="mask threshold (default: the training run's or card's, else 0.5)")
    parser.add_argument("--clahe", action=argparse.BooleanOptionalAction,
                        help="CLAHE before normalisation (default: as the model was trained)")
    parser.add_argument("--tta", action="store_true", help="average the four flips of each angiogram (4x the compute)")


def _model_and_settings(args):
    """The model of `--model` and its (threshold, clahe): the flags', else the run's or card's."""
    import warnings

    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.models.segmentation import convention_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(args.model)
    for warning in caught:  # one line, not Python's warning format
        print(f"warning: {warning.message}", file=sys.stderr)
    settings = model.segmentation_settings.overridden(args.threshold, args.clahe)
    source = settings.source
    model = convention_model(model, args.convention)
    print(f"threshold {settings.threshold:g}, CLAHE {'on' if settings.clahe else 'off'} "
          f"({'from ' + source if source else 'defaults'}"
          f"{'' if args.threshold is None and args.clahe is None else ', as given'}); {_convention_note(model)}",
          file=sys.stderr)
    return model, settings.threshold, settings.clahe


def _convention_note(model):
    from cm_unet_keras.models.segmentation import model_conventions

    conventions = model_conventions(model)
    return f"convention {conventions[0]}" if conventions else "convention not recorded"


# --- commands -----------------------------------------------------------------------
def add_synth(command):
    synth = command("synth", "write synthetic angiograms and vessel masks")
    synth.add_argument("--out", required=True, help="folder for images/ and masks/")
    synth.add_argument("--count", type=int, default=20, help="number of pairs")
    synth.add_argument("--size", type=int, default=256, help="side of the images in pixels")
    synth.add_argument("--seed", type=int, default=0, help="seed of the generator")
    synth.set_defaults(run=cmd_synth)


def cmd_synth(args):
    from cm_unet_keras.data.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(args.out, args.count, size=args.size, seed=args.seed)
    print(f"wrote {len(paths)} synthetic angiograms and masks to {args.out}/images and {args.out}/masks")


def add_split(command):
    split = command("split", "set labelled pairs aside for evaluation, written to a file")
    _add_layout_arguments(split)
    split.add_argument("--holdout", type=int, required=True, help="number of pairs to hold out")
    split.add_argument("--seed", type=int, default=0, help="seed of the draw")
    split.add_argument("--out", required=True, help="split file (JSON)")
    split.set_defaults(run=cmd_split)


def cmd_split(args):
    from cm_unet_keras.data.splits import make_split, write_split

    records, _ = _records_from_layout(args)
    split = make_split(records, args.holdout, args.seed, source=args.pairs or args.images or args.nnunet)
    write_split(split, args.out)
    print(f"{len(split['train'])} train / {len(split['holdout'])} holdout pairs written to {args.out}")


def add_finetune(command):
    finetune = _labelled_job(command, "finetune", "train or fine-tune the U-Net on labelled angiograms",
                             out="run folder (rerun to resume; only --epochs may change)",
                             config="recipe file (YAML/JSON) of FinetuneConfig fields; flags override it")
    _config_flags(finetune, FinetuneConfig, FINETUNE_FLAGS)
    finetune.add_argument("--no-check", dest="check", action="store_false",
                          help="with at most 10 pairs and a start that segments, skip the adaptation check "
                               "(leave-one-out over the pairs; with one pair it keeps the start) and take the "
                               "few-label rule's budget")
    _add_verbosity(finetune)
    finetune.set_defaults(run=cmd_finetune)


def cmd_finetune(args):
    from cm_unet_keras.training.adaptation_check import adapt

    flags = _flag_values(args, FINETUNE_FLAGS)
    config = build_config(FinetuneConfig, args.config, **flags)
    records, skipped = _records_from_layout(args)
    # The budget the adaptation check (or the few-label rule) chooses, unless
    # the user (a flag or the recipe file) set it; a run folder's record says
    # what a rerun or a larger --epochs continues.
    given = {name for name, value in flags.items() if value is not None} | set(read_recipe(args.config) if args.config else ())
    result = adapt(config, records, args.out, given, check=args.check,
                   note=lambda line: print(line, file=sys.stderr), verbose=args.verbose, skipped_inputs=skipped)
    if result["epochs_done"] == 0:
        kept = "the start kept unchanged (adaptation.json)"
    elif result["n_val"]:
        kept = f"validation Dice {result['best_val_dice']:.4f} at the kept epoch {result['best_epoch']} ({config.select})"
    else:
        kept = f"kept epoch {result['best_epoch']} (no validation pairs)"
    print(f"{kept}; {result['seconds']:.0f} s; model: {result['model_path']}")


def add_evaluate(command):
    evaluate = command("evaluate", "score a model on labelled angiograms")
    _add_layout_arguments(evaluate, default_part="holdout")
    evaluate.add_argument("--model", required=True, help=".keras file or preset name")
    evaluate.add_argument("--json", help="write the report here")
    _add_inference_settings(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)


def cmd_evaluate(args):
    from cm_unet_keras.evaluation.evaluate import evaluate_model, format_table, write_report

    model, threshold, clahe = _model_and_settings(args)
    records, _ = _records_from_layout(args)
    report = evaluate_model(model, records, threshold=threshold, clahe=clahe, tta=args.tta)
    print(format_table(report))
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")


def add_predict(command):
    predict = command("predict", "segment angiograms (files, folders, DICOM)")
    predict.add_argument("inputs", nargs="+", help="angiogram files, folders and DICOM cine runs")
    predict.add_argument("--model", required=True, help=".keras file or preset name")
    predict.add_argument("--out", "--output", dest="output", required=True, help="folder for the masks (--output: alias)")
    _add_inference_settings(predict)
    predict.add_argument(
        "--skip-invalid", action="store_true", help="leave out unreadable files (listed on stderr) instead of stopping"
    )
    predict.add_argument(
        "--quiet", action="store_true",
        help="no progress bar (shown on a terminal) and no line per angiogram (printed otherwise)",
    )
    predict.add_argument("--batch-size", type=int, default=8, help="same-sized angiograms or cine frames per forward pass")
    predict.add_argument("--precision", choices=PRECISIONS, default="auto",
                         help="compute precision: auto is the machine's fastest (bfloat16 on AVX512_BF16 CPUs, "
                         "float16 on GPUs); float32 gives the exported model's outputs exactly")
    predict.add_argument("--video", action="store_true",
                         help="for each cine run also write NAME_overlay.mp4, the vessel-filling curve "
                         "NAME_filling.png and NAME_cine.json with its best frame")
    predict.set_defaults(run=cmd_predict)


def cmd_predict(args):
    from cm_unet_keras.inference.predict import predict_files

    model, threshold, clahe = _model_and_settings(args)
    skipped = [] if args.skip_invalid else None
    cines = [] if args.video else None
    # A progress bar where someone watches; a line per angiogram in logs.
    progress = sys.stderr if sys.stderr.isatty() and not args.quiet else None
    written = predict_files(
        model, args.inputs, args.output, threshold=threshold, clahe=clahe, skipped=skipped, tta=args.tta,
        log=None if args.quiet or progress else print, progress=progress, batch_size=args.batch_size,
        precision=args.precision, cine_summaries=cines,
    )
    if args.skip_invalid:
        _report_skipped(skipped)
    for cine in cines or []:
        print(f"{cine['source']}: best frame {cine['best_frame']} (vessel fraction {cine['best_vessel_fraction']:.4f}); "
              f"{cine['video']}, {cine['filling_plot']}")
    print(f"segmented {len(written)} angiograms into {args.output}")


def add_select(command):
    select = command("select", "propose the frames of unlabeled angiograms to annotate")
    select.add_argument("inputs", nargs="+", help="angiogram files, folders and DICOM cine runs")
    select.add_argument("--model", required=True, help="preset, .keras file or pretraining run (pretrained or fine-tuned)")
    select.add_argument("--count", type=int, required=True, help="frames to propose")
    select.add_argument("--out", "--output", dest="output", required=True, help="folder for the frames, selection.csv "
                        "and contact_sheet.png")
    select.add_argument("--strategy", choices=("random", "peak", "typical", "uncertainty"), default="typical",
                        help="random (seeded); peak: highest vessel filling; typical: k-means on the encoder's "
                        "features, most typical frame per cluster; uncertainty: flip disagreement (fine-tuned only)")
    select.add_argument("--coverage", action="store_true", help="typical: k-center greedy instead of k-means")
    select.add_argument("--no-peak-filter", dest="peak_filter", action="store_false",
                        help="also propose cine frames before the contrast arrives or after it washes out")
    select.add_argument("--min-gap", type=int, default=5, help="frames of one cine closer than this are not both proposed")
    select.add_argument("--seed", type=int, default=0, help="seed of the random draw and of k-means")
    select.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="compute precision of the scan (recorded in selection.json): float32, the default, "
                        "chooses the same frames on every machine; auto is the machine's fastest (bfloat16 on "
                        "AVX512_BF16 CPUs), whose rounding can reorder close frames")
    select.add_argument("--skip-invalid", action="store_true", help="leave out unreadable files (listed on stderr)")
    _add_convention(select)
    select.set_defaults(run=cmd_select)


def cmd_select(args):
    import warnings

    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.models.segmentation import convention_model
    from cm_unet_keras.selection import select_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a pretrained-only model is fine here: its encoder ranks frames
        model = convention_model(load_model(args.model), args.convention)
    skipped = [] if args.skip_invalid else None
    chosen = select_files(model, args.inputs, args.count, args.output, skipped=skipped, strategy=args.strategy,
                          seed=args.seed, peak_filter=args.peak_filter, coverage=args.coverage, min_gap=args.min_gap,
                          precision=args.precision)
    if args.skip_invalid:
        _report_skipped(skipped)
    for rank, choice in enumerate(chosen, 1):
        print(f"{rank}: {choice['record'].name}  {choice['why']}")
    if len(chosen) < args.count:
        # Every strategy proposes `count` frames unless the gap rule refuses
        # all the other candidates (more than the candidates is refused earlier).
        wider = ", as does --no-peak-filter (frames farther from the peak)" if args.peak_filter else ""
        print(f"warning: proposed {len(chosen)} of {args.count} frames: every other candidate frame is fewer than "
              f"--min-gap {args.min_gap} frames from a proposed frame of its cine run (a smaller --min-gap allows "
              f"more{wider})", file=sys.stderr)
    print(f"proposed {len(chosen)} frames in {args.output} (selection.csv, selection.json, contact_sheet.png)")


def add_annotate(command):
    annotate = command("annotate", "correct vessel masks in the browser, pre-filled by a model; saves N_gt.png "
                       "beside N.png for finetune --pairs")
    annotate.add_argument("folder", help="folder of angiograms N.png (the output of `cm-unet select`, or any "
                          "folder of image files)")
    annotate.add_argument("--model", default=DEFAULT_ANNOTATION_MODEL,
                          help="preset, .keras file or run folder whose mask (as `predict` writes it) frames without "
                          "N_gt.png open with; none: they open empty")
    annotate.add_argument("--host", default="127.0.0.1",
                          help="interface to serve on; any other than 127.0.0.1 opens the page, without a login, to "
                          "the network")
    annotate.add_argument("--port", type=int, default=8765, help="port of the page (0: any free one)")
    annotate.set_defaults(run=cmd_annotate)


def cmd_annotate(args):
    import threading

    from cm_unet_keras.annotate.server import start

    def log(message):
        print(message, file=sys.stderr, flush=True)

    try:
        server = start(args.folder, args.model, args.host, args.port, log=log)
    except OSError as error:
        raise SystemExit(f"error: cannot serve on {args.host}:{args.port}: {error.strerror or error}; "
                         "pass another --port (0: any free one)") from None
    folder = server.folder
    for path, why in folder.left_out:
        log(f"not annotated: {path}: {why}")
    if not server.loopback:
        log(f"warning: serving on {args.host}: anyone who can reach it can read and overwrite the masks")
    saved = sum(frame.mask_path.is_file() for frame in folder.frames.values())
    try:  # from the line on: a Ctrl-C right after it (a busy machine may not run this thread on) stops cleanly
        print(f"annotating {len(folder.frames)} frames of {folder.folder} ({saved} saved): open {server.url}"
              "  (Ctrl-C stops)", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopped; the saved masks are N_gt.png in the folder, the log annotations.csv")
    finally:
        server.shutdown()
        server.server_close()


def add_export(command):
    export = command("export", "export a model for TF Serving (SavedModel) or ONNX")
    export.add_argument("--model", required=True, help=".keras file or preset name")
    export.add_argument("--out", required=True, help="model base folder; writes OUT/NAME/VERSION/")
    export.add_argument("--name", default="cm_unet", help="model name")
    export.add_argument("--version", type=int, required=True, help="model version, an integer")
    export.add_argument("--format", choices=["saved_model", "onnx"], default="saved_model", help="export format")
    export.add_argument("--threshold", type=float,
                        help="mask threshold (default: the training run's or card's, else 0.5)")
    export.add_argument("--training-data", help="note on the training data, saved in the metadata")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument("--tta", action="store_true", help="average the four flips of each angiogram (4x the compute)")
    _add_convention(export)
    export.set_defaults(run=cmd_export)


def cmd_export(args):
    from cm_unet_keras.export import export_model

    path = export_model(
        args.model,
        args.out,
        args.name,
        args.version,
        export_format=args.format,
        threshold=args.threshold,
        training_data=args.training_data,
        overwrite=args.overwrite,
        tta=args.tta,
        convention=args.convention,
    )
    print(f"exported {args.model} ({args.format}) to {path}")


def add_pretrain(command):
    pretrain = command("pretrain", "contrastive masked pretraining (CM-UNet) on unlabeled angiograms")
    pretrain.add_argument("--images", nargs="+", required=True,
                          help="folders (searched recursively; masks/ and annotations/ skipped), files or DICOM runs")
    pretrain.add_argument("--out", required=True, help="run folder (rerun to resume; only its length may change)")
    pretrain.add_argument(
        "--config",
        help="recipe: 'cpu' (the default without a GPU), 'paper' (the default with one: PretrainConfig's "
        "defaults) or a YAML/JSON file; flags override it",
    )
    recipes = {f"with the {name} recipe": values for name, values in PRETRAIN_RECIPES.items()}
    _config_flags(pretrain, PretrainConfig, PRETRAIN_FLAGS, recipes)
    pretrain.add_argument("--native-resolution", action="store_true", help="crop from images at native resolution")
    _add_verbosity(pretrain)
    pretrain.set_defaults(run=cmd_pretrain)


def cmd_pretrain(args):
    from cm_unet_keras.config import default_recipe_name
    from cm_unet_keras.data.layouts import index_unlabeled
    from cm_unet_keras.training.pretrain import pretrain

    recipe = args.config if args.config is not None else default_recipe_name()
    if recipe in PRETRAIN_RECIPES:
        recipe = (recipe, PRETRAIN_RECIPES[recipe])
    print(f"pretraining recipe: {recipe[0] if isinstance(recipe, tuple) else recipe}", file=sys.stderr)
    values = _flag_values(args, PRETRAIN_FLAGS)
    if args.native_resolution:
        values["working_size"] = 0
    config = build_config(PretrainConfig, recipe, **values)
    records = index_unlabeled(args.images, recursive=config.recursive, frame_step=config.frame_step)
    result = pretrain(config, records, args.out, verbose=args.verbose)
    print(
        f"pretrained {result['epochs_done']} epochs ({result['epochs_run']} in this run) on "
        f"{result['n_images']} angiograms; {result['seconds']:.0f} s; weights: {result['weights_path']}"
    )


def add_tune(command):
    tune = _labelled_job(command, "tune", "search fine-tuning hyperparameters (KerasTuner, k-fold on few labels)",
                         out="search folder (rerun to resume or, with more --max-trials, extend)",
                         config="base FinetuneConfig recipe (YAML/JSON); flags override it")
    _config_flags(tune, TuneConfig, TUNE_FLAGS)
    _config_flags(tune, FinetuneConfig, TUNE_FINETUNE_FLAGS, helps={
        "seed": "seeds the search, the folds and the training",
        "init": "fine-tune from a .keras U-Net, a pretraining run or a preset",
        "epochs": "epochs of each trial (Hyperband: the most)",
        "patch_size": "side of the training patches",
        "val_fraction": "validation split with --folds 1, and in best.yaml",
    })
    _add_verbosity(tune, default=0, what="of each fold")
    tune.set_defaults(run=cmd_tune)


def cmd_tune(args):
    from cm_unet_keras.tuning import tune

    base = build_config(FinetuneConfig, args.config, **_flag_values(args, TUNE_FINETUNE_FLAGS))
    # One seed: the base configuration's seeds the search and its folds too.
    settings = build_config(TuneConfig, None, **_flag_values(args, TUNE_FLAGS), seed=base.seed)
    if not args.split:
        print("note: every given pair enters the search; keep the pairs you report on out (--split, --part train)")
    records, _ = _records_from_layout(args)
    summary = tune(base, settings, records, args.out, verbose=args.verbose)
    print(
        f"best cross-validated Dice {summary['best_val_dice']:.4f} (trial {summary['best_trial']} of "
        f"{summary['trials']}); {summary['seconds_this_call']:.0f} s\n"
        f"train with it: cm-unet finetune --config {summary['best_config']} ... --out RUN"
    )


def add_study(command):
    from cm_unet_keras.experiments.presets import study_config

    parser = command("study", "label-efficiency study on XCA: pretraining variants x N labels x seeds")
    parser.add_argument("--stage", choices=["pretrain", "sweep", "all"], default="all", help="what to run")
    parser.add_argument("--data", help="folder holding xca_vessels/ and arcade_stenosis/ "
                        "(default: ../shared/data beside a source checkout; required otherwise)")
    parser.add_argument("--split", help="30/10 split file (default: recipes/xca_split.json of a source "
                        "checkout; required otherwise)")
    parser.add_argument("--runs", help="runs folder, resumable (default: OUT/runs with --quick, else "
                        "runs/label_efficiency[_gpu_paper] of a source checkout; required otherwise)")
    parser.add_argument("--out", help="results folder (default: benchmarks/label_efficiency[_gpu_paper] "
                        "of a source checkout; required otherwise)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny models, N in {2, 3}, one seed")
    parser.add_argument("--gpu-paper", action="store_true", help="the paper's sizes (width 64, batch 256, 300 epochs)")
    full = study_config("cpu")
    presets = {"": vars(full), "with --quick": vars(study_config("quick"))}
    per_n = "".join(f", {_shown(seeds)} at N = {n}" for n, seeds in full.seeds_by_n.items())
    _config_flags(parser, StudyConfig, STUDY_FLAGS, presets,
                  helps={"seeds": f"seeds of every N (they replace the study's own seeds by N{per_n})"})
    _add_verbosity(parser, default=2)
    parser.set_defaults(run=cmd_study)


def cmd_study(args):
    from cm_unet_keras.experiments import study
    from cm_unet_keras.experiments.presets import study_config

    if sum([args.quick, args.gpu_paper]) > 1:
        raise SystemExit("--quick and --gpu-paper exclude each other")
    preset = "quick" if args.quick else "gpu_paper" if args.gpu_paper else "cpu"
    config = study_config(preset, **_flag_values(args, STUDY_FLAGS))
    paths = {"data": args.data, "split": args.split, "runs": args.runs, "out": args.out}
    missing = [name for name, path in paths.items() if path is None and not (name == "runs" and args.quick)]
    if missing:
        defaults = study.checkout_paths(gpu_paper=args.gpu_paper)
        if defaults is None:
            raise SystemExit(
                f"error: cm-unet study needs {', '.join('--' + name for name in missing)}: "
                "only a source checkout has default paths"
            )
        paths.update({name: defaults[name] for name in missing})
        print(f"study: paths of the source checkout {defaults['root']}: "
              + ", ".join(f"--{name} {paths[name]}" for name in missing), file=sys.stderr)
    if paths["runs"] is None:  # --quick keeps its runs with its results
        paths["runs"] = Path(paths["out"]) / "runs"
    program = f"python {sys.argv[0]}" if sys.argv[0].endswith(".py") else "cm-unet"
    command = " ".join([program] + sys.argv[1:])
    result = study.run_study(config, paths["data"], paths["split"], Path(paths["runs"]), Path(paths["out"]),
                             stage=args.stage, verbose=args.verbose, command=command)
    for stage, seconds in result["stage_seconds"].items():
        print(f"{stage}: {seconds / 60:.1f} min")
    if args.stage != "pretrain":
        print(f"{len(result['records'])} runs ({result['new_runs']} new); results in {paths['out']}")


def add_presets(command):
    parser = command("presets", "list the shipped presets (saved_models/) and their cards")
    parser.add_argument("--long", dest="verbose_cards", action="store_true", help="descriptions too")
    parser.set_defaults(run=cmd_presets)


def cmd_presets(args):
    from cm_unet_keras.models import presets

    root = presets.default_root()
    names = presets.available_presets()
    if not names:
        print(f"no presets in {root}")
        return
    print(f"presets in {root}:")
    for name in names:
        card = presets.preset_card(name)
        superseded = f"; superseded by {card['superseded_by']}" if card.get("superseded_by") else ""
        print(f"  {name:26s} {card.get('kind', '?'):10s} conventions {presets.conventions_summary(card)}; "
              f"{presets.validation_summary(card)}{superseded}")
        if args.verbose_cards:
            print("    " + card.get("description", ""))
            print("    rebuild: " + card.get("rebuild", "?"))


def add_demo(command):
    demo = command("demo", "segment, adapt and pretrain on real angiograms shipped with the package")
    demo.add_argument("--out", default="demo_out", help="folder of the report and the runs")
    demo.add_argument("--quick", action="store_true", help="a smoke-test sized run")
    demo.add_argument("--precision", choices=PRECISIONS, default="auto", help="compute precision")
    demo.set_defaults(run=cmd_demo)


def cmd_demo(args):
    from cm_unet_keras.demo import run_demo

    report_path = run_demo(args.out, quick=args.quick, precision=args.precision)
    print(f"demo report: {report_path}")


# --- the parser ---------------------------------------------------------------------
COMMANDS = (add_synth, add_split, add_finetune, add_evaluate, add_predict, add_select, add_annotate, add_export,
            add_pretrain, add_tune, add_study, add_presets, add_demo)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cm-unet", description="Coronary artery segmentation in X-ray angiograms with few labels."
    )
    parser.add_argument("--version", action="version", version=f"cm-unet-keras {cm_unet_keras.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help, **kwargs):
        return commands.add_parser(name, help=help, description=help, formatter_class=_DefaultsFormatter, **kwargs)

    for add in COMMANDS:
        add(command)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except InvalidInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # a setting that cannot work (sizes, ranges...)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
