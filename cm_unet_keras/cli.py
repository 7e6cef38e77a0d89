"""`cm-unet`: the command line. Each subcommand parses flags and calls the API."""

import argparse
import dataclasses
import sys
from pathlib import Path

import cm_unet_keras  # noqa: F401  (sets the backend and log level first)
from cm_unet_keras.data.layouts import NNUNET_SUBSETS


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


def _records_from_layout(args):
    from cm_unet_keras.data.layouts import index_images_masks, index_nnunet, index_pairs, validate_records

    if sum(map(bool, (args.pairs, args.images or args.masks, args.nnunet))) > 1:
        raise SystemExit("error: give one of --pairs, --images/--masks or --nnunet")
    skipped = [] if args.skip_invalid else None
    if args.pairs:
        records = index_pairs(args.pairs, mask_suffix=args.mask_suffix, skipped=skipped)
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
    if args.skip_invalid:
        records, unreadable = validate_records(records, skip_invalid=True)
        args.skipped_inputs = _report_skipped(skipped + unreadable)
    return records


def _report_skipped(skipped):
    """Print the files `--skip-invalid` left out; returns them as dicts."""
    for path, problem in skipped:
        print(f"skipped: {path}: {problem}", file=sys.stderr)
    print(f"skipped {len(skipped)} invalid input(s)", file=sys.stderr)
    return [{"path": path, "problem": problem} for path, problem in skipped]


PRECISIONS = ["auto", "float32", "mixed_float16", "mixed_bfloat16"]


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


def _config_options(parser, config_class, recipes=None):
    """A function adding `--flag` for the field of `config_class` of that name,
    its help ending with the field's default (per built-in recipe when the
    recipes differ). The flag's own default stays None: a recipe file sets
    the field unless the flag is given."""
    defaults = {field.name: field.default for field in dataclasses.fields(config_class)}

    def add(flag, help, none=None, **kwargs):
        name = flag[2:].replace("-", "_")
        values = {"": defaults[name]}
        if recipes:
            values = {recipe: overrides.get(name, defaults[name]) for recipe, overrides in recipes.items()}
        shown = {recipe: none if value is None else _shown(value) for recipe, value in values.items()}
        if len(set(shown.values())) == 1:
            note = f"(default: {next(iter(shown.values()))})"
        else:
            note = "(default: " + ", ".join(f"{value} with the {recipe} recipe" for recipe, value in shown.items()) + ")"
        if kwargs.get("action") == "store_true":
            note = f"(default: {'on' if values.popitem()[1] else 'off'})"
        elif "type" not in kwargs:
            kwargs["type"] = int
        parser.add_argument(flag, help=f"{help} {note}", **kwargs)

    return add


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


def _add_inference_settings(parser):
    parser.add_argument("--threshold", type=float,
                        help="mask threshold (default: the training run's or card's, else 0.5)")
    parser.add_argument("--clahe", action=argparse.BooleanOptionalAction,
                        help="CLAHE before normalisation (default: as the model was trained)")
    parser.add_argument("--tta", action="store_true", help="average the four flips of each angiogram (4x the compute)")


def _study_defaults():
    from cm_unet_keras import study

    return study.cpu_config(), study.quick_config()


def cmd_split(args):
    from cm_unet_keras.data.splits import make_split, write_split

    records = _records_from_layout(args)
    split = make_split(records, args.holdout, args.seed, source=args.pairs or args.images or args.nnunet)
    write_split(split, args.out)
    print(f"{len(split['train'])} train / {len(split['holdout'])} holdout pairs written to {args.out}")


def cmd_synth(args):
    from cm_unet_keras.data.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(args.out, args.count, size=args.size, seed=args.seed)
    print(f"wrote {len(paths)} synthetic angiograms and masks to {args.out}/images and {args.out}/masks")


