"""Hyperparameter search on the real XCA angiograms with 10 labels: defaults vs tuned.

1. Draws `--labels` of the 30 training pairs of `recipes/xca_split.json`
   with `--label-seed` and writes them, with the split's 10 held-out names,
   as RUNS/labels.json (part `train`: the labels; part `holdout`: the
   held-out pairs).
2. Searches the fine-tuning hyperparameters on those labels only (k-fold
   cross-validation inside them): RUNS/search/best.yaml, trials.csv.
3. Fine-tunes the default and the tuned configuration on the same labels
   with each of `--seeds` (each run carves its own validation pairs from the
   labels to pick its best epoch, as `cm-unet finetune` does), evaluates
   every run on the held-out pairs and writes
   benchmarks/tune_finetune/results.json and results.md (with copies of
   labels.json and trials.csv).

The held-out pairs enter step 3's evaluation only. Rerunning resumes every
step where it stopped.

    python recipes/tune_finetune.py [--data ../shared/data] [--trials 8] [--folds 3] [--epochs 6]
"""

import argparse
import json
import shutil
from pathlib import Path

from cm_unet_keras.config import FinetuneConfig, build_config, config_to_dict
from cm_unet_keras.data.layouts import index_pairs
from cm_unet_keras.data.splits import select_part, write_split
from cm_unet_keras.evaluation.metrics import METRIC_KEYS
from cm_unet_keras.experiments.report import machine, over_seeds
from cm_unet_keras.experiments.runs import run_seeds
from cm_unet_keras.training.finetune import split_records
from cm_unet_keras.tuning import TuneConfig, tune

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--split", default=str(ROOT / "recipes" / "xca_split.json"))
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--label-seed", type=int, default=0)
    parser.add_argument("--algorithm", default="bayesian")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--space", default=str(ROOT / "recipes" / "tune_space.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    # The CPU budget: a small U-Net and short runs (see results.md).
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=12)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--init", help="pretraining run or .keras U-Net to fine-tune from")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "tune_xca"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "tune_finetune"))
    args = parser.parse_args()

    runs = Path(args.runs)
    records = index_pairs(Path(args.data) / "xca_vessels" / "train", mask_suffix="_gt")
    labels_file = write_label_split(records, args, runs / "labels.json")
    labels = select_part(records, labels_file, "train")
    holdout = select_part(records, labels_file, "holdout")

    base = FinetuneConfig(base_filters=args.base_filters, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                          patch_size=args.patch_size, init=args.init, precision="float32")
    settings = TuneConfig(algorithm=args.algorithm, max_trials=args.trials, folds=args.folds, space=args.space)
    summary = tune(base, settings, labels, runs / "search", verbose=2)
    print(f"search: best cross-validated Dice {summary['best_val_dice']:.4f}, {summary['trials']} trials, "
          f"{summary['seconds_total']:.0f} s")

    tuned = build_config(FinetuneConfig, runs / "search" / "best.yaml")
    results = {name: run_seeds(config, args.seeds, labels, holdout, runs / name)
               for name, config in (("defaults", base), ("tuned", tuned))}
    write_results(args, summary, base, tuned, results, Path(args.results), labels_file)


def write_label_split(records, args, path):
    """The labels drawn from the split's training part, as a split file."""
    train = select_part(records, args.split, "train")
    holdout = select_part(records, args.split, "holdout")
    labels = split_records(train, 0.0, args.label_seed, limit=args.labels)[0]
    split = {"seed": args.label_seed, "source": f"{args.labels} of the train part of {Path(args.split).name}",
             "train": [r.name for r in labels], "holdout": [r.name for r in holdout]}
    if path.is_file() and json.loads(path.read_text()) != split:
        raise SystemExit(f"{path} holds other labels; choose another --runs folder")
    write_split(split, path)
    return path


def write_results(args, summary, base, tuned, results, folder, labels_file):
    folder.mkdir(parents=True, exist_ok=True)
    # The labels and every trial, beside the numbers they produced.
    shutil.copy(labels_file, folder / "labels.json")
    shutil.copy(Path(summary["best_config"]).parent / "trials.csv", folder / "trials.csv")
    values = {name: [run["holdout"]["mean"]["dice"] for run in runs] for name, runs in results.items()}
    (folder / "results.json").write_text(json.dumps(
        {"machine": machine(), "search": summary, "base_config": config_to_dict(base),
         "tuned_config": config_to_dict(tuned), "runs": results}, indent=2, default=str))
    searched = summary["best_values"]
    lines = [
        f"# Fine-tuning hyperparameter search on XCA, {args.labels} labels",
        "",
        f"Machine: {machine()}, shared with other jobs. U-Net base_filters {base.base_filters}, depth {base.depth}, "
        f"{base.epochs} epochs x {base.steps_per_epoch} steps, patches {base.patch_size}; init {base.init}.",
        f"Labels: {labels_file} (part train); evaluation on its part holdout (the 10 held-out pairs).",
        "",
        f"Search: {args.algorithm}, {summary['trials']} trials ({summary['trials_completed']} completed), "
        f"{summary['folds']}-fold cross-validation inside the labels, {summary['seconds_total'] / 60:.1f} min wall.",
        f"Best cross-validated Dice {summary['best_val_dice']:.4f} (trial {summary['best_trial']}); trial 0 is the defaults.",
        "",
        "| hyperparameter | default | tuned |",
        "|---|---|---|",
        *[f"| {key} | {getattr(base, key)} | {_short(searched[key])} |" for key in searched],
        "",
        f"Held-out Dice, mean +- std over seeds {args.seeds} of the per-seed mean over the held-out pairs:",
        "",
        "| configuration | " + " | ".join(METRIC_KEYS) + " |",
        "|---|" + "---|" * len(METRIC_KEYS),
    ]
    for name, runs in results.items():
        cells = ["{:.4f} +- {:.4f}".format(*over_seeds(runs, key)) for key in METRIC_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Per-seed held-out Dice: defaults {_rounded(values['defaults'])}, tuned {_rounded(values['tuned'])}."]
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _short(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _rounded(values):
    return [round(v, 4) for v in values]


if __name__ == "__main__":
    main()
