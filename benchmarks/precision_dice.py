"""What the automatic precision costs in Dice against float32, on real XCA angiograms.

Fine-tunes the small U-Net from scratch on the 30 training pairs of
`recipes/xca_split.json` (the study's fine-tuning budget: `experiments.presets.cpu_config()`,
24 pairs to train, 6 to pick the epoch), once with `--precision auto` and once
with `float32`, for each seed, and scores both on the 10 validation pairs.
The seed fixes the patches and the initialisation, so the two runs of a seed
differ only by precision. Runs are interleaved by seed; the time ratio is
measured in the same process.

Writes `benchmarks/precision/results.json` and `results.md`.

    python benchmarks/precision_dice.py [--seeds 0 1 2]
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cm_unet_keras.experiments.data import study_data  # noqa: E402
from cm_unet_keras.experiments.presets import cpu_config  # noqa: E402
from cm_unet_keras.experiments.runs import finetune_and_evaluate  # noqa: E402
from cm_unet_keras.training.runtime import resolve_precision  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "precision_dice"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "precision"))
    args = parser.parse_args(argv)

    auto = resolve_precision("auto")
    train, validation = study_data(args.data, ROOT / "recipes" / "xca_split.json")
    base = cpu_config().finetune
    rows = []
    for seed in args.seeds:
        for precision in ("auto", "float32"):
            config = dataclasses.replace(base, seed=seed, precision=precision)
            run_dir = Path(args.runs) / f"{precision}_s{seed}"
            fit, report = finetune_and_evaluate(config, train, validation, run_dir, log=lambda *_: None, verbose=0)
            seconds = fit["seconds"]
            rows.append({"precision": precision, "policy": auto if precision == "auto" else "float32", "seed": seed,
                         "dice": report["mean"]["dice"], "cldice": report["mean"]["cldice"],
                         "best_epoch": fit["best_epoch"], "train_seconds": seconds})
            print(f"seed {seed} {precision:8s} ({rows[-1]['policy']}): Dice {rows[-1]['dice']:.4f}  {seconds:.0f} s",
                  flush=True)

    def column(precision, key):
        return np.array([r[key] for r in rows if r["precision"] == precision])

    gap = column("float32", "dice") - column("auto", "dice")
    summary = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "auto_policy": auto,
        "budget": {"epochs": base.epochs, "steps_per_epoch": base.steps_per_epoch, "batch_size": base.batch_size,
                   "patch_size": base.patch_size, "base_filters": base.base_filters},
        "dice_auto": [float(column("auto", "dice").mean()), float(column("auto", "dice").std())],
        "dice_float32": [float(column("float32", "dice").mean()), float(column("float32", "dice").std())],
        "dice_gap_float32_minus_auto": [float(gap.mean()), float(gap.std())],
        "time_ratio_float32_over_auto": float(column("float32", "train_seconds").sum()
                                              / column("auto", "train_seconds").sum()),
        "target_gap_at_most": 0.01,
        "runs": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Automatic precision against float32 on XCA",
        "",
        f"Machine: {summary['machine']}; `auto` resolves to **{auto}** here. Small U-Net from scratch, "
        f"{base.epochs} epochs x {base.steps_per_epoch} steps x {base.batch_size} patches of {base.patch_size} px, "
        "30 training pairs (24 train / 6 select), scored on the 10 validation pairs of `recipes/xca_split.json`.",
        "",
        "| seed | Dice auto | Dice float32 | float32 - auto | time auto (s) | time float32 (s) |",
        "|---|---|---|---|---|---|",
    ]
    for seed in args.seeds:
        a = next(r for r in rows if r["seed"] == seed and r["precision"] == "auto")
        f = next(r for r in rows if r["seed"] == seed and r["precision"] == "float32")
        lines.append(f"| {seed} | {a['dice']:.4f} | {f['dice']:.4f} | {f['dice'] - a['dice']:+.4f} | "
                     f"{a['train_seconds']:.0f} | {f['train_seconds']:.0f} |")
    lines += [
        "",
        f"Mean Dice: auto {summary['dice_auto'][0]:.4f} +- {summary['dice_auto'][1]:.4f}, float32 "
        f"{summary['dice_float32'][0]:.4f} +- {summary['dice_float32'][1]:.4f}; gap (float32 - auto) "
        f"{gap.mean():+.4f} +- {gap.std():.4f} (target: at most 0.01). Training time float32 / auto: "
        f"{summary['time_ratio_float32_over_auto']:.2f}x.",
        "",
        "Reproduce: `python benchmarks/precision_dice.py`.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