def cmd_finetune(args):
    from cm_unet_keras.training.config import FinetuneConfig, build_config
    from cm_unet_keras.training.finetune import finetune

    config = build_config(
        FinetuneConfig,
        args.config,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        patch_size=args.patch_size,
        base_filters=args.base_filters,
        depth=args.depth,
        val_fraction=args.val_fraction,
        seed=args.seed,
        limit=args.limit,
        init=args.init,
        precision=args.precision,
        clahe=True if args.clahe else None,
        deterministic=True if args.deterministic else None,
        frozen_encoder_epochs=args.frozen_encoder_epochs,
        pretrained_lr_factor=args.pretrained_lr_factor,
        select=args.select,
    )
    records = _records_from_layout(args)
    if args.skip_invalid:
        from cm_unet_keras.core.files import atomic_write_json

        atomic_write_json(Path(args.out) / "skipped_inputs.json", args.skipped_inputs)
    result = finetune(config, records, args.out, verbose=args.verbose)
    if result["n_val"]:
        kept = f"validation Dice {result['best_val_dice']:.4f} at the kept epoch {result['best_epoch']} ({config.select})"
    else:
        kept = f"kept epoch {result['best_epoch']} (no validation pairs)"
    print(f"{kept}; {result['seconds']:.0f} s; model: {result['model_path']}")


def _model_and_settings(args):
    """The model of `--model` and its (threshold, clahe): the flags', else the run's or card's."""
    import warnings

    from cm_unet_keras.inference.predict import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(args.model)
    for warning in caught:  # one line, not Python's warning format
        print(f"warning: {warning.message}", file=sys.stderr)
    settings = model.segmentation_settings.overridden(args.threshold, args.clahe)
    source = settings.source
    print(f"threshold {settings.threshold:g}, CLAHE {'on' if settings.clahe else 'off'} "
          f"({'from ' + source if source else 'defaults'}"
          f"{'' if args.threshold is None and args.clahe is None else ', as given'})", file=sys.stderr)
    return model, settings.threshold, settings.clahe


def cmd_evaluate(args):
    from cm_unet_keras.evaluation.evaluate import evaluate_model, format_table, write_report

    model, threshold, clahe = _model_and_settings(args)
    report = evaluate_model(model, _records_from_layout(args), threshold=threshold, clahe=clahe, tta=args.tta)
    print(format_table(report))
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")


def cmd_predict(args):
    from cm_unet_keras.inference.predict import predict_files

    model, threshold, clahe = _model_and_settings(args)
    skipped = [] if args.skip_invalid else None
    # A progress bar where someone watches; a line per angiogram in logs.
    progress = sys.stderr if sys.stderr.isatty() and not args.quiet else None
    written = predict_files(
        model, args.inputs, args.output, threshold=threshold, clahe=clahe, skipped=skipped, tta=args.tta,
        log=None if args.quiet or progress else print, progress=progress,
    )
    if args.skip_invalid:
        _report_skipped(skipped)
    print(f"segmented {len(written)} angiograms into {args.output}")


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
    )
    print(f"exported {args.model} ({args.format}) to {path}")


def cmd_pretrain(args):
    from cm_unet_keras.data.layouts import index_unlabeled
    from cm_unet_keras.training.config import build_config
    from cm_unet_keras.training.pretrain import PRETRAIN_RECIPES, PretrainConfig, default_recipe_name, pretrain

    recipe = args.config if args.config is not None else default_recipe_name()
    if recipe in PRETRAIN_RECIPES:
        recipe = (recipe, PRETRAIN_RECIPES[recipe])
    print(f"pretraining recipe: {recipe[0] if isinstance(recipe, tuple) else recipe}", file=sys.stderr)
    config = build_config(
        PretrainConfig,
        recipe,
        minutes=args.minutes,
        views=args.views,
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        image_size=args.image_size,
        working_size=0 if args.native_resolution else args.working_size,
        base_filters=args.base_filters,
        depth=args.depth,
        mask_ratio=args.mask_ratio,
        rc_weight=args.rc_weight,
        ct_weight=args.ct_weight,
        lr=args.lr,
        seed=args.seed,
        max_images=args.max_images,
        frame_step=args.frame_step,
        skip_invalid=True if args.skip_invalid else None,
        precision=args.precision,
    )
    records = index_unlabeled(args.images, recursive=config.recursive, frame_step=config.frame_step)
    result = pretrain(config, records, args.out, verbose=args.verbose)
    print(
        f"pretrained {result['epochs_done']} epochs ({result['epochs_run']} in this run) on "
        f"{result['n_images']} angiograms; {result['seconds']:.0f} s; weights: {result['weights_path']}"
    )


