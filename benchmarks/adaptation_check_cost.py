"""Wall time of the adaptation check (issue 34, item 3: 3 pairs under 10
minutes on the 2-core machine).

Times `run_check` (decode the pairs, load the start, score it, train and
score every fold at every candidate budget, choose) from
`cmunet_small_general` on 2, 3, 5 and 10 CIMAT training pairs (the first
k of a seed-0 permutation of the 30 training pairs of
`recipes/xca_split.json`; its 10 validation pairs are never read), with the
package's defaults (batch 8 of 128 px patches, precision `auto`), under `nice -n 10`. Each
count's row, with the machine's load before and after (`os.getloadavg`),
is appended to `runs.jsonl`; `results.md` is written from it.

    nice -n 10 python benchmarks/adaptation_check_cost.py --pairs 2 3 5 10 --note "beside a training run"
    python benchmarks/adaptation_check_cost.py --report     # results.md from runs.jsonl only
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cm_unet_keras.experiments.data import cimat_parts, labelled_subset  # noqa: E402
from cm_unet_keras.experiments.report import machine  # noqa: E402
from cm_unet_keras.experiments.store import append_jsonl, read_jsonl  # noqa: E402

OUT = ROOT / "benchmarks" / "adaptation_check_cost"
START = "cmunet_small_general"
LIMIT_SECONDS = 600  # issue 34: 3 pairs under 10 minutes


def measure(n_pairs, data_root, note):
    """One timed check on `n_pairs` CIMAT training pairs; its row."""
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.training.adaptation_check import run_check

    train, _ = cimat_parts(data_root, ROOT / "recipes")
    records = labelled_subset(train, n_pairs, seed=0)
    load_before = os.getloadavg()
    started = time.perf_counter()
    record = run_check(FinetuneConfig(init=START), records, log=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - started
    return {"pairs": n_pairs, "seconds": round(seconds, 1), "check_seconds": record["seconds"],
            "folds": len(record["folds"]), "method": record["method"], "precision": record["precision"],
            "chosen": record["chosen"], "reason": record["reason"], "warning": record["warning"],
            "candidates": {entry["name"]: [entry["dice_mean"], entry["cldice_mean"]] for entry in record["candidates"]},
            "load_before": [round(value, 2) for value in load_before],
            "load_after": [round(value, 2) for value in os.getloadavg()], "machine": machine(), "note": note,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def results_markdown(rows):
    lines = ["# Wall time of the adaptation check (issue 34, item 3)", "",
             f"`run_check` from `{START}` (batch 8 of 128 px patches, the default candidates: the start "
             "untouched, 50/100/200 steps at lr 2e-3 and 50/100 at 5e-4), on the first k of a seed-0 permutation "
             "of the 30 CIMAT training pairs of `recipes/xca_split.json`; the time includes decoding the pairs, "
             "loading and scoring the start, every fold's training and scoring, and the choice. Produced by "
             "`nice -n 10 python benchmarks/adaptation_check_cost.py`; every run is in `runs.jsonl`. One run per "
             "row: a single timing on a shared machine, so read the load beside it (1, 5 and 15 minute load averages "
             "before and after; 2 cores).", "",
             "| pairs | folds | seconds | minutes | under 10 min | precision | load before | load after | "
             "chosen | machine, note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        chosen = row["chosen"]
        name = "start untouched" if not chosen["steps"] else f"{chosen['steps']} steps at lr {chosen['lr']:g}"
        lines.append(f"| {row['pairs']} | {row['folds']} | {row['seconds']:.0f} | {row['seconds'] / 60:.1f} | "
                     f"{'yes' if row['seconds'] < LIMIT_SECONDS else 'no'} | {row['precision']} | "
                     f"{' '.join(f'{v:.2f}' for v in row['load_before'])} | "
                     f"{' '.join(f'{v:.2f}' for v in row['load_after'])} | {name} | "
                     f"{row['machine']}{'; ' + row['note'] if row['note'] else ''} ({row['date']}) |")
    lines += ["", "What each run estimated (mean Dice over its folds; clDice after the slash) and chose. These are "
              "the check's own estimates on the pairs it trains on: a cost measurement, not a measurement of what "
              "the check is worth on pairs it never saw (issue 34, item 4). `cmunet_small_general` was itself "
              "trained on these 30 CIMAT training pairs, so its untouched scores here are on pairs it learned: "
              "the choices say nothing of the check's worth on a new source.", ""]
    names = list(dict.fromkeys(name for row in rows for name in row["candidates"]))
    lines += ["| pairs | date | " + " | ".join(names) + " | warning |", "|---|---|" + "---|" * (len(names) + 1)]
    for row in rows:
        cells = [f"{row['candidates'][name][0]:.3f} / {row['candidates'][name][1]:.3f}"
                 if name in row["candidates"] else "-" for name in names]
        warned = "yes" if row["warning"] else "no"
        lines.append(f"| {row['pairs']} | {row['date']} | " + " | ".join(cells) + f" | {warned} |")
    return "\n".join(lines + [""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", type=int, default=[2, 3, 5, 10])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--note", default="", help="what else the machine was doing")
    parser.add_argument("--report", action="store_true", help="only write results.md from runs.jsonl")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    runs = OUT / "runs.jsonl"
    if not args.report:
        for n_pairs in args.pairs:
            row = measure(n_pairs, args.data, args.note)
            append_jsonl(runs, row)
            print(f"{n_pairs} pairs: {row['seconds']:.0f} s ({row['folds']} folds, {row['precision']}), "
                  f"load {row['load_before']} -> {row['load_after']}", flush=True)
    rows = sorted(read_jsonl(runs, key=lambda row: (row["pairs"], row["date"])).values(),
                  key=lambda row: (row["pairs"], row["date"]))
    (OUT / "results.md").write_text(results_markdown(rows))
    print(f"wrote {OUT / 'results.md'}")


if __name__ == "__main__":
    main()
