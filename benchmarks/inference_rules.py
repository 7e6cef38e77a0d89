"""Whole-image inference rules measured on the XCA validation pairs (issue 12).

For a model (default: the `cmunet_small_xca` preset), scores the 10
validation pairs of `recipes/xca_split.json` at native resolution under:

- padding: the old rule (zeros at the bottom/right) vs mirroring split
  between both sides (the package's rule now);
- flip test-time augmentation (4 flips) off / on, with its time ratio;
- clearing predictions outside the field of view: never, or outside the
  field of view eroded by 0, 2, 4 or 8 px.

It also counts how many false positives lie within 6 px of the field-of-view
rim or the image border, and (`--frangi`) scores the Frangi baseline, tuned on
the 30 training pairs, under its old rule (raw image, field of view eroded by
2 x its largest scale + 1) and under the U-Nets' rule. Prints a table and
writes
`benchmarks/inference/results.{json,md}`:

    python benchmarks/inference_rules.py [--model cmunet_small_xca] [--out benchmarks/inference]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tensorflow as tf  # noqa: E402
from scipy import ndimage  # noqa: E402

from cm_unet_keras.data.layouts import read_pair  # noqa: E402
from cm_unet_keras.data.normalize import FOV_MARGIN, field_of_view  # noqa: E402
from cm_unet_keras.data.pipeline import preprocess_angiogram  # noqa: E402
from cm_unet_keras.evaluation.metrics import dice  # noqa: E402
from cm_unet_keras.inference.predict import load_model  # noqa: E402
from cm_unet_keras.models.full_image import _forward, predict_normalized  # noqa: E402
from cm_unet_keras.experiments.data import study_data  # noqa: E402

ERODE = (None, 0, 2, 4, 8)


def zero_pad_bottom_right(model, image):
    """The package's rule before issue 12: zeros at the bottom and right."""
    multiple = 2**model.depth
    height, width = image.shape[:2]
    padded = np.pad(image, [(0, -height % multiple), (0, -width % multiple), (0, 0)])
    return _forward(model)(tf.constant(padded[None])).numpy()[0, :height, :width, 0]


def clear_outside(probability, fov, erode):
    if erode is None:
        return probability
    if erode:
        fov = ndimage.binary_erosion(fov, iterations=erode)
    return probability * fov


def near_rim(fov, width=6):
    """Pixels within `width` px of the field-of-view rim or the image border."""
    inside = np.pad(fov, 1, constant_values=False)
    core = ndimage.binary_erosion(inside, iterations=width)[1:-1, 1:-1]
    return ~core


def old_frangi_vesselness(angiogram, sigmas):
    """The study's Frangi rule before issue 12: raw image, its own wider erosion."""
    from skimage.filters import frangi

    fov = field_of_view(angiogram[..., None]).numpy()[..., 0]
    low, high = float(angiogram.min()), float(angiogram.max())
    response = frangi((angiogram - low) / max(high - low, 1e-6), sigmas=list(sigmas), black_ridges=True)
    response = response * ndimage.binary_erosion(fov, iterations=2 * max(sigmas) + 1)
    return response / max(float(response.max()), 1e-12)


