"""ARCADE by its own protocol: train on the syntax train split, choose on its 200 validation pairs (issue 31).

    python recipes/import_arcade_syntax.py ARCADE/syntax/train data/arcade_syntax_train   # once
    python recipes/arcade_protocol.py --arcade-train data/arcade_syntax_train --base-filters 16 --steps 4000
    python recipes/arcade_protocol.py --arcade-train data/arcade_syntax_train --base-filters 32 --steps 4000
    python recipes/arcade_protocol.py --report
    # the runs of cmunet_small_general_v3 and, with --sources arcade, cmunet_small_arcade_v3 (about 0.8 h each)
    python recipes/arcade_protocol.py --arcade-train data/arcade_syntax_train --base-filters 16 --depth 4 \
        --patch-size 384 --batch-size 4 --steps 8000 --init cmunet_small_pretrained_v2 [--sources arcade]

ARCADE's syntax task (Popov et al., Scientific Data 2024; CC BY 4.0) trains
on its 1,000 train angiograms and is judged on its 200 validation ones
(the test split is the challenge's, never touched here). Published figures
on it are the Dice of the binary union of the 25 SYNTAX segments. So each
run here trains on:

- the 1,000 syntax-train pairs (`--arcade-train`, imported by
  `recipes/import_arcade_syntax.py`), main segments only: partially
  labelled, half the patches (`partial_share` 0.5, the shipped general
  preset's recipe), and
- CIMAT's 30 training pairs (`recipes/xca_split.json`), full trees,

and never on any of the 200 ARCADE validation pairs (`arcade_vessels/val`
in the shared data), which `recipes/arcade_split.json` splits 140/60 for
the presets: those presets trained on 140 of them, so they cannot be scored
by this protocol. The check is by pixel content, not file name. Every run
is scored on all 200 validation pairs (Dice of the binary union, the
published metric, with clDice and centerline recall beside it), on CIMAT's
10 validation pairs and on the 2 XCAD frames. Validation chooses between
runs (width, budget), never an epoch: the last epoch is kept.

`--sources arcade` trains on ARCADE's syntax-train pairs alone, labelled
in full by their own convention (the catheter and unlabelled side
branches are background): what published ARCADE results do. CIMAT's
frames are still scored, in a convention the run never saw.

`--conventions` gives the U-Net one output per mask convention
(`data.conventions`: syntax, tree, tree_catheter) instead of one sigmoid
asked to follow both sources: ARCADE's pairs teach the `syntax` output
fully (side branches are background there) and the wider outputs only
their labelled vessels; CIMAT's teach `tree_catheter` fully and the
narrower outputs only their background. ARCADE is then scored on the
`syntax` output, CIMAT on `tree_catheter`, XCAD on `tree`.

The start is random by default (`--init` takes a preset or a pretraining
run): the shipped `cmunet_small_pretrained` was pretrained on a pool that
held ARCADE's stenosis test images, which no protocol run may build on. A
pretraining run is taken only if its `images.json` (written by `cm-unet
pretrain`) lists no file of a `test` folder; the row keeps the pool's size.
`recipes/pretrain_arcade.yaml` pretrains on every unlabelled angiogram the
rules allow.

Runs go to `runs/arcade_protocol/<name>` (resumable); one JSON line per
scored run to `benchmarks/arcade_protocol/results.jsonl`, and
`results.md` beside it.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "arcade_protocol"
RUNS = ROOT / "runs" / "arcade_protocol"
SCORED = ("arcade_val", "cimat", "xcad")
# With --conventions: the convention each part is labelled in (and scored on),
# and the one each training source's masks follow.
SCORED_CONVENTIONS = {"arcade_val": "syntax", "cimat": "tree_catheter", "xcad": "tree"}
CONVENTIONS = ("syntax", "tree", "tree_catheter")
HEADLINE_KEYS = ("dice", "cldice", "centerline_recall", "sensitivity", "specificity")


# The shipped presets' network and patches; a run names what it changes.
DEFAULT_DEPTH, DEFAULT_PATCH, DEFAULT_BATCH = 4, 128, 8


def run_name(base_filters, steps, init, seed, conventions=False, depth=DEFAULT_DEPTH, patch_size=DEFAULT_PATCH,
             batch_size=DEFAULT_BATCH, arcade_only=False):
    start = "scratch" if init is None else Path(init).name
    shape = "" if depth == DEFAULT_DEPTH else f"_d{depth}"
    patches = "" if (patch_size, batch_size) == (DEFAULT_PATCH, DEFAULT_BATCH) else f"_p{patch_size}b{batch_size}"
    return (f"w{base_filters}{shape}_s{steps}{patches}_{start}" + ("_conventions" if conventions else "")
            + ("_arcadeonly" if arcade_only else "") + ("" if seed == 0 else f"_seed{seed}"))


def name_of(args):
    return run_name(args.base_filters, args.steps, args.init, args.seed, args.conventions, args.depth,
                    args.patch_size, args.batch_size, args.sources == "arcade")


def scored_records(name, data_root):
    """The labelled records a run is scored on: ARCADE's 200 validation pairs, CIMAT's 10, XCAD's 2."""
    from cm_unet_keras.data.layouts import index_images_masks
    from cm_unet_keras.experiments.data import cimat_parts, xcad_pairs

    if name == "arcade_val":
        folder = Path(data_root) / "arcade_vessels" / "val"
        return index_images_masks(folder / "images", folder / "masks")
    if name == "cimat":
        return cimat_parts(data_root, ROOT / "recipes")[1]
    if name == "xcad":
        return xcad_pairs(data_root)
    raise ValueError(f"unknown scored part {name!r}; parts: {', '.join(SCORED)}")


