"""Failure modes of a model, looked at on validation frames (issue 31, item 7).

    python benchmarks/failure_modes.py --model runs/arcade_protocol/<run>/model.keras --label <run> \
        --out runs/failure_modes/<run>        # writes the error maps to look at
    # look at each map; record what you see in benchmarks/failure_modes/<run>.json
    python benchmarks/failure_modes.py --report --label <run>

No metric finds these errors: a person looks at each frame's error map and
notes which of `TAGS` it shows. This script makes the maps and turns the
notes into shares of frames, so the card's line on what a model still gets
wrong counts frames instead of recalling a few.

The frames: a fixed draw of `ARCADE_FRAMES` of ARCADE's 200 syntax
validation pairs (seed 0, the same for every model), CIMAT's 10 validation
pairs and the 2 XCAD frames. Each map (`<part>__<name>.png`, with its Dice
in `frames.json`) puts the angiogram beside the model's mask against the
reference: green where both mark vessel, red where only the model does,
blue where only the reference does. The maps hold the data's pixels and
stay out of the repository (`--out` is a run folder).

The notes (`benchmarks/failure_modes/<label>.json`): `{"model": ...,
"looked_at": date, "looked_by": who (default `LOOKED_BY`), "frames":
{"<part>/<name>": [tags...]}}`; every frame of
the draw must be there (an empty list: none of the tags). `--report` writes
`<label>.md` beside them: per part, the share of frames with each tag, and
the card's line (`<label>_card.txt`, for `build_presets.py --failure-modes`).
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "failure_modes"
ARCADE_FRAMES = 24
PARTS = ("arcade_val", "cimat", "xcad")
PART_NAMES = {"arcade_val": "ARCADE validation", "cimat": "CIMAT validation", "xcad": "XCAD"}
# What a person looks for on each map; the words the card uses.
TAGS = {
    "proximal_missed": "part of a wide proximal segment (left main, proximal LAD or RCA) missed",
    "thin_distal_missed": "thin distal ends or small branches of the reference missed",
    "break_over_shadow": "a vessel broken where it crosses the diaphragm's or the spine's shadow",
    "catheter_marked": "the guiding catheter marked where the convention leaves it out (ARCADE, XCAD)",
    "catheter_missed": "the guiding catheter missed where the convention marks it (CIMAT)",
    "bone_edges_marked": "vertebral endplates, rib or diaphragm edges marked as vessel",
    "border_marked": "the collimator or the frame's border marked as vessel",
    "device_marked": "a wire, an electrode or another device marked as vessel",
    "unlabelled_branch_marked": "a visible side branch that ARCADE's convention leaves unlabelled marked (its "
                                "convention, not an anatomical error)",
}
LOOKED_BY = "a person who looked at the error map of each frame"
RED, GREEN, BLUE = (0, 0, 255), (0, 200, 0), (255, 80, 0)  # BGR


def drawn_frames(data_root):
    """{part: records} of the frames looked at: the fixed ARCADE draw, CIMAT's 10, XCAD's 2."""
    import arcade_protocol

    records = {part: arcade_protocol.scored_records(part, data_root) for part in PARTS}
    order = np.random.default_rng(0).permutation(len(records["arcade_val"]))[:ARCADE_FRAMES]
    records["arcade_val"] = [records["arcade_val"][i] for i in sorted(order)]
    return records


def error_map(angiogram, predicted, reference):
    """BGR image: the angiogram, and beside it the mask against the reference
    (green both, red the model only, blue the reference only)."""
    import cv2

    from cm_unet_keras.inference.predict import to_uint8

    grey = cv2.cvtColor(to_uint8(angiogram), cv2.COLOR_GRAY2BGR)
    coloured = grey.copy()
    coloured[predicted & reference] = GREEN
    coloured[predicted & ~reference] = RED
    coloured[~predicted & reference] = BLUE
    blended = cv2.addWeighted(coloured, 0.6, grey, 0.4, 0.0)
    return np.concatenate([grey, np.full((grey.shape[0], 4, 3), 255, np.uint8), blended], axis=1)


def write_maps(model_path, data_root, out, log=print):
    """Segment the drawn frames with the model, write their error maps and `frames.json`."""
    import cv2

    from cm_unet_keras.data.layouts import read_pair
    from cm_unet_keras.evaluation.metrics import segmentation_metrics
    from cm_unet_keras.inference.predict import load_model, segment

    model = load_model(model_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    listing = []
    for part, records in drawn_frames(data_root).items():
        for record in records:
            angiogram, reference = read_pair(record)
            result = segment(model, angiogram[None].astype(np.float32))
            predicted = np.asarray(result.vessel_mask[0]) > 0
            reference = np.asarray(reference) > 0
            dice = float(segmentation_metrics(predicted, reference)["dice"])
            name = f"{part}__{Path(record.image_path).stem}.png"
            cv2.imwrite(str(out / name), error_map(angiogram, predicted, reference))
            listing.append({"frame": f"{part}/{Path(record.image_path).name}", "map": name, "dice": round(dice, 4)})
    (out / "frames.json").write_text(json.dumps({"model": str(model_path), "frames": listing}, indent=1) + "\n")
    log(f"wrote {len(listing)} error maps to {out}")
    return listing


def frame_keys(data_root):
    return [f"{part}/{Path(r.image_path).name}" for part, records in drawn_frames(data_root).items()
            for r in records]


def read_notes(path, expected):
    """The notes of `path`, checked: every drawn frame, known tags only."""
    from cm_unet_keras.core.errors import InvalidInputError

    notes = json.loads(Path(path).read_text())
    frames = notes.get("frames", {})
    missing = [key for key in expected if key not in frames]
    if missing:
        raise InvalidInputError(path, f"{len(missing)} drawn frames have no note, first {missing[0]}: look at "
                                "every frame of the draw")
    extra = sorted(set(frames) - set(expected))
    if extra:
        raise InvalidInputError(path, f"{extra[0]} is not a frame of the draw")
    for key, tags in frames.items():
        unknown = [tag for tag in tags if tag not in TAGS]
        if unknown:
            raise InvalidInputError(path, f"{key}: unknown tag {unknown[0]!r}; tags: {', '.join(TAGS)}")
    return notes


def shares(notes):
    """{part: {"frames": n, tag: count}}."""
    table = {}
    for key, tags in notes["frames"].items():
        part = key.split("/")[0]
        row = table.setdefault(part, {"frames": 0})
        row["frames"] += 1
        for tag in set(tags):
            row[tag] = row.get(tag, 0) + 1
    return table


def card_line(table, label):
    """The card's sentence: the tags seen, each with its count per part, most frequent first."""
    seen = []
    for tag, words in TAGS.items():
        counts = [(part, table[part].get(tag, 0), table[part]["frames"]) for part in PARTS if part in table]
        total = sum(count for _, count, _ in counts)
        if total:
            where = ", ".join(f"{count} of {frames} {PART_NAMES[part]}" for part, count, frames in counts if count)
            seen.append((total, f"{words} ({where})"))
    looked = ", ".join(f"{table[part]['frames']} {PART_NAMES[part]}" for part in PARTS if part in table)
    if not seen:
        return f"Looked at on {looked} frames (benchmarks/failure_modes/{label}.md): none of the listed errors seen."
    return (f"What it still gets wrong, looked at on {looked} frames (benchmarks/failure_modes/{label}.md): "
            + "; ".join(text for _, text in sorted(seen, key=lambda pair: -pair[0])) + ".")