def cmd_tune(args):
    from cm_unet_keras.training.config import FinetuneConfig, build_config
    from cm_unet_keras.tuning import TuneConfig, tune

    base = build_config(
        FinetuneConfig,
        args.config,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        patch_size=args.patch_size,
        base_filters=args.base_filters,
        depth=args.depth,
        val_fraction=args.val_fraction,
        seed=args.seed,
        init=args.init,
        precision=args.precision,
        clahe=True if args.clahe else None,
    )
    settings = build_config(
        TuneConfig,
        None,
        algorithm=args.algorithm,
        max_trials=args.max_trials,
        seed=base.seed,
        folds=args.folds,
        space=args.space,
        initial_points=args.initial_points,
        hyperband_factor=args.hyperband_factor,
    )
    if not args.split:
        print("note: every given pair enters the search; keep the pairs you report on out (--split, --part train)")
    summary = tune(base, settings, _records_from_layout(args), args.out, verbose=args.verbose)
    print(
        f"best cross-validated Dice {summary['best_val_dice']:.4f} (trial {summary['best_trial']} of "
        f"{summary['trials']}); {summary['seconds_this_call']:.0f} s\n"
        f"train with it: cm-unet finetune --config {summary['best_config']} ... --out RUN"
    )


def cmd_study(args):
    from cm_unet_keras import study

    if sum([args.quick, args.gpu_paper]) > 1:
        raise SystemExit("--quick and --gpu-paper exclude each other")
    config = study.quick_config() if args.quick else study.gpu_paper_config() if args.gpu_paper else study.cpu_config()
    if args.seeds:
        config.seeds, config.seeds_by_n = tuple(args.seeds), {}
    if args.inits:
        config.inits = tuple(args.inits)
    if args.n_labels:
        config.n_labels = tuple(args.n_labels)
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


def cmd_demo(args):
    from cm_unet_keras.demo import run_demo

    report_path = run_demo(args.out, quick=args.quick)
    print(f"demo report: {report_path}")


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
        metrics = card.get("validation_metrics")
        dice = metrics.get("mean", {}).get("dice") if isinstance(metrics, dict) else None
        score = f"validation Dice {dice:.3f}" if dice is not None else "no head (fine-tune it: --init)"
        print(f"  {name:26s} {card.get('kind', '?'):10s} {score}")
        if args.verbose_cards:
            print("    " + card.get("description", ""))
            print("    rebuild: " + card.get("rebuild", "?"))