def pixel_digests(records):
    """{sha256 of the decoded grey pixels: image path} of the records' angiograms."""
    from cm_unet_keras.data.readers import read_angiogram

    digests = {}
    for record in records:
        pixels = np.ascontiguousarray(read_angiogram(record.image_path))
        digests[hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()] = str(record.image_path)
    return digests


def check_disjoint(training, scored):
    """Refuse a training set that holds any scored angiogram (same pixels, whatever the file name)."""
    from cm_unet_keras.core.errors import InvalidInputError

    shared = pixel_digests(training).keys() & (scored_digests := pixel_digests(scored)).keys()
    if shared:
        first = scored_digests[sorted(shared)[0]]
        raise InvalidInputError(first, f"is a scored ARCADE validation angiogram, and {len(shared)} of them are "
                                "in the training set: the protocol trains on the syntax train split only")


def check_pretraining_pool(init):
    """The number of angiograms a pretraining-run start (`--init FOLDER`)
    drew from, after refusing one whose pool held a file of a `test` folder
    (ARCADE's stenosis test split, XCAD's labelled frames) or that does not
    say what it drew from (`images.json`, written by `cm-unet pretrain`).
    None for a random start or a preset (its card states its pool)."""
    from cm_unet_keras.core.errors import InvalidInputError
    from cm_unet_keras.training.pretrain import POOL_RECORD

    if init is None or not Path(init).is_dir():
        return None
    record = Path(init) / POOL_RECORD
    if not record.is_file():
        raise InvalidInputError(record, "not found: the pretraining run does not say which angiograms it drew "
                                "from, so it cannot show that no test split was among them")
    images = json.loads(record.read_text())["images"]
    tested = [path for path in images if "test" in (part.lower() for part in Path(path.split("#")[0]).parts)]
    if tested:
        raise InvalidInputError(tested[0], f"is in a test folder, as are {len(tested)} of the {len(images)} "
                                "angiograms the pretraining run drew from: no test split enters a pretraining pool")
    return len(images)


def training_parts(data_root, arcade_train, conventions=False):
    """(CIMAT's 30 training pairs, the imported ARCADE syntax-train pairs);
    with `conventions`, each record states its mask's convention."""
    from cm_unet_keras.data.layouts import index_images_masks
    from cm_unet_keras.experiments.data import cimat_parts

    arcade_train = Path(arcade_train)
    cimat = cimat_parts(data_root, ROOT / "recipes")[0]
    arcade = index_images_masks(arcade_train / "images", arcade_train / "masks")
    if not conventions:
        return cimat, arcade
    return ([dataclasses.replace(r, convention="tree_catheter") for r in cimat],
            [dataclasses.replace(r, convention="syntax") for r in arcade])


