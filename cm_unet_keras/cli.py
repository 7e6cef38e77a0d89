"""`cm-unet`: the command line. Each subcommand parses flags and calls the API."""

import argparse
import os
import sys

# TensorFlow's C++ start-up chatter hides the messages users need.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_layout_arguments(parser, required=True):
    group = parser.add_argument_group("labelled dataset (one layout)")
    group.add_argument("--pairs", help="folder of N.png + N<suffix>.png pairs")
    group.add_argument("--mask-suffix", default="_gt", help="mask file suffix for --pairs (default _gt)")
    group.add_argument("--images", help="folder of angiograms (with --masks: same file names)")
    group.add_argument("--masks", help="folder of vessel masks, 0/255, values >= 128 are vessel")
    parser.set_defaults(layout_required=required)


def _records_from_layout(args):
    from cm_unet_keras.data.layouts import index_images_masks, index_pairs

    if args.pairs and (args.images or args.masks):
        raise SystemExit("error: give either --pairs or --images/--masks, not both")
    if args.pairs:
        return index_pairs(args.pairs, mask_suffix=args.mask_suffix)
    if args.images and args.masks:
        return index_images_masks(args.images, args.masks)
    raise SystemExit("error: a labelled dataset is needed: --pairs DIR or --images DIR --masks DIR")


def _add_model_arguments(parser):
    parser.add_argument("--base-filters", type=int, help="U-Net width (16 small, 32 base, 64 paper)")
    parser.add_argument("--depth", type=int, help="U-Net levels (default 4)")


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
        frozen_encoder_epochs=args.frozen_encoder_epochs,
    )
    result = finetune(config, _records_from_layout(args), args.out, verbose=args.verbose)
    print(
        f"best validation Dice {result['best_val_dice']:.4f} at epoch {result['best_epoch']}; "
        f"{result['seconds']:.0f} s; model: {result['model_path']}"
    )


def cmd_evaluate(args):
    from cm_unet_keras.evaluation.evaluate import evaluate_model, format_table, write_report
    from cm_unet_keras.inference.predict import load_model

    model = load_model(args.model)
    report = evaluate_model(model, _records_from_layout(args), threshold=args.threshold, clahe=args.clahe)
    print(format_table(report))
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")


def cmd_predict(args):
    from cm_unet_keras.inference.predict import load_model, predict_files

    model = load_model(args.model)
    written = predict_files(model, args.inputs, args.output, threshold=args.threshold, clahe=args.clahe)
    print(f"segmented {len(written)} angiograms into {args.output}")


def cmd_demo(args):
    from cm_unet_keras.demo import run_demo

    report_path = run_demo(args.out, quick=args.quick)
    print(f"demo report: {report_path}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cm-unet", description="Coronary artery segmentation in X-ray angiograms with few labels."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write synthetic angiograms and vessel masks")
    synth.add_argument("--out", required=True)
    synth.add_argument("--count", type=int, default=20)
    synth.add_argument("--size", type=int, default=256)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=cmd_synth)

    finetune = commands.add_parser("finetune", help="train or fine-tune the U-Net on labelled angiograms")
    _add_layout_arguments(finetune)
    _add_model_arguments(finetune)
    finetune.add_argument("--out", required=True, help="run folder (rerun to resume)")
    finetune.add_argument("--config", help="recipe file (YAML/JSON); flags override it")
    finetune.add_argument("--epochs", type=int)
    finetune.add_argument("--steps-per-epoch", type=int)
    finetune.add_argument("--batch-size", type=int)
    finetune.add_argument("--lr", type=float)
    finetune.add_argument("--patch-size", type=int)
    finetune.add_argument("--val-fraction", type=float)
    finetune.add_argument("--seed", type=int)
    finetune.add_argument("--limit", type=int, help="use N labelled training pairs, chosen by the seed")
    finetune.add_argument("--init", help="start from a .keras U-Net, a pretraining run or a preset")
    finetune.add_argument("--frozen-encoder-epochs", type=int)
    finetune.add_argument("--precision", choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"])
    finetune.add_argument("--clahe", action="store_true", help="CLAHE before normalisation")
    finetune.add_argument("--verbose", default="auto", help="Keras progress: auto, 0, 1 or 2")
    finetune.set_defaults(run=cmd_finetune)

    evaluate = commands.add_parser("evaluate", help="score a model on labelled angiograms")
    _add_layout_arguments(evaluate)
    evaluate.add_argument("--model", required=True, help=".keras file or preset name")
    evaluate.add_argument("--json", help="write the report here")
    evaluate.add_argument("--threshold", type=float, default=0.5)
    evaluate.add_argument("--clahe", action="store_true")
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="segment angiograms (files, folders, DICOM)")
    predict.add_argument("inputs", nargs="+")
    predict.add_argument("--model", required=True, help=".keras file or preset name")
    predict.add_argument("--output", required=True)
    predict.add_argument("--threshold", type=float, default=0.5)
    predict.add_argument("--clahe", action="store_true")
    predict.set_defaults(run=cmd_predict)

    demo = commands.add_parser("demo", help="end-to-end demo on synthetic angiograms")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--quick", action="store_true", help="a smoke-test sized run")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", None) in ("0", "1", "2"):
        args.verbose = int(args.verbose)
    from cm_unet_keras.data.errors import InvalidInputError

    try:
        args.run(args)
    except InvalidInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
