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
from pathlib import Path

from cm_unet_keras.config import FinetuneConfig
from cm_unet_keras.evaluation.metrics import METRIC_KEYS
from cm_unet_keras.experiments.data import study_data
from cm_unet_keras.experiments.report import machine, over_seeds
from cm_unet_keras.experiments.runs import run_seeds

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

    train, holdout = study_data(args.data, args.split)
    config = FinetuneConfig(base_filters=args.base_filters, epochs=args.epochs)
    results = run_seeds(config, args.seeds, train, holdout, args.runs)
    write_results(results, Path(args.results))


def write_results(results, folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"machine": machine(), "runs": results}, indent=2, default=str))
    lines = [
        "# Supervised small U-Net on XCA (30 train pairs, 10 held out)",
        "",
        f"Machine: {machine()}. Seeds: {[r['seed'] for r in results]}. Mean +- std over seeds of the",
        "per-seed mean over the 10 held-out angiograms.",
        "",
        "| metric | mean | std over seeds |",
        "|---|---|---|",
    ]
    for key in METRIC_KEYS:
        mean, std = over_seeds(results, key)
        lines.append(f"| {key} | {mean:.4f} | {std:.4f} |")
    (folder / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
