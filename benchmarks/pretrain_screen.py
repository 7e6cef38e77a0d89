"""Which pretraining helps few-label fine-tuning? (issue 13's selection rule)

A pretraining recipe is chosen by what it does to fine-tuning with few
labels, not by its own loss, and without touching the 10 validation pairs
that the study reports. Each probe fine-tunes a small U-Net (width 16) on
N labelled XCA pairs (the study's nested subsets: the first N of a seed's
permutation of the 30 training pairs of `recipes/xca_split.json`) with the
package's fine-tuning defaults (2,000 steps, last epoch kept), and scores
the OTHER training pairs (27 at N = 3) after every epoch: those are the
selection pairs. The validation pairs are left for the study.

    python benchmarks/pretrain_screen.py --init scratch --init shift_1200=cmunet_small_pretrained \\
        --init crops_1200=runs/pretrain_screen/crops_1200 --seeds 0 1
    python benchmarks/pretrain_screen.py --report

`--init LABEL=SOURCE` names a start (a pretraining run folder, a preset or a
.keras U-Net); `scratch` needs no source. Runs are appended to
`benchmarks/pretrain_screen/runs.jsonl` (one line per finished probe, with
its per-epoch selection Dice); a rerun skips finished probes and resumes an
interrupted one from its folder under `runs/pretrain_screen/probes/`.
`--report` writes `results.md` from the runs and `pretrainings.json`
(how each pretraining was made: its config and losses, read from its run
folder or card).
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "pretrain_screen"
RUNS = ROOT / "runs" / "pretrain_screen" / "probes"
STEPS_PER_EPOCH = 100
STUDY_STEPS = 2000  # the study's fine-tuning budget at N = 3 and 10 (`experiments.presets.cpu_config`)


def parse_init(text):
    """'LABEL=SOURCE' or 'scratch' -> (label, source or None)."""
    if text == "scratch":
        return "scratch", None
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--init {text!r}: write LABEL=SOURCE (or scratch)")
    label, source = text.split("=", 1)
    return label, source


def finished():
    from cm_unet_keras.experiments.store import read_jsonl

    return read_jsonl(OUT / "runs.jsonl", lambda row: row["key"])


def probe_key(label, n, steps, seed):
    return f"{label}_n{n}_s{steps}_seed{seed}"


def run_probe(label, source, n, steps, seed, data_root, split, pretrained_lr_factor=1.0, frozen_encoder_epochs=0):
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.experiments.data import selection_split, study_data
    from cm_unet_keras.experiments.store import append_jsonl
    from cm_unet_keras.training.finetune import finetune

    train, _ = study_data(data_root, split)  # the validation pairs are not read
    labelled, selection = selection_split(train, n, seed)
    chosen = {r.name for r in labelled}
    config = FinetuneConfig(
        base_filters=16, depth=4, epochs=steps // STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH, seed=seed,
        init=source, select="last", val_fraction=0.0, pretrained_lr_factor=pretrained_lr_factor,
        frozen_encoder_epochs=frozen_encoder_epochs,
    )
    name = probe_key(label, n, steps, seed)
    started = time.perf_counter()
    finetune(config, labelled, RUNS / name, val_records=selection, verbose=0,
             log=lambda line: print(f"[{name}] {line}", flush=True))
    state = json.loads((RUNS / name / "state.json").read_text())
    curve = [[r["epoch"] * STEPS_PER_EPOCH, r["val_dice"]] for r in state["history"]]
    row = {"key": name, "label": label, "source": source, "n_labels": n, "steps": steps, "seed": seed,
           "pretrained_lr_factor": pretrained_lr_factor, "frozen_encoder_steps": frozen_encoder_epochs * STEPS_PER_EPOCH,
           "labelled": sorted(chosen), "n_selection": len(selection),
           "final_dice": curve[-1][1], "seconds": round(time.perf_counter() - started, 1), "curve": curve}
    OUT.mkdir(parents=True, exist_ok=True)
    append_jsonl(OUT / "runs.jsonl", row)
    return row


def describe_pretraining(source):
    """How a pretraining start was made: config, steps, losses (run folder or preset card)."""
    import yaml

    path = Path(source)
    if (path / "config.yaml").is_file() and (path / "state.json").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text())
        history = json.loads((path / "state.json").read_text())["history"]
        last = history[-1] if history else {}
        return {"config": config, "steps": len(history) * (config.get("steps_per_epoch") or 0),
                "seconds": round(sum(row["seconds"] for row in history), 1),
                "final": {k: last.get(k) for k in ("reconstruction_loss", "contrastive_loss", "contrastive_accuracy")}}
    if (path / "pretrain_jax.json").is_file():  # recipes/pretrain_jax.py (an accelerator, JAX backend)
        settings = json.loads((path / "pretrain_jax.json").read_text())
        with open(path / "history.csv") as file:
            last = list(csv.DictReader(file))[-1]
        config = {key: settings[key] for key in ("base_filters", "depth", "image_size", "batch_size", "lr",
                                                 "mask_ratio", "rc_weight", "ct_weight", "seed")}
        config["views"] = "crops"
        return {"config": config, "steps": settings["steps_done"], "seconds": round(settings["seconds"], 1),
                "device": settings["device"],
                "final": {k: float(last[k]) for k in ("reconstruction_loss", "contrastive_loss", "contrastive_accuracy")}}
    card = ROOT / "saved_models" / source / "card.json"
    if card.is_file():
        card = json.loads(card.read_text())
        config = card["training"]["pretrain_config"]
        return {"config": config, "steps": card["training"]["epochs_done"] * config["steps_per_epoch"],
                "seconds": card["training"]["seconds"], "final": card.get("final_losses", {})}
    return {}


def write_report(rows):
    labels = list(dict.fromkeys(row["label"] for row in rows))
    sources = {row["label"]: row["source"] for row in rows}
    lines = [
        "# Pretraining screen: few-label fine-tuning from each start (issue 13)",
        "",
        "Written by `python benchmarks/pretrain_screen.py --report` from `runs.jsonl`. Each probe fine-tunes",
        "the width-16 U-Net on N labelled XCA training pairs (the study's subsets) with the package defaults",
        "(batch 8 of 128 px patches, AdamW 2e-3, warm-up + cosine, last epoch kept) for the steps given and scores",
        "the other training pairs (the selection pairs). The 10 validation pairs of `recipes/xca_split.json`",
        "are not read: they are the study's. Dice is the mean over the selection pairs at the end of the run;",
        "'paired' is the mean difference from scratch on the same subsets (same seed) and budget; the next",
        f"column pairs it with scratch at the study's {STUDY_STEPS:,} steps (its converged budget at N = 3 and 10),",
        "which is how a start with its own shorter budget compares with the baseline (per seed in brackets).",
        "",
        "| start | pretraining | N | fine-tuning steps | seeds | Dice (mean +- sd) | paired vs scratch | "
        f"paired vs scratch at {STUDY_STEPS:,} steps | Dice at 500 steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    scratch = {(r["n_labels"], r["steps"], r["seed"]): r for r in rows if r["label"] == "scratch"}
    # A start is described as it was when its probes ran: a preset or a run
    # folder may have been rebuilt since (cmunet_small_pretrained was, after
    # the shift_1200 probe), so a description already written is kept.
    written = OUT / "pretrainings.json"
    known = json.loads(written.read_text()) if written.is_file() else {}
    details = {}
    for label in labels:
        source = sources[label]
        kept = {k: v for k, v in known.get(label, {}).items() if k != "source"}
        about = kept if kept and known[label].get("source") == source else (
            describe_pretraining(source) if source else {})
        details[label] = {"source": source, **about}
        what = "none"
        if about:
            c = about["config"]
            what = (f"{about['steps']:,} steps, batch {c['batch_size']}, {c.get('views', 'shift')} views, "
                    f"mask {c['mask_ratio']:.2f}, rc {c['rc_weight']:g} / ct {c['ct_weight']:g}")
            if about.get("device", "cpu").startswith(("cuda", "gpu")):
                what += f", lr {c['lr']:g}, GPU ({about['seconds'] / 60:.0f} min, `recipes/pretrain_jax.py`)"
        elif source:
            what = source
        factors = {r.get("pretrained_lr_factor", 1.0) for r in rows if r["label"] == label}
        if factors != {1.0}:
            what += "; fine-tuned with the pretrained layers at " + "/".join(f"{f:g}" for f in sorted(factors)) + " x lr"
        frozen = {r.get("frozen_encoder_steps", 0) for r in rows if r["label"] == label}
        if frozen != {0}:
            what += "; encoder frozen for the first " + "/".join(f"{f:,}" for f in sorted(frozen)) + " steps"
        for n, steps in sorted({(r["n_labels"], r["steps"]) for r in rows if r["label"] == label}):
            cell = [r for r in rows if r["label"] == label and r["n_labels"] == n and r["steps"] == steps]
            dice = [r["final_dice"] for r in cell]
            early = [dict(map(tuple, r["curve"])).get(500) for r in cell]
            early = [e for e in early if e is not None]
            paired = [r["final_dice"] - scratch[(n, steps, r["seed"])]["final_dice"] for r in cell
                      if (n, steps, r["seed"]) in scratch and label != "scratch"]
            long = [r["final_dice"] - scratch[(n, STUDY_STEPS, r["seed"])]["final_dice"] for r in cell
                    if (n, STUDY_STEPS, r["seed"]) in scratch and (label, steps) != ("scratch", STUDY_STEPS)]
            long_text = (f"{np.mean(long):+.3f} (" + ", ".join(f"{d:+.3f}" for d in long) + ")") if long else "-"
            sd = f" +- {np.std(dice, ddof=1):.3f}" if len(dice) > 1 else ""
            paired_text = f"{np.mean(paired):+.3f} ({len(paired)})" if paired else "-"
            early_text = f"{np.mean(early):.3f}" if early else "-"
            seeds = ",".join(str(r["seed"]) for r in cell)
            lines.append(f"| {label} | {what} | {n} | {steps:,} | {seeds} | {np.mean(dice):.3f}{sd} | {paired_text} | {long_text} | {early_text} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    (OUT / "pretrainings.json").write_text(json.dumps(details, indent=2) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", type=parse_init, action="append", default=[],
                        help="LABEL=SOURCE (run folder, preset, .keras) or scratch; repeat")
    parser.add_argument("--n-labels", type=int, nargs="+", default=[3])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--pretrained-lr-factor", type=float, default=1.0,
                        help="fine-tuning learning-rate multiplier of the transferred layers (give such starts "
                             "their own label)")
    parser.add_argument("--frozen-encoder-epochs", type=int, default=0,
                        help="fine-tune with the encoder frozen for the first epochs of 100 steps (linear-probe-"
                             "then-fine-tune; give such starts their own label)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--split", default=str(ROOT / "recipes" / "xca_split.json"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < STEPS_PER_EPOCH or args.steps % STEPS_PER_EPOCH:
        parser.error(f"--steps {args.steps}: a multiple of the {STEPS_PER_EPOCH}-step epoch")
    for seed in args.seeds:
        for n in args.n_labels:
            for label, source in args.init:
                if probe_key(label, n, args.steps, seed) in finished():
                    continue
                factor = args.pretrained_lr_factor if source else 1.0
                frozen = args.frozen_encoder_epochs if source else 0
                row = run_probe(label, source, n, args.steps, seed, args.data, args.split, factor, frozen)
                print(f"{row['key']}: selection Dice {row['final_dice']:.4f} ({row['seconds']:.0f} s)", flush=True)
    if args.report:
        write_report(list(finished().values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
