"""Does a soft clDice term help few-label fine-tuning? (issue 25, point 5)

From `cmunet_small_pretrained`, fine-tune the width-16 U-Net on k = 3 CIMAT
pairs (`experiments.data.labelled_subset` of the 30 training pairs of
`recipes/xca_split.json`, the study's subsets) for 500 steps (`epochs=5`,
the pretrained start's budget at a handful of pairs), with
`cldice_weight` 0 (Dice + BCE) and 0.5 (+ 0.5 x (1 - soft clDice)); every
other setting is the package default, the last epoch kept. Each model is
scored on the OTHER 27 training pairs (the selection pairs) at native
resolution: Dice and centerline recall, with clDice and sensitivity beside
them. The 10 validation pairs are never read.

    python benchmarks/cldice_screen.py              # runs what is not done yet, then writes results.md
    python benchmarks/cldice_screen.py --report     # results.md from runs.jsonl only

Finished runs are appended to `benchmarks/cldice_screen/runs.jsonl` (with
per-image scores); a rerun skips them and resumes an interrupted one from
its folder under `runs/cldice_screen/`.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "cldice_screen"
RUNS = ROOT / "runs" / "cldice_screen"
KEYS = ("dice", "centerline_recall", "cldice", "sensitivity", "specificity")
# Where the first runs ran, before each run recorded it.
FIRST_MACHINE, FIRST_PRECISION = "x86_64, 2 cores", "mixed_bfloat16"


def run_key(weight, seed):
    return f"w{weight:g}_seed{seed}"


def run_one(weight, seed, args):
    """Fine-tune one (weight, seed) and score it on the selection pairs."""
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.evaluation.evaluate import evaluate_model
    from cm_unet_keras.experiments.data import selection_split, study_data
    from cm_unet_keras.experiments.store import append_jsonl
    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.training.finetune import finetune
    from cm_unet_keras.training.runtime import resolve_precision

    train, _ = study_data(args.data, ROOT / "recipes" / "xca_split.json")  # the validation pairs are not read
    labelled, selection = selection_split(train, args.n_labels, seed)
    chosen = {r.name for r in labelled}
    config = FinetuneConfig(base_filters=16, depth=4, epochs=args.epochs, seed=seed, init=args.init,
                            select="last", val_fraction=0.0, cldice_weight=weight)
    name = run_key(weight, seed)
    started = time.perf_counter()
    finetune(config, labelled, RUNS / name, val_records=[], verbose=0,
             log=lambda line: print(f"[{name}] {line}", flush=True))
    trained = time.perf_counter() - started
    report = evaluate_model(load_model(RUNS / name / "model.keras"), selection, threshold=config.threshold)
    state = json.loads((RUNS / name / "state.json").read_text())
    row = {"key": name, "cldice_weight": weight, "seed": seed, "init": args.init, "n_labels": args.n_labels,
           "steps": args.epochs * config.steps_per_epoch, "labelled": sorted(chosen), "n_selection": len(selection),
           "mean": {key: report["mean"][key] for key in KEYS},
           "per_image": [{k: image[k] for k in ("name",) + KEYS} for image in report["per_image"]],
           "losses": [r["loss"] for r in state["history"]],
           "train_seconds": round(trained, 1), "seconds": round(time.perf_counter() - started, 1),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "precision": resolve_precision("auto")}
    OUT.mkdir(parents=True, exist_ok=True)
    append_jsonl(OUT / "runs.jsonl", row)
    print(f"[{name}] selection Dice {row['mean']['dice']:.3f}, centerline recall "
          f"{row['mean']['centerline_recall']:.3f} ({row['seconds']:.0f} s)", flush=True)
    return row


def write_report(rows, command):
    from cm_unet_keras.experiments.report import mean_interval, recorded

    weights = sorted({r["cldice_weight"] for r in rows})
    by = {(r["cldice_weight"], r["seed"]): r for r in rows}
    lines = [
        "# Soft clDice term in few-label fine-tuning (issue 25, point 5)",
        "",
        f"Written by `{command}` from `runs.jsonl`. Machine: {recorded(rows, 'machine', FIRST_MACHINE)}, "
        "shared with other jobs (minutes per run vary with their load); precision auto = "
        f"{recorded(rows, 'precision', FIRST_PRECISION)}.",
        "",
        "From `cmunet_small_pretrained`, the width-16 U-Net fine-tuned on k = 3 CIMAT pairs (the study's",
        "subsets of the 30 training pairs of `recipes/xca_split.json`) for 500 steps with the package defaults",
        "(batch 8 of 128 px patches, AdamW 2e-3, warm-up + cosine, last epoch kept); the loss is Dice + BCE plus",
        "w x (1 - soft clDice) (10 soft-skeleton iterations). Scored on the other 27 training pairs (the",
        "selection pairs) at native resolution; the 10 validation pairs are not read. Mean over the 27 pairs;",
        "+- is the sd over seeds.",
        "",
        "| cldice_weight | seeds | " + " | ".join(KEYS) + " | minutes per run |",
        "|---|---|" + "---|" * len(KEYS) + "---|",
    ]
    for weight in weights:
        cell = [r for r in rows if r["cldice_weight"] == weight]
        values = []
        for key in KEYS:
            v = [r["mean"][key] for r in cell]
            values.append(f"{np.mean(v):.3f}" + (f" +- {np.std(v, ddof=1):.3f}" if len(v) > 1 else ""))
        minutes = np.mean([r["seconds"] for r in cell]) / 60
        seeds = ",".join(str(r["seed"]) for r in sorted(cell, key=lambda r: r["seed"]))
        lines.append(f"| {weight:g} | {seeds} | " + " | ".join(values) + f" | {minutes:.1f} |")
    lines += ["", "Paired with weight 0 on the same subset (seed): mean difference [Student-t 95% interval over",
              "seeds] (per seed in brackets).", "", "| cldice_weight | " + " | ".join(KEYS) + " |",
              "|---|" + "---|" * len(KEYS)]
    for weight in [w for w in weights if w != 0]:
        seeds = sorted(s for (w, s) in by if w == weight and (0.0, s) in by)
        if not seeds:
            continue
        cells = []
        for key in KEYS:
            d = [by[(weight, s)]["mean"][key] - by[(0.0, s)]["mean"][key] for s in seeds]
            mean, low, high = mean_interval(d)
            bounds = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
            cells.append(f"{mean:+.3f}{bounds} (" + ", ".join(f"{x:+.3f}" for x in d) + ")")
        lines.append(f"| {weight:g} | " + " | ".join(cells) + " |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n-labels", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of 100 steps")
    parser.add_argument("--init", default="cmunet_small_pretrained")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--report", action="store_true", help="only write results.md from runs.jsonl")
    args = parser.parse_args(argv)
    command = "python benchmarks/cldice_screen.py " + " ".join(sys.argv[1:] if argv is None else argv)
    from cm_unet_keras.experiments.store import read_jsonl

    done = read_jsonl(OUT / "runs.jsonl", lambda row: row["key"])
    if not args.report:
        for seed in args.seeds:  # both weights of a seed in turn: partial results stay paired
            for weight in args.weights:
                if run_key(weight, seed) not in done:
                    done[run_key(weight, seed)] = run_one(weight, seed, args)
    write_report(list(read_jsonl(OUT / "runs.jsonl", lambda row: row["key"]).values()), command.strip())


if __name__ == "__main__":
    main()