def build_parser():
    from cm_unet_keras.training.config import FinetuneConfig
    from cm_unet_keras.training.pretrain import PRETRAIN_RECIPES, PretrainConfig
    from cm_unet_keras.tuning import TuneConfig

    parser = argparse.ArgumentParser(
        prog="cm-unet", description="Coronary artery segmentation in X-ray angiograms with few labels."
    )
    parser.add_argument("--version", action="version", version=f"cm-unet-keras {cm_unet_keras.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help, **kwargs):
        return commands.add_parser(name, help=help, description=help, formatter_class=_DefaultsFormatter, **kwargs)

    synth = command("synth", "write synthetic angiograms and vessel masks")
    synth.add_argument("--out", required=True, help="folder for images/ and masks/")
    synth.add_argument("--count", type=int, default=20, help="number of pairs")
    synth.add_argument("--size", type=int, default=256, help="side of the images in pixels")
    synth.add_argument("--seed", type=int, default=0, help="seed of the generator")
    synth.set_defaults(run=cmd_synth)

    split = command("split", "set labelled pairs aside for evaluation, written to a file")
    _add_layout_arguments(split)
    split.add_argument("--holdout", type=int, required=True, help="number of pairs to hold out")
    split.add_argument("--seed", type=int, default=0, help="seed of the draw")
    split.add_argument("--out", required=True, help="split file (JSON)")
    split.set_defaults(run=cmd_split)

    finetune = command("finetune", "train or fine-tune the U-Net on labelled angiograms")
    _add_layout_arguments(finetune)
    option = _config_options(finetune, FinetuneConfig)
    option("--base-filters", "U-Net width (16 small, 32 base, 64 paper)")
    option("--depth", "U-Net levels")
    finetune.add_argument("--out", required=True, help="run folder (rerun to resume; only --epochs may change)")
    finetune.add_argument("--config", help="recipe file (YAML/JSON) of FinetuneConfig fields; flags override it")
    option("--epochs", "epochs of --steps-per-epoch steps; a rerun with more extends the run")
    option("--steps-per-epoch", "optimizer steps per epoch")
    option("--batch-size", "patches per step")
    option("--lr", "peak learning rate (AdamW, warm-up then cosine)", type=float)
    option("--patch-size", "side of the training patches (a multiple of 2**depth)")
    option("--val-fraction", "share of the pairs scored after each epoch (0: all pairs train)", type=float)
    option("--seed", "seeds the split, the patches and the initialisation")
    option("--limit", "use N labelled pairs in all (chosen by the seed; validation carved from them)",
           none="every pair")
    option("--init", "start from a .keras U-Net, a pretraining run or a preset", type=str,
           none="random initialisation")
    option("--frozen-encoder-epochs", "epochs at the start with the encoder frozen")
    option("--pretrained-lr-factor", "learning-rate multiplier of the layers loaded by --init", type=float)
    option("--select", "model.keras: best validation epoch, or the last epoch", type=str, choices=["best", "last"])
    option("--precision", "compute precision", type=str, choices=PRECISIONS)
    option("--clahe", "CLAHE before normalisation", action="store_true")
    option("--deterministic", "deterministic kernels: bit-reproducible runs and resumes", action="store_true")
    _add_verbosity(finetune)
    finetune.set_defaults(run=cmd_finetune)

    evaluate = command("evaluate", "score a model on labelled angiograms")
    _add_layout_arguments(evaluate, default_part="holdout")
    evaluate.add_argument("--model", required=True, help=".keras file or preset name")
    evaluate.add_argument("--json", help="write the report here")
    _add_inference_settings(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

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
    predict.set_defaults(run=cmd_predict)

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
    export.set_defaults(run=cmd_export)

    pretrain = command("pretrain", "contrastive masked pretraining (CM-UNet) on unlabeled angiograms")
    pretrain.add_argument("--images", nargs="+", required=True,
                          help="folders (searched recursively; masks/ and annotations/ skipped), files or DICOM runs")
    pretrain.add_argument("--out", required=True, help="run folder (rerun to resume; only its length may change)")
    pretrain.add_argument(
        "--config",
        help="recipe: 'cpu' (the default without a GPU), 'paper' (the default with one: PretrainConfig's "
        "defaults) or a YAML/JSON file; flags override it",
    )
    option = _config_options(pretrain, PretrainConfig, PRETRAIN_RECIPES)
    option("--minutes", "time budget for training: sizes the epochs and the schedule to it from the measured "
           "step time", type=float, none="none, the recipe's epochs")
    option("--views", "two overlapping jittered crops, or the original's shifted copy", type=str,
           choices=["crops", "shift"])
    option("--base-filters", "U-Net width (16 small, 32 base, 64 paper)")
    option("--depth", "U-Net levels")
    option("--epochs", "epochs; a rerun with more extends the run")
    option("--warmup-epochs", "epochs of linear warm-up")
    option("--steps-per-epoch", "steps per epoch", none="one pass over the angiograms")
    option("--batch-size", "global batch over all devices")
    option("--image-size", "side of the views (paper 224)")
    option("--working-size", "shorter side of the decoded images", none="native resolution")
    pretrain.add_argument("--native-resolution", action="store_true", help="crop from images at native resolution")
    option("--mask-ratio", "share of the patches masked", type=float)
    option("--rc-weight", "reconstruction loss weight (0: contrastive only)", type=float)
    option("--ct-weight", "contrastive loss weight (0: MAE only)", type=float)
    option("--lr", "peak learning rate", type=float, none="1.5e-4 x batch / 256")
    option("--seed", "seeds the views and the initialisation")
    option("--max-images", "use N angiograms, drawn by the seed", none="all of them")
    option("--frame-step", "every k-th frame of DICOM cine runs")
    option("--skip-invalid", "skip unreadable files instead of stopping", action="store_true")
    option("--precision", "compute precision", type=str, choices=PRECISIONS)
    _add_verbosity(pretrain)
    pretrain.set_defaults(run=cmd_pretrain)

    tune = command("tune", "search fine-tuning hyperparameters (KerasTuner, k-fold on few labels)")
    _add_layout_arguments(tune)
    tune.add_argument("--out", required=True, help="search folder (rerun to resume or, with more --max-trials, extend)")
    tune.add_argument("--config", help="base FinetuneConfig recipe (YAML/JSON); flags override it")
    search = _config_options(tune, TuneConfig)
    search("--space", "search space recipe", type=str, none="the ranges of recipes/tune_space.yaml")
    search("--algorithm", "search algorithm", type=str, choices=["random", "bayesian", "hyperband"])
    search("--max-trials", "trials in all; caps Hyperband too")
    search("--folds", "k of k-fold", none="5 up to 10 pairs; above, 1 split")
    search("--initial-points", "random trials before Bayesian guidance", none="half the trials, at least 3")
    search("--hyperband-factor", "Hyperband's epoch growth per round")
    option = _config_options(tune, FinetuneConfig)
    option("--base-filters", "U-Net width (16 small, 32 base, 64 paper)")
    option("--depth", "U-Net levels")
    option("--seed", "seeds the search, the folds and the training")
    option("--init", "fine-tune from a .keras U-Net, a pretraining run or a preset", type=str,
           none="random initialisation")
    option("--epochs", "epochs of each trial (Hyperband: the most)")
    option("--steps-per-epoch", "optimizer steps per epoch")
    option("--patch-size", "side of the training patches")
    option("--val-fraction", "validation split with --folds 1, and in best.yaml", type=float)
    option("--precision", "compute precision", type=str, choices=PRECISIONS)
    option("--clahe", "CLAHE before normalisation", action="store_true")
    _add_verbosity(tune, default=0, what="of each fold")
    tune.set_defaults(run=cmd_tune)

    study_parser = command("study", "label-efficiency study on XCA: pretraining variants x N labels x seeds")
    study_parser.add_argument("--stage", choices=["pretrain", "sweep", "all"], default="all", help="what to run")
    study_parser.add_argument("--data", help="folder holding xca_vessels/ and arcade_stenosis/ "
                              "(default: ../shared/data beside a source checkout; required otherwise)")
    study_parser.add_argument("--split", help="30/10 split file (default: recipes/xca_split.json of a source "
                              "checkout; required otherwise)")
    study_parser.add_argument("--runs", help="runs folder, resumable (default: OUT/runs with --quick, else "
                              "runs/label_efficiency[_gpu_paper] of a source checkout; required otherwise)")
    study_parser.add_argument("--out", help="results folder (default: benchmarks/label_efficiency[_gpu_paper] "
                              "of a source checkout; required otherwise)")
    study_parser.add_argument("--quick", action="store_true", help="smoke test: tiny models, N in {2, 3}, one seed")
    study_parser.add_argument("--gpu-paper", action="store_true", help="the paper's sizes (width 64, batch 256, 300 epochs)")
    full, quick = _study_defaults()
    study_parser.add_argument("--seeds", type=int, nargs="+",
                              help=f"seeds of every N (default: {_shown(full.seeds)}"
                              + "".join(f", {_shown(seeds)} at N = {n}" for n, seeds in full.seeds_by_n.items())
                              + f"; with --quick: {_shown(quick.seeds)})")
    study_parser.add_argument("--n-labels", type=int, nargs="+", help="numbers of labelled pairs "
                              f"(default: {_shown(full.n_labels)}; with --quick: {_shown(quick.n_labels)})")
    study_parser.add_argument("--inits", nargs="+", choices=["cmunet", "scratch", "mae_only", "contrastive_only"],
                              help=f"initialisations (default: {_shown(full.inits)})")
    _add_verbosity(study_parser, default=2)
    study_parser.set_defaults(run=cmd_study)

    presets_parser = command("presets", "list the shipped presets (saved_models/) and their cards")
    presets_parser.add_argument("--long", dest="verbose_cards", action="store_true", help="descriptions too")
    presets_parser.set_defaults(run=cmd_presets)

    demo = command("demo", "end-to-end demo on synthetic angiograms")
    demo.add_argument("--out", default="demo_out", help="folder of the report and the runs")
    demo.add_argument("--quick", action="store_true", help="a smoke-test sized run")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from cm_unet_keras.core.errors import InvalidInputError

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
