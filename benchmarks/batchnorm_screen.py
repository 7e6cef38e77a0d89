"""Few-label adaptation with the start's BatchNorm statistics kept, screened.

    python benchmarks/batchnorm_screen.py            # every run, then the report
    python benchmarks/batchnorm_screen.py --report   # the report of the finished runs

Why: the U-Net's BatchNorm momentum is 0.9, so after the 100-200 steps of
the few-label rule the moving statistics are those of the patches of one
to three frames, and the start's statistics, learned over many angiograms,
are gone. `FinetuneConfig.freeze_batchnorm` (`--freeze-batchnorm`) keeps
them (and the layers' scale and offset); the convolutions still train.

Two starts that already segment, each adapted by the few-label rule
(`few_label_settings`) with and without it, on the same pairs and seeds:
- `cmunet_small_xca` (trained on 30 CIMAT pairs, never an ARCADE mask) on
  k = 1 and 3 of ARCADE's 140 training pairs (`recipes/arcade_split.json`),
  seeds 0-2, scored on 40 other training pairs (the selection pairs, fixed
  before the draws; the 60 validation pairs are not read): centerline
  recall, Dice, specificity;
- `cmunet_small_general` on one `xcad_sample` frame, scored on the other
  (two folds: a smoke test, not a measurement).

Rule fixed before the runs: freezing becomes the few-label default for a
segmenting start at a k where, on the ARCADE selection pairs, its paired
mean difference is >= 0 in both centerline recall and Dice, and XCAD is
not lower in both folds; otherwise it stays an option.

Runs go to `runs/batchnorm_screen/`; one JSON line per finished run in
`benchmarks/batchnorm_screen/runs.jsonl`; the report in `results.md`.
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "batchnorm_screen"
RECIPES = ROOT / "recipes"  # the split files
RUNS = ROOT / "runs" / "batchnorm_screen"
DATA = ROOT.parent / "shared" / "data"
SELECTION_PAIRS, SELECTION_SEED = 40, 1234
ARCADE_K, SEEDS = (1, 3), (0, 1, 2)
METRICS = ("centerline_recall", "dice", "specificity")


def arcade_pools(data_root):
    """(draw pool, selection pairs): 40 of the 140 ARCADE training pairs,
    fixed by `SELECTION_SEED`, are scored; draws come from the other 100."""
    from cm_unet_keras.experiments.data import arcade_parts

    train, _ = arcade_parts(data_root, RECIPES)
    order = np.random.default_rng(SELECTION_SEED).permutation(len(train))
    return [train[i] for i in order[SELECTION_PAIRS:]], [train[i] for i in order[:SELECTION_PAIRS]]


def config_for(start, k, seed, freeze):
    """What `cm-unet finetune --init START [--freeze-batchnorm]` runs on k pairs."""
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.training.few_label import apply_few_label_rule

    config, _ = apply_few_label_rule(FinetuneConfig(init=start, seed=seed, freeze_batchnorm=freeze), k)
    return config


def plan(data_root):
    """`[(key, start, labelled, scored, k, seed, freeze)]`; freeze None is the start untouched."""
    from cm_unet_keras.experiments.data import xcad_pairs

    pool, selection = arcade_pools(data_root)
    runs = [("arcade_untouched", "cmunet_small_xca", [], selection, 0, 0, None)]
    for k in ARCADE_K:
        for seed in SEEDS:
            labelled = [pool[i] for i in np.random.default_rng(seed).choice(len(pool), k, replace=False)]
            runs += [(f"arcade_k{k}_seed{seed}_{'frozen' if freeze else 'trained'}", "cmunet_small_xca", labelled,
                      selection, k, seed, freeze) for freeze in (False, True)]
    xcad = xcad_pairs(data_root)
    for fold in (0, 1):
        labelled, scored = [xcad[fold]], [xcad[1 - fold]]
        runs.append((f"xcad_fold{fold}_untouched", "cmunet_small_general", [], scored, 0, fold, None))
        runs += [(f"xcad_fold{fold}_{'frozen' if freeze else 'trained'}", "cmunet_small_general", labelled, scored, 1,
                  fold, freeze) for freeze in (False, True)]
    return runs


def run(key, start, labelled, scored, k, seed, freeze, log=print):
    from cm_unet_keras.evaluation.evaluate import evaluate_model
    from cm_unet_keras.experiments.runs import finetune_and_evaluate
    from cm_unet_keras.inference.predict import load_model

    started = time.perf_counter()
    if freeze is None:
        report = evaluate_model(load_model(start), scored)
        steps, lr = 0, 0.0
    else:
        config = config_for(start, k, seed, freeze)
        _, report = finetune_and_evaluate(config, labelled, scored, RUNS / key, verbose=0,
                                          log=lambda line: log(f"[{key}] {line}"))
        steps, lr = config.epochs * config.steps_per_epoch, config.lr
    return {"key": key, "start": start, "k": k, "seed": seed, "freeze_batchnorm": freeze, "steps": steps, "lr": lr,
            "labelled": [r.name for r in labelled], "n_scored": len(scored),
            "metrics": {m: report["mean"][m] for m in METRICS}, "seconds": round(time.perf_counter() - started, 1)}


def report(rows):
    lines = ["# Few-label adaptation with the start's BatchNorm statistics kept", "",
             "Generated by `python benchmarks/batchnorm_screen.py` (its docstring has the protocol and the rule "
             "fixed before the runs).", ""]
    untouched = rows.get("arcade_untouched")
    lines += ["## ARCADE: `cmunet_small_xca` adapted on k training pairs, 40 selection pairs scored", ""]
    if untouched:
        lines += ["Untouched start: " + ", ".join(f"{m} {untouched['metrics'][m]:.4f}" for m in METRICS) + ".", ""]
    lines += ["| k | steps, lr | seeds | " + " | ".join(f"{m} trained" for m in METRICS) + " | "
              + " | ".join(f"{m} frozen - trained (per seed)" for m in METRICS[:2]) + " |",
              "|---|---|---|" + "---|" * (len(METRICS) + 2)]
    verdicts = {}
    for k in ARCADE_K:
        pairs = [(rows[f"arcade_k{k}_seed{s}_trained"], rows[f"arcade_k{k}_seed{s}_frozen"]) for s in SEEDS
                 if f"arcade_k{k}_seed{s}_trained" in rows and f"arcade_k{k}_seed{s}_frozen" in rows]
        if not pairs:
            continue
        cells = []
        for m in METRICS:
            values = [t["metrics"][m] for t, _ in pairs]
            cells.append(f"{np.mean(values):.4f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}")
        deltas = {m: [f["metrics"][m] - t["metrics"][m] for t, f in pairs] for m in METRICS}
        for m in METRICS[:2]:
            cells.append(f"{np.mean(deltas[m]):+.4f} ({', '.join(f'{d:+.3f}' for d in deltas[m])})")
        verdicts[k] = all(np.mean(deltas[m]) >= 0 for m in METRICS[:2])
        first = pairs[0][0]
        lines.append(f"| {k} | {first['steps']}, {first['lr']:g} | {len(pairs)} | " + " | ".join(cells) + " |")
    lines += ["", "## XCAD: `cmunet_small_general` adapted on one `xcad_sample` frame, scored on the other", "",
              "| trained on | untouched Dice | trained Dice | frozen Dice | untouched clR | trained clR | frozen clR |",
              "|---|---|---|---|---|---|---|"]
    xcad_ok = []
    for fold in (0, 1):
        got = [rows.get(f"xcad_fold{fold}_{name}") for name in ("untouched", "trained", "frozen")]
        if None in got:
            continue
        xcad_ok.append(got[2]["metrics"]["dice"] >= got[1]["metrics"]["dice"])
        lines.append(f"| {got[1]['labelled'][0]} | " + " | ".join(f"{g['metrics']['dice']:.4f}" for g in got) + " | "
                     + " | ".join(f"{g['metrics']['centerline_recall']:.4f}" for g in got) + " |")
    lines += ["", "## Against the rule", ""]
    for k, ok in verdicts.items():
        default = ok and any(xcad_ok)
        lines.append(f"- k = {k}: ARCADE {'>= 0 in both' if ok else 'below 0 in centerline recall or Dice'}; XCAD "
                     f"{'not lower in both folds' if any(xcad_ok) else 'lower in both folds'}: freezing "
                     f"{'becomes the default' if default else 'stays an option'}.")
    lines += ["", "Machine: 2-core x86-64 (AVX512_BF16), no GPU; seconds are in `runs.jsonl`."]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    from cm_unet_keras.experiments.store import append_jsonl, read_jsonl

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = read_jsonl(OUT / "runs.jsonl", lambda row: row["key"])
    if not args.report:
        for key, *spec in plan(args.data):
            if key in rows:
                continue
            row = run(key, *spec)
            append_jsonl(OUT / "runs.jsonl", row)
            rows[key] = row
            print(f"{key}: " + ", ".join(f"{m} {row['metrics'][m]:.4f}" for m in METRICS) + f" ({row['seconds']:.0f} s)",
                  flush=True)
    report(rows)


if __name__ == "__main__":
    main()
