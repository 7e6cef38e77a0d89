"""Score models on every labelled source in one command (issue 14).

    python benchmarks/cross_source.py                                   # the shipped presets
    python benchmarks/cross_source.py --model cmunet_small_xca --model runs/general/model.keras

Sources (validation parts only; their training parts are for training):

- `cimat`: the 10 validation pairs of `recipes/xca_split.json`
  (`xca_vessels/train`, 300x300, full vessel trees).
- `arcade`: the 60 validation pairs of `recipes/arcade_split.json`
  (`arcade_vessels/val`, 512x512). Their masks hold the main coronary
  segments only (the union of the SYNTAX segments); side branches are
  visible but unlabelled, so a correct side branch counts as a false
  positive: Dice and specificity are not comparable with full-tree sources.
  The headline is sensitivity (recall of the annotated segments), read with
  specificity, and centerline recall beside it (the share of the segments'
  skeleton the mask covers: the polygons are drawn wider than the lumen, so
  pixel sensitivity undercounts a correct thin mask).
- `xcad`: the 2 pairs of `xcad_sample/test` (512x512, full trees).

Each model segments whole angiograms with its own settings (threshold and
CLAHE from its card or run folder, `models.segmentation.resolve_settings`),
mirror padding and the field-of-view rule. The table gives mean +- sd over
the images of a source. Writes `benchmarks/cross_source/results.md` and
`results.json` (per-image metrics too).
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "cross_source"
RECIPES = ROOT / "recipes"  # the split files
HEADLINE = {"cimat": "dice", "arcade": "sensitivity", "xcad": "dice"}
DEFAULT_MODELS = ("cmunet_small_xca", "cmunet_small_general")


def results_markdown(results, command, data_root):
    from cm_unet_keras.training.runtime import resolve_precision

    lines = [
        "# Cross-source evaluation (issue 14)",
        "",
        f"Written by `{command}`. Machine: {platform.machine()}, {os.cpu_count()} cores "
        f"(precision auto = {resolve_precision('auto')}); models run in float32.",
        "",
        "Validation parts only: CIMAT = the 10 validation pairs of `recipes/xca_split.json` (300x300, full",
        "trees); ARCADE = the 60 validation pairs of `recipes/arcade_split.json` (512x512, main coronary",
        "segments only); XCAD = the 2 pairs of `xcad_sample/test` (512x512, full trees). Mean +- sd over the",
        "images of each source; each model at its own threshold and CLAHE setting.",
        "",
        "ARCADE's masks annotate the main segments, not the side branches that are visible beside them: a",
        "correctly segmented side branch counts as a false positive, so Dice and specificity there are not",
        "comparable with the full-tree sources. Its headline is **sensitivity** (recall of the annotated",
        "segments), read together with specificity, and **centerline recall** beside it (the share of the",
        "segments' skeleton that the mask covers: the polygons are drawn wider than the lumen, so pixel",
        "sensitivity undercounts a correct thin mask).",
        "",
        "| model | CIMAT Dice | CIMAT clDice | ARCADE sensitivity | ARCADE centerline recall | ARCADE specificity | "
        "ARCADE Dice | XCAD Dice | XCAD clDice | XCAD sensitivity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(reports, source, key):
        report = reports.get(source)
        if report is None:
            return "-"
        values = [row[key] for row in report["per_image"] if row.get(key) is not None and np.isfinite(row[key])]
        if not values:
            return "-"
        return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    for name, result in results.items():
        r = result["reports"]
        lines.append(
            f"| {name} | {cell(r, 'cimat', 'dice')} | {cell(r, 'cimat', 'cldice')} | "
            f"{cell(r, 'arcade', 'sensitivity')} | {cell(r, 'arcade', 'centerline_recall')} | "
            f"{cell(r, 'arcade', 'specificity')} | {cell(r, 'arcade', 'dice')} | "
            f"{cell(r, 'xcad', 'dice')} | {cell(r, 'xcad', 'cldice')} | {cell(r, 'xcad', 'sensitivity')} |"
        )
    lines += ["", "## Every metric", "", "| model | source | images | " + " | ".join(_keys()) + " |",
              "|---|---|---|" + "---|" * len(_keys())]
    for name, result in results.items():
        for source, report in result["reports"].items():
            lines.append(f"| {name} | {source} | {report['n_images']} | "
                         + " | ".join(cell(result["reports"], source, key) for key in _keys()) + " |")
    lines += ["", "Settings: " + "; ".join(
        f"{name}: threshold {result['settings']['threshold']:g}, CLAHE {'on' if result['settings']['clahe'] else 'off'}"
        for name, result in results.items()) + "."]
    return "\n".join(lines) + "\n"


def _keys():
    from cm_unet_keras.evaluation.metrics import METRIC_KEYS

    return METRIC_KEYS


def main(argv=None):
    from cm_unet_keras.experiments.data import SOURCES
    from cm_unet_keras.experiments.runs import score_sources

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="preset, .keras file or run folder; repeat (default: presets)")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    parser.add_argument("--out", default=str(OUT), help="folder for results.md and results.json")
    args = parser.parse_args(argv)
    models = args.model or list(DEFAULT_MODELS)
    command = "python benchmarks/cross_source.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {name: score_sources(name, args.sources, args.data, RECIPES, args.tta) for name in models}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(results_markdown(results, command.strip(), args.data))
    safe = {name: {"settings": r["settings"], "reports": r["reports"]} for name, r in results.items()}
    from cm_unet_keras.core.files import json_safe

    (out / "results.json").write_text(json.dumps(json_safe(safe), indent=2, default=float) + "\n")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
