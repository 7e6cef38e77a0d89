"""Fine-tuning budget, learning rate of the pretrained layers, selection rule (issue 12).

Each run fine-tunes a small U-Net (width 16) on N labelled XCA pairs (the
study's nested subsets: the first N of a seed's permutation of the 30
training pairs of `recipes/xca_split.json`), trains on all N (no pair is
spent on selection), keeps the last epoch, and scores the 10 validation
pairs at native resolution after every epoch of 100 steps: the whole
trajectory of a run is its validation curve, and runs with other budgets
(each with its own warm-up + cosine schedule) give Dice against budget.

    python benchmarks/finetune_budget.py --plan lr --budget 2000   # scratch, pretrained_lr_factor 1.0 / 0.1, N=3 and 30
    python benchmarks/finetune_budget.py --plan budget --factor F  # N {30,3,10} x {scratch, pretrained} x {1000,2000,4000}
    python benchmarks/finetune_budget.py --n-labels 30 --inits scratch pretrained --steps 2000 --seeds 1 2 --factor F
    python benchmarks/finetune_budget.py --frangi --n-labels 3 10 30 --seeds 0 1 2   # the tuned Frangi reference
    python benchmarks/finetune_budget.py --report                  # results.md + curves.png from runs.jsonl

Runs are appended to `benchmarks/finetune_budget/runs.jsonl` (one line per
finished run, with its per-epoch validation Dice); a rerun skips finished
runs and resumes an interrupted one from its run folder under
`runs/finetune_budget/`.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "finetune_budget"
STEPS_PER_EPOCH = 100
PRETRAINED = "cmunet_small_pretrained"


def plan(name, budget, factor):
    """(n_labels, init, steps, pretrained_lr_factor, seed) of each run of a named plan."""
    if name == "lr":
        return [(n, init, budget, f, 0) for n in (30, 3)
                for init, f in (("scratch", 1.0), (PRETRAINED, 1.0), (PRETRAINED, 0.1))]
    if name == "budget":
        return [(n, init, steps, factor if init != "scratch" else 1.0, 0)
                for n in (30, 3, 10) for init in ("scratch", PRETRAINED) for steps in (1000, 2000, 4000)]
    raise ValueError(name)


def grid(n_labels, inits, steps, factor, seeds):
    """The runs of an explicit grid (the --n-labels/--inits/--steps/--seeds flags)."""
    return [(n, init, s, factor if init != "scratch" else 1.0, seed)
            for seed in seeds for s in steps for n in n_labels for init in inits]


def key(n, init, steps, factor, seed):
    return f"n{n}_{'scratch' if init == 'scratch' else 'pre'}_s{steps}_f{factor:g}_seed{seed}"


def finished():
    from cm_unet_keras.experiments.store import read_jsonl

    return read_jsonl(OUT / "runs.jsonl", lambda row: row["key"])


def run_one(n, init, steps, factor, seed, data_root, split):
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.experiments.data import labelled_subset, study_data
    from cm_unet_keras.experiments.store import append_jsonl
    from cm_unet_keras.training.finetune import finetune

    train, validation = study_data(data_root, split)
    config = FinetuneConfig(
        base_filters=16, depth=4, epochs=steps // STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH, seed=seed,
        init=None if init == "scratch" else init, pretrained_lr_factor=factor, select="last", val_fraction=0.0,
    )
    name = key(n, init, steps, factor, seed)
    started = time.perf_counter()
    result = finetune(config, labelled_subset(train, n, seed), ROOT / "runs" / "finetune_budget" / name,
                      val_records=validation, verbose=0, log=lambda line: print(f"[{name}] {line}", flush=True))
    state = json.loads((ROOT / "runs" / "finetune_budget" / name / "state.json").read_text())
    row = {"key": name, "n_labels": n, "init": init, "steps": steps, "pretrained_lr_factor": factor, "seed": seed,
           "final_val_dice": result["best_val_dice"], "seconds": round(time.perf_counter() - started, 1),
           "curve": [[r["epoch"] * STEPS_PER_EPOCH, r["val_dice"]] for r in state["history"]],
           # Where the time goes (epochs of this process only, when resumed).
           "train_seconds": round(sum(r.get("train_seconds", 0.0) for r in state["history"]), 1),
           "val_seconds": round(sum(r.get("val_seconds", 0.0) for r in state["history"]), 1)}
    append_jsonl(OUT / "runs.jsonl", row)
    return row


def run_frangi(n, seed, data_root, split):
    """The study's Frangi baseline, tuned on the same N pairs, under the U-Nets' field-of-view rule."""
    from cm_unet_keras.config import StudyConfig
    from cm_unet_keras.experiments.data import labelled_subset, study_data
    from cm_unet_keras.experiments.frangi import evaluate_frangi, tune_frangi
    from cm_unet_keras.experiments.store import append_jsonl

    train, validation = study_data(data_root, split)
    started = time.perf_counter()
    params = tune_frangi(labelled_subset(train, n, seed), StudyConfig.frangi_sigma_sets,
                         StudyConfig.frangi_thresholds)
    report = evaluate_frangi(params, validation)
    row = {"key": f"frangi_n{n}_seed{seed}", "n_labels": n, "init": "frangi", "steps": 0, "pretrained_lr_factor": 1.0,
           "seed": seed, "final_val_dice": report["mean"]["dice"], "seconds": round(time.perf_counter() - started, 1),
           "curve": [], "frangi": params}
    append_jsonl(OUT / "runs.jsonl", row)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", choices=["lr", "budget"])
    parser.add_argument("--n-labels", type=int, nargs="+", help="an explicit grid instead of a plan")
    parser.add_argument("--inits", nargs="+", default=["scratch", "pretrained"], choices=["scratch", "pretrained"])
    parser.add_argument("--steps", type=int, nargs="+", default=[2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=int, default=2000, help="steps of the lr plan")
    parser.add_argument("--factor", type=float, default=1.0, help="pretrained_lr_factor of the pretrained runs")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--split", default=str(ROOT / "recipes" / "xca_split.json"))
    parser.add_argument("--frangi", action="store_true", help="score the Frangi baseline on the --n-labels/--seeds subsets")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.frangi:
        for n in args.n_labels:
            for seed in args.seeds:
                if f"frangi_n{n}_seed{seed}" not in finished():
                    row = run_frangi(n, seed, args.data, args.split)
                    print(f"{row['key']}: validation Dice {row['final_val_dice']:.4f}", flush=True)
        args.n_labels = None
    runs = plan(args.plan, args.budget, args.factor) if args.plan else []
    if args.n_labels:
        inits = ["scratch" if init == "scratch" else PRETRAINED for init in args.inits]
        runs += grid(args.n_labels, inits, args.steps, args.factor, args.seeds)
    if runs:
        for run in runs:
            if key(*run) in finished():
                continue
            row = run_one(*run, args.data, args.split)
            print(f"{row['key']}: final validation Dice {row['final_val_dice']:.4f} ({row['seconds']:.0f} s)", flush=True)
    if args.report:
        write_report(list(finished().values()))
    return 0


def label(row):
    if row["init"] in ("scratch", "frangi"):
        return row["init"]
    return f"pretrained, lr factor {row['pretrained_lr_factor']:g}"


def write_report(rows):
    """results.md (final Dice per cell, mean +- sd over seeds) and curves.png (every trajectory)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {}
    for row in rows:
        cells.setdefault((row["n_labels"], label(row), row["steps"] or "-"), []).append(row)
    lines = [
        "# Fine-tuning budget and learning rate of the pretrained layers (issue 12)",
        "",
        "Small U-Net (width 16, 4 levels), batch 8 of 128 px patches, AdamW 2e-3 with 5% warm-up and cosine decay "
        "over the run's budget, Dice + BCE, mixed bfloat16, trained on all N labelled pairs (the study's nested "
        "subsets of the 30 training pairs), the last epoch kept; Dice on the 10 validation pairs of "
        "`recipes/xca_split.json` at native resolution (mirror padding, field-of-view rule, no TTA), threshold 0.5. "
        "`pretrained` = `cmunet_small_pretrained`. Produced by `python benchmarks/finetune_budget.py --plan ...` then "
        "`--report`; every run with its per-epoch curve is in `runs.jsonl`.",
        "",
        "| N | start | steps | seeds | final Dice mean +- sd | per seed | best epoch's Dice (mean) | training s/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (n, start, steps), group in sorted(cells.items(), key=lambda item: (item[0][0], item[0][1], str(item[0][2]))):
        final = np.array([row["final_val_dice"] for row in group])
        best = np.mean([max(dice for _, dice in row["curve"]) if row["curve"] else row["final_val_dice"] for row in group])
        seeds = ", ".join(f"{row['seed']}: {row['final_val_dice']:.3f}" for row in sorted(group, key=lambda r: r["seed"]))
        timed = [row["train_seconds"] / row["steps"] for row in group if row.get("train_seconds") and row["steps"]]
        per_step = f"{np.mean(timed):.2f}" if timed else "-"
        lines.append(f"| {n} | {start} | {steps} | {len(group)} | {final.mean():.4f} +- {final.std():.4f} | {seeds} "
                     f"| {best:.4f} | {per_step} |")
    lines += ["", "`best epoch's Dice` is what picking the epoch on these same 10 pairs would report: optimistic, "
              "shown only to say how far the last epoch is from the curve's top. `training s/step`: the steps' wall "
              "time (validation excluded) where the run recorded it, on the 2-core build machine, often beside "
              "another job. Frangi rows: the study's grid search on the same N pairs, under the U-Nets' "
              "field-of-view rule. sd is over seeds (0 with one seed).", ""]
    (OUT / "results.md").write_text("\n".join(lines))

    n_values = sorted({row["n_labels"] for row in rows if row["curve"]})
    figure, axes = plt.subplots(1, len(n_values), figsize=(5 * len(n_values), 4), squeeze=False)
    colours = {}
    for axis, n in zip(axes[0], n_values):
        for row in sorted((r for r in rows if r["n_labels"] == n and r["curve"]), key=lambda r: (label(r), r["steps"], r["seed"])):
            colour = colours.setdefault(label(row), f"C{len(colours)}")
            steps, dice = zip(*row["curve"])
            axis.plot(steps, dice, color=colour, alpha=0.8, linewidth=1.2,
                      linestyle={1000: ":", 2000: "--"}.get(row["steps"], "-"),
                      label=f"{label(row)}, {row['steps']} steps" if row["seed"] == 0 else None)
        frangi = [row["final_val_dice"] for row in rows if row["n_labels"] == n and row["init"] == "frangi"]
        if frangi:
            axis.axhline(np.mean(frangi), color="grey", linestyle=":", label=f"tuned Frangi (mean of {len(frangi)} seeds)")
        axis.set(title=f"N = {n} labelled pairs", xlabel="fine-tuning step", ylabel="validation Dice", ylim=(0.4, 0.85))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(OUT / "curves.png", dpi=90)
    plt.close(figure)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