def frangi_rules(data_root, split):
    """{rule: (tuned params, mean Dice, sd)} of Frangi on the validation pairs."""
    from cm_unet_keras.config import StudyConfig
    from cm_unet_keras.experiments import frangi

    train, validation = study_data(data_root, split)
    grid = StudyConfig  # the class attributes hold the grid's defaults
    rows = {}
    # The rule is swapped in the module whose tune_frangi and evaluate_frangi
    # call it (swapping a re-exported name elsewhere changes nothing).
    for rule, function in (("old rule", old_frangi_vesselness), ("U-Nets' rule", frangi.frangi_vesselness)):
        original = frangi.frangi_vesselness
        frangi.frangi_vesselness = function
        try:
            params = frangi.tune_frangi(train, grid.frangi_sigma_sets, grid.frangi_thresholds)
            report = frangi.evaluate_frangi(params, validation)
        finally:
            frangi.frangi_vesselness = original
        rows[rule] = (params, report["mean"]["dice"], report["std"]["dice"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cmunet_small_xca")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--split", default=str(ROOT / "recipes" / "xca_split.json"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "inference"))
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--frangi", action="store_true", help="also score the Frangi baseline under both rules")
    args = parser.parse_args(argv)

    model = load_model(args.model)
    _, validation = study_data(args.data, args.split)
    pairs = [read_pair(record) for record in validation]
    rows, seconds = {}, {}
    fp_near_rim = []
    for padding in ("zeros_bottom_right", "mirror_split"):
        for tta in (False, True):
            if padding == "zeros_bottom_right" and tta:
                continue
            probabilities, started = [], time.perf_counter()
            for angiogram, _ in pairs:
                image = preprocess_angiogram(angiogram)
                if padding == "zeros_bottom_right":
                    probabilities.append(zero_pad_bottom_right(model, image))
                else:
                    probabilities.append(predict_normalized(model, image, tta=tta).numpy()[..., 0])
            seconds[(padding, tta)] = time.perf_counter() - started
            for erode in ERODE:
                scores = []
                for probability, (angiogram, mask) in zip(probabilities, pairs):
                    fov = field_of_view(angiogram[..., None]).numpy()[..., 0]
                    prediction = clear_outside(probability, fov, erode) >= args.threshold
                    scores.append(dice(prediction, mask))
                    if erode is None and not tta:
                        false_positive = prediction & (mask == 0)
                        fp_near_rim.append((padding, int(false_positive.sum()), int((false_positive & near_rim(fov)).sum())))
                rows[(padding, tta, erode)] = (float(np.mean(scores)), float(np.std(scores)))

    # Time of one forward pass with and without TTA on a 512x512 angiogram.
    image = np.random.default_rng(0).normal(size=(512, 512, 1)).astype(np.float32)
    timing = {}
    for tta in (False, True):
        predict_normalized(model, image, tta=tta)
        started = time.perf_counter()
        for _ in range(5):
            predict_normalized(model, image, tta=tta).numpy()
        timing[tta] = (time.perf_counter() - started) / 5

    lines = [
        f"# Whole-image inference rules: `{args.model}` on the 10 validation pairs of recipes/xca_split.json",
        "",
        f"Threshold {args.threshold}; Dice mean +- sd over the 10 pairs. `clear` = predictions outside the field of "
        "view (eroded by that many px) set to 0; `none` = no clearing.",
        "",
        "| padding | flip TTA | " + " | ".join("clear " + ("none" if e is None else f"{e} px") for e in ERODE) + " |",
        "|---|---|" + "---|" * len(ERODE),
    ]
    for (padding, tta) in seconds:
        cells = [f"{rows[(padding, tta, e)][0]:.4f} +- {rows[(padding, tta, e)][1]:.4f}" for e in ERODE]
        lines.append(f"| {padding} | {'on' if tta else 'off'} | " + " | ".join(cells) + " |")
    for padding in ("zeros_bottom_right", "mirror_split"):
        total = sum(n for p, n, _ in fp_near_rim if p == padding)
        near = sum(k for p, _, k in fp_near_rim if p == padding)
        lines.append("")
        lines.append(f"- {padding}, no TTA, no clearing: {near} of {total} false-positive pixels "
                     f"({near / max(total, 1):.1%}) lie within 6 px of the field-of-view rim or the image border.")
    lines.append(f"- One 512x512 angiogram: {timing[False] * 1000:.0f} ms without TTA, {timing[True] * 1000:.0f} ms "
                 f"with it ({timing[True] / timing[False]:.2f}x), same process, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads.")
    from cm_unet_keras.evaluation.evaluate import evaluate_model

    package = {tta: evaluate_model(model, validation, threshold=args.threshold, tta=tta)["mean"]["dice"]
               for tta in (False, True)}
    lines.append(f"- The package's path (`cm-unet evaluate`: mirror padding, square {FOV_MARGIN}-px field-of-view "
                 f"margin that leaves the image border alone): Dice {package[False]:.4f}, with `--tta` "
                 f"{package[True]:.4f}.")
    frangi_rows = frangi_rules(args.data, args.split) if args.frangi else {}
    for rule, (params, mean, sd) in frangi_rows.items():
        lines.append(f"- Frangi, {rule}: sigmas {params['sigmas']}, threshold {params['threshold']} (tuned on the 30 "
                     f"training pairs): validation Dice {mean:.4f} +- {sd:.4f}")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({
        "model": args.model,
        "dice": [{"padding": p, "tta": t, "clear_erode_px": e, "mean": m, "sd": s} for (p, t, e), (m, s) in rows.items()],
        "false_positives": [{"padding": p, "total": n, "near_rim": k} for p, n, k in fp_near_rim],
        "seconds_512": {"no_tta": timing[False], "tta": timing[True]},
        "package_dice": {"no_tta": package[False], "tta": package[True]},
        "frangi": {rule: {"params": p, "mean": m, "sd": s} for rule, (p, m, s) in frangi_rows.items()},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
