"""How much of an annotator's work the model's pre-fill saves in `cm-unet annotate`.

For each labelled frame, the pixels a person must change to reach the
reference mask: from the pre-fill (the model's mask, as `cm-unet annotate`
opens an unsaved frame with it: `predict_files` with the model card's
threshold and predict's default precision) that is the pixels where the two
differ, split into vessel to add and to erase; from an empty mask it is
every vessel pixel of the reference. The share saved is 1 - (changes from
the pre-fill) / (changes from empty), over all pixels of a set and per frame.

Pixels changed is a proxy for effort: a brush stroke sets many pixels at
once, and erasing a false branch is quicker than tracing one. ARCADE's
references hold the main coronary segments only (side branches visible but
not annotated), so a side branch the model finds counts as pixels to erase
there, although an annotator drawing every vessel would keep it.

Writes `benchmarks/annotation_effort/results.json` and `results.md`.

    python benchmarks/annotation_effort.py [--model cmunet_small_general]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cm_unet_keras.annotate.prefill import PRECISION  # noqa: E402
from cm_unet_keras.data.layouts import index_images_masks, read_pair  # noqa: E402
from cm_unet_keras.inference.predict import load_model, predict_files  # noqa: E402

SETS = {  # name: (images, masks) under the shared data folder
    "ARCADE val (main segments)": ("arcade_vessels/val/images", "arcade_vessels/val/masks"),
    "XCAD test sample": ("xcad_sample/test/images", "xcad_sample/test/masks"),
}


def effort(records, model, scratch):
    """One row per frame: vessel pixels of the reference, pixels to add and to
    erase from the pre-fill."""
    settings = model.segmentation_settings
    predict_files(model, [record.image_path for record in records], scratch, threshold=settings.threshold,
                  clahe=settings.clahe, log=None, precision=PRECISION)
    rows = []
    for record in records:
        _, reference = read_pair(record)
        prefill = cv2.imread(str(Path(scratch) / f"{Path(record.image_path).stem}_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
        reference = reference.astype(bool)
        rows.append({"frame": record.name, "pixels": int(reference.size), "reference": int(reference.sum()),
                     "to_add": int((reference & ~prefill).sum()), "to_erase": int((prefill & ~reference).sum())})
    return rows


def summary(rows):
    reference = sum(row["reference"] for row in rows)
    changes = [row["to_add"] + row["to_erase"] for row in rows]
    per_frame = [1 - change / row["reference"] for change, row in zip(changes, rows)]
    return {
        "frames": len(rows),
        "from_empty": reference,
        "from_prefill": sum(changes),
        "to_add": sum(row["to_add"] for row in rows),
        "to_erase": sum(row["to_erase"] for row in rows),
        "share_saved": 1 - sum(changes) / reference,
        "reference_in_prefill": 1 - sum(row["to_add"] for row in rows) / reference,
        "share_saved_per_frame_median": float(np.median(per_frame)),
        "share_saved_per_frame_q1_q3": [float(np.percentile(per_frame, 25)), float(np.percentile(per_frame, 75))],
        "frames_prefill_needs_fewer_changes": int(sum(change < row["reference"] for change, row in zip(changes, rows))),
    }


def markdown(results):
    lines = [
        "# Annotation effort: pixels to change from the model's pre-fill against drawing from empty",
        "",
        f"Model `{results['model']}` (threshold {results['threshold']:g}, CLAHE "
        f"{'on' if results['clahe'] else 'off'}, precision {results['precision']}), the pre-fill of "
        "`cm-unet annotate`. Made by `python benchmarks/annotation_effort.py`; "
        f"{results['seconds']:.0f} s on {results['machine']}.",
        "",
        "| set | frames | from empty (vessel px) | from pre-fill: to add + to erase | share saved (all px) "
        "| per frame: median [Q1, Q3] | frames where the pre-fill needs fewer changes "
        "| reference px already in the pre-fill |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results["sets"].items():
        q1, q3 = result["share_saved_per_frame_q1_q3"]
        lines.append(
            f"| {name} | {result['frames']} | {result['from_empty']:,} | {result['from_prefill']:,} = "
            f"{result['to_add']:,} + {result['to_erase']:,} | {result['share_saved']:.1%} | "
            f"{result['share_saved_per_frame_median']:.1%} [{q1:.1%}, {q3:.1%}] | "
            f"{result['frames_prefill_needs_fewer_changes']} of {result['frames']} | "
            f"{result['reference_in_prefill']:.1%} |")
    lines += ["", "Share saved = 1 - (pixels to change from the pre-fill) / (vessel pixels of the reference). "
              "ARCADE's references leave side branches out, so its pixels to erase include side branches "
              "the model found correctly.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cmunet_small_general")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "annotation_effort"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    model = load_model(args.model)
    results = {"model": args.model, "threshold": model.segmentation_settings.threshold,
               "clahe": model.segmentation_settings.clahe, "precision": PRECISION, "sets": {}, "frames": {}}
    for name, (images, masks) in SETS.items():
        records = index_images_masks(Path(args.data) / images, Path(args.data) / masks)
        with tempfile.TemporaryDirectory() as scratch:
            rows = effort(records, model, scratch)
        results["sets"][name], results["frames"][name] = summary(rows), rows
        print(f"{name}: {len(rows)} frames, share saved {results['sets'][name]['share_saved']:.1%}", flush=True)
    results["seconds"] = time.perf_counter() - started
    results["machine"] = f"{platform.machine()} {os.cpu_count()} CPUs"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