def write_report(label, data_root, out=OUT):
    notes = read_notes(Path(out) / f"{label}.json", frame_keys(data_root))
    table = shares(notes)
    parts = [part for part in PARTS if part in table]
    lines = [f"# Failure modes of {label}, looked at (issue 31, item 7)", "",
             f"Written by `python benchmarks/failure_modes.py --report --label {label}` from `{label}.json`: the "
             f"notes of {notes.get('looked_by', LOOKED_BY)} ({notes.get('model', '?')}; looked at "
             f"{notes.get('looked_at', '?')}). Frames: a fixed draw of {ARCADE_FRAMES} of ARCADE's 200 syntax "
             "validation pairs (seed 0), CIMAT's 10 validation pairs, the 2 XCAD frames. Share of frames where "
             "each error is seen:", "",
             "| error | " + " | ".join(f"{PART_NAMES[p]} ({table[p]['frames']})" for p in parts) + " |",
             "|---|" + "---|" * len(parts)]
    for tag, words in TAGS.items():
        lines.append(f"| {words} | " + " | ".join(
            f"{table[p].get(tag, 0)} ({table[p].get(tag, 0) / table[p]['frames']:.0%})" for p in parts) + " |")
    if notes.get("remarks"):
        lines += ["", notes["remarks"]]
    line = card_line(table, label)
    lines += ["", "The card's line:", "", f"> {line}", ""]
    (Path(out) / f"{label}.md").write_text("\n".join(lines))
    (Path(out) / f"{label}_card.txt").write_text(line + "\n")
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model file or preset whose error maps to write")
    parser.add_argument("--label", required=True, help="the notes' name: benchmarks/failure_modes/<label>.json")
    parser.add_argument("--out", help="folder for the error maps (a run folder, not the repository)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--report", action="store_true", help="write <label>.md and <label>_card.txt from the notes")
    parser.add_argument("--notes", default=str(OUT), help="the notes' folder")
    args = parser.parse_args(argv)
    if args.model:
        write_maps(args.model, args.data, args.out or str(ROOT / "runs" / "failure_modes" / args.label))
    elif not args.report:
        parser.error("give --model to write error maps, or --report")
    if args.report:
        print(write_report(args.label, args.data, args.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
