"""Supervised baseline on the real XCA angiograms: 3 seeds, held-out evaluation.

Trains a small U-Net from scratch on the 30 training pairs of
`recipes/xca_split.json` (each seed carves its own 6-pair validation split
from them to pick the best epoch, so 24 pairs are trained on), evaluates it
on the 10 held-out pairs at native resolution, and writes
`benchmarks/xca_supervised/results.json` and `results.md` (mean +- std over
seeds). Rerunning resumes unfinished runs and skips finished ones.

    python recipes/xca_supervised.py [--data ../shared/data] [--seeds 0 1 2] [--epochs 40]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from cm_unet_keras.data.layouts import index_pairs
from cm_unet_keras.data.splits import select_part
from cm_unet_keras.evaluation.evaluate import evaluate_model, write_report
from cm_unet_keras.evaluation.metrics import METRIC_KEYS
from cm_unet_keras.inference.predict import load_model
from cm_unet_keras.training.config import FinetuneConfig
from cm_unet_keras.training.finetune import finetune

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--split", default=str(ROOT / "recipes" / "xca_split.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "xca_supervised"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "xca_supervised"))
    args = parser.parse_args()

    records = index_pairs(Path(args.data) / "xca_vessels" / "train", mask_suffix="_gt")
    train, holdout = select_part(records, args.split, "train"), select_part(records, args.split, "holdout")
    results = []
    for seed in args.seeds:
        config = FinetuneConfig(base_filters=args.base_filters, epochs=args.epochs, seed=seed)
        run_dir = Path(args.runs) / f"seed{seed}"
        started = time.perf_counter()
        fit = finetune(config, train, run_dir, verbose=2)
        report = evaluate_model(load_model(fit["model_path"]), holdout)
        write_report(report, run_dir / "holdout.json")
        results.append({
            "seed": seed,
            "config": vars(config),
            "best_val_dice": fit["best_val_dice"],
            "best_epoch": fit["best_epoch"],
            "train_seconds_this_call": fit["seconds"],
            "wall_seconds_this_call": time.perf_counter() - started,
            "holdout": {"mean": report["mean"], "std": report["std"]},
        })
        print(f"seed {seed}: held-out Dice {report['mean']['dice']:.4f}")
    write_results(results, Path(args.results))


def write_results(results, folder):
    folder.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores"
    (folder / "results.json").write_text(json.dumps({"machine": machine, "runs": results}, indent=2, default=str))
    lines = [
        "# Supervised small U-Net on XCA (30 train pairs, 10 held out)",
        "",
        f"Machine: {machine}. Seeds: {[r['seed'] for r in results]}. Mean +- std over seeds of the",
        "per-seed mean over the 10 held-out angiograms.",
        "",
        "| metric | mean | std over seeds |",
        "|---|---|---|",
    ]
    for key in METRIC_KEYS:
        values = [r["holdout"]["mean"][key] for r in results]
        lines.append(f"| {key} | {np.mean(values):.4f} | {np.std(values):.4f} |")
    (folder / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
