"""Each source's metrics at several mask thresholds, from one pass of the network (issue 14).

    python benchmarks/thresholds.py --model runs/general/both_aug_s4000/model.keras [--thresholds 0.3 0.4 0.5]

The vessel probability of every validation angiogram (CIMAT's 10 pairs,
ARCADE's 60, XCAD's 2: `experiments.data.SOURCES`) is computed once, then
thresholded at each value: Dice, sensitivity and specificity per source and
threshold, printed as a table and written to
`benchmarks/cross_source/thresholds_<model>.md`. A threshold chosen here is
chosen on the validation parts, and the card that records it says so.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "cross_source"


def sweep(model_name, thresholds, data_root):
    from cm_unet_keras.data.layouts import read_pair
    from cm_unet_keras.evaluation.metrics import dice, sensitivity, specificity
    from cm_unet_keras.experiments.data import SOURCES, source_records
    from cm_unet_keras.inference.predict import load_model, segment_angiogram
    from cm_unet_keras.models.segmentation import resolve_settings
    from cm_unet_keras.models.presets import resolve_model_path

    path = resolve_model_path(model_name)
    model = load_model(path)
    _, clahe, _ = resolve_settings(path)
    table = {}
    for source in SOURCES:
        scores = {t: {"dice": [], "sensitivity": [], "specificity": []} for t in thresholds}
        for record in source_records(source, data_root, ROOT / "recipes"):
            angiogram, vessel_mask = read_pair(record)
            probability = segment_angiogram(model, angiogram, clahe)
            for t in thresholds:
                mask = probability >= t
                scores[t]["dice"].append(dice(mask, vessel_mask))
                scores[t]["sensitivity"].append(sensitivity(mask, vessel_mask))
                scores[t]["specificity"].append(specificity(mask, vessel_mask))
        table[source] = {t: {k: float(np.mean(v)) for k, v in s.items()} for t, s in scores.items()}
    return table


def markdown(model_name, table, thresholds):
    lines = [f"# Metrics by mask threshold: `{model_name}`", "",
             "`python benchmarks/thresholds.py`; validation parts of each source, one forward pass per image.", "",
             "| threshold | CIMAT Dice | ARCADE sensitivity | ARCADE specificity | XCAD Dice | XCAD sensitivity |",
             "|---|---|---|---|---|---|"]
    for t in thresholds:
        c, a, x = table["cimat"][t], table["arcade"][t], table["xcad"][t]
        lines.append(f"| {t:.2f} | {c['dice']:.3f} | {a['sensitivity']:.3f} | {a['specificity']:.3f} | "
                     f"{x['dice']:.3f} | {x['sensitivity']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="preset, .keras file or run folder")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    table = sweep(args.model, args.thresholds, args.data)
    text = markdown(args.model, table, args.thresholds)
    OUT.mkdir(parents=True, exist_ok=True)
    model = Path(args.model)
    label = model.parent.name if model.suffix == ".keras" else model.name
    (OUT / f"thresholds_{label}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