def scored_convention(part, conventions):
    """The output a part is scored on: its own convention's, or the only one."""
    return SCORED_CONVENTIONS[part] if conventions else None


def run_seconds(run_dir, fallback):
    """Training time of a run over every sitting: its epochs' train and
    validation seconds in `history.csv` (a resumed run's process saw only its
    own part); `fallback` when there is no history."""
    import csv

    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return fallback
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return fallback
    return sum(float(row.get("train_seconds") or 0) + float(row.get("val_seconds") or 0) for row in rows)


def train_and_score(args, log):
    """Fine-tune one run (resumable) and score it on every scored part: the results row."""
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.evaluation.evaluate import evaluate_model
    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.models.segmentation import resolve_settings
    from cm_unet_keras.training.finetune import finetune

    started = time.perf_counter()
    pool = check_pretraining_pool(args.init)
    cimat, arcade = training_parts(args.data, args.arcade_train, args.conventions)
    check_disjoint(arcade + cimat, scored_records("arcade_val", args.data))
    name = name_of(args)
    arcade_only = args.sources == "arcade"
    counts = {"n_arcade_train": len(arcade), "n_cimat_train": 0 if arcade_only else len(cimat)}
    # ARCADE's pairs alone are labelled in full by its own convention (background is background);
    # with CIMAT's, they are the partially labelled half of each step.
    labelled, partial = (arcade, None) if arcade_only else (cimat, arcade)
    config = FinetuneConfig(base_filters=args.base_filters, depth=args.depth, patch_size=args.patch_size,
                            batch_size=args.batch_size, epochs=args.steps // 100, steps_per_epoch=100,
                            seed=args.seed, init=args.init, select="last", val_fraction=0.0,
                            partial_share=None if arcade_only else 0.5,
                            conventions=CONVENTIONS if args.conventions else None)
    # CIMAT's 10 validation pairs give the curve only (small and quick); the last epoch is kept.
    val = scored_records("cimat", args.data)
    if args.conventions:
        val = [dataclasses.replace(r, convention="tree_catheter") for r in val]
    fit = finetune(config, labelled, Path(args.runs) / name, val_records=val,
                   partial_records=partial, verbose=0, log=log)
    trained = run_seconds(Path(args.runs) / name, time.perf_counter() - started)
    model = load_model(fit["model_path"])
    threshold, clahe, _ = resolve_settings(fit["model_path"])
    reports = {part: evaluate_model(model, scored_records(part, args.data), threshold=threshold, clahe=clahe,
                                    convention=scored_convention(part, args.conventions))
               for part in SCORED}
    from cm_unet_keras.models.precision import resolve_precision

    return {"run": name, "sources": args.sources, "base_filters": args.base_filters, "depth": args.depth,
            "patch_size": args.patch_size,
            "batch_size": args.batch_size, "steps": args.steps, "init": args.init,
            "pretraining_pool": pool,
            "conventions": list(CONVENTIONS) if args.conventions else None,
            "seed": args.seed, "parameters": int(model.count_params()), **counts,
            "train_seconds": round(trained, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, precision {resolve_precision('auto')}",
            "load_average_at_end": round(os.getloadavg()[0], 1), "note": args.note,
            "mean": {part: report["mean"] for part, report in reports.items()},
            "std": {part: report["std"] for part, report in reports.items()},
            # 6 decimals a frame: 200 frames a run, and no comparison reads finer differences
            "per_image": {part: [{k: round(v, 6) if isinstance(v, float) else v for k, v in image.items()}
                                 for image in report["per_image"]] for part, report in reports.items()}}


def finished(out=OUT):
    from cm_unet_keras.experiments.store import read_jsonl

    return read_jsonl(Path(out) / "results.jsonl", lambda row: row["run"])


def write_report(rows, out=OUT):
    lines = [
        "# ARCADE by its own protocol (issue 31)",
        "",
        "Written by `python recipes/arcade_protocol.py --report` from `results.jsonl`. Each run trains on ARCADE's",
        "1,000 syntax-train pairs (main segments, partially labelled, half the patches) and CIMAT's 30 training",
        "pairs, never on ARCADE's 200 validation pairs (checked by pixel content), AdamW 2e-3, Dice + BCE, last",
        "epoch kept; then it is scored on all 200 ARCADE validation pairs (Dice of the binary union of the 25 SYNTAX",
        "segments: the published metric; side branches are unlabelled, so they count against Dice), on CIMAT's 10",
        "validation pairs and on the 2 XCAD frames. Mean +- sd over images. Outputs: 1 (one sigmoid for both",
        "sources' masks) or one per convention (`--conventions`: ARCADE scored on `syntax`, CIMAT on",
        "`tree_catheter`, XCAD on `tree`). Patches: batch x side.",
        "",
        "| run | width | depth | parameters | outputs | patches | steps | start | ARCADE Dice | ARCADE clDice | "
        "ARCADE centerline recall | ARCADE sensitivity | ARCADE specificity | CIMAT Dice | XCAD Dice | training h | "
        "machine | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m, s = row["mean"], row["std"]
        arcade = " | ".join(f"{m['arcade_val'][key]:.3f} +- {s['arcade_val'][key]:.3f}" for key in HEADLINE_KEYS)
        lines.append(
            f"| {row['run']} | {row['base_filters']} | {row.get('depth', DEFAULT_DEPTH)} | {row['parameters']:,} | "
            f"{' / '.join(row.get('conventions') or ['1'])} | {row.get('batch_size', DEFAULT_BATCH)} x "
            f"{row.get('patch_size', DEFAULT_PATCH)} px | {row['steps']} | "
            f"{Path(row['init']).name if row['init'] else 'random'} | {arcade} | "
            f"{m['cimat']['dice']:.3f} +- {s['cimat']['dice']:.3f} | "
            f"{m['xcad']['dice']:.3f} | {row['train_seconds'] / 3600:.2f} | {row['machine']} | {row.get('note', '')} |")
    lines += ["", "Published on the same validation split (binary union Dice): 0.767 (MedSAM2, fine-tuned). "
              "Issue 31's target: >= 0.80.", ""]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arcade-train",
                        help="ARCADE syntax train split as imported by recipes/import_arcade_syntax.py")
    parser.add_argument("--base-filters", type=int, default=16, help="U-Net width")
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help="U-Net levels")
    parser.add_argument("--patch-size", type=int, default=DEFAULT_PATCH, help="side of the training patches")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="patches per step")
    parser.add_argument("--steps", type=int, default=4000, help="fine-tuning steps (a multiple of 100)")
    parser.add_argument("--init", default=None, help="start: a preset or pretraining run (default: random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", choices=("both", "arcade"), default="both",
                        help="train on ARCADE's syntax-train pairs and CIMAT's 30 (both), or ARCADE's alone")
    parser.add_argument("--conventions", action="store_true",
                        help="one output per mask convention; ARCADE scored on 'syntax', CIMAT on 'tree_catheter', "
                             "XCAD on 'tree'")
    parser.add_argument("--note", default="", help="what else the machine was doing (kept in the row)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--report", action="store_true", help="write results.md from results.jsonl")
    parser.add_argument("--out", default=str(OUT), help="results folder (results.jsonl, results.md)")
    parser.add_argument("--runs", default=str(RUNS), help="run folders (resumable)")
    args = parser.parse_args(argv)
    if args.conventions and args.sources == "arcade":
        parser.error("--conventions needs both sources: ARCADE alone teaches one convention")
    if args.arcade_train:
        name = name_of(args)
        if name not in finished(args.out):
            from cm_unet_keras.experiments.store import append_jsonl

            row = train_and_score(args, log=lambda line: print(f"[{name}] {line}", flush=True))
            Path(args.out).mkdir(parents=True, exist_ok=True)
            append_jsonl(Path(args.out) / "results.jsonl", row)
            print(f"{name}: ARCADE Dice {row['mean']['arcade_val']['dice']:.3f}, CIMAT Dice "
                  f"{row['mean']['cimat']['dice']:.3f}, XCAD Dice {row['mean']['xcad']['dice']:.3f}", flush=True)
    elif not args.report:
        parser.error("give --arcade-train to train and score a run, or --report")
    if args.report:
        write_report(list(finished(args.out).values()), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
