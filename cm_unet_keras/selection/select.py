"""`cm-unet select`: propose the frames of unlabeled angiograms to annotate.

Scan the frames once (`scan.scan_frames`), keep the cine frames near peak
opacification, rank the candidates by a strategy, and write the chosen
frames as PNGs, `selection.csv`, `selection.json` (the settings and the
precision the frames were scanned in) and a contact sheet.
"""

import csv
import inspect
import math
from pathlib import Path

import cv2
import numpy as np

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write_json
from cm_unet_keras.data.layouts import index_unlabeled
from cm_unet_keras.data.readers import read_angiogram
from cm_unet_keras.inference.predict import to_uint8
from cm_unet_keras.models.precision import resolve_precision
from cm_unet_keras.models.segmentation import inference_model
from cm_unet_keras.selection import strategies
from cm_unet_keras.selection.scan import WORKING_SIZE, scan_frames
from cm_unet_keras.version import __version__

# The strategy of `cm-unet select` when none is given: typical, the only one
# that met issue 26's target at k = 3 on CIMAT (0.720 against 20 random
# draws' mean 0.635 and 75th percentile 0.674; benchmarks/selection/
# results.md). At k = 10 on ARCADE it meets the target (>= the draws' mean)
# only at the margin: centerline recall +0.011 paired over 3 training seeds,
# while coverage (+0.023) and uncertainty (+0.030) gain more, within the
# draws' own spread between seeds (0.029; benchmarks/selection/arcade/
# results.md, docs/cine_and_selection.md), so the k = 3 winner stays.
DEFAULT_STRATEGY = "typical"
# The scan's precision when none is given: float32 everywhere, so that one
# folder gives the same frames on every machine. "auto" would scan in
# bfloat16 on AVX512_BF16 CPUs and float32 on others, whose features differ
# by bfloat16's rounding (1 part in 256), enough to reorder close frames.
DEFAULT_PRECISION = "float32"
CONTACT_TILE = 256


def choose_frames(model, records, count, strategy=DEFAULT_STRATEGY, seed=0, peak_filter=True, coverage=False,
                  min_gap=strategies.MIN_FRAME_GAP, size=WORKING_SIZE, precision=DEFAULT_PRECISION, skipped=None,
                  progress=None):
    """Choose `count` of `records`' frames to annotate.

    Args:
        model: a `CMUNet` from `load_model` (its `segmentation_settings` say
            whether it is pretrained only, and its mask threshold).
        records: `AngiogramRecord`s (`index_unlabeled`).
        strategy: one of `strategies.STRATEGIES`.
        seed: the random draw's seed (and k-means').
        peak_filter: propose no cine frame before the contrast arrives or
            after it washes out (`strategies.peak_candidates`).
        coverage: for "typical", k-center greedy instead of TypiClust.
        min_gap: frames of one run fewer than this apart are not both chosen.
        precision: what the scan computes in ("float32", "auto",
            "mixed_bfloat16", "mixed_float16"; `inference_model`).

    Returns:
        A list of `{"record", "score", "why"}`, in the order chosen (fewer
        than `count` when the gap rule leaves too few frames).

    Raises:
        ValueError: an unknown strategy, `count` < 1, more frames asked than
            the candidates, or "uncertainty" with a pretrained-only model.
    """
    if strategy not in strategies.STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(strategies.STRATEGIES)}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    settings = model.segmentation_settings
    pretrained_only = bool(settings and settings.pretrained_only)
    if strategy == "uncertainty" and pretrained_only:
        raise InvalidInputError(settings.source or model.name,
                                "the uncertainty strategy needs a fine-tuned model (flip disagreement of its masks); "
                                "this one is pretrained only: use --strategy typical, peak or random")
    has_runs = any(record.frame is not None for record in records)
    scan = scan_frames(
        inference_model(model, precision), records, features=strategy == "typical",
        filling=strategy == "peak" or (peak_filter and has_runs), disagreement=strategy == "uncertainty",
        threshold=settings.threshold if settings else 0.5, pretrained_only=pretrained_only, size=size,
        skipped=skipped, progress=progress,
    )
    keep = strategies.peak_candidates(scan.records, scan.filling) if scan.filling is not None and peak_filter \
        else np.ones(len(scan.records), bool)
    candidates = np.flatnonzero(keep)
    if count > len(candidates):
        raise ValueError(f"asked for {count} frames but only {len(candidates)} are candidates "
                         f"({len(scan.records)} frames read{', after the peak filter' if peak_filter else ''})")
    rows, scores, reasons = _ranked(strategy, scan, candidates, count, seed, coverage, min_gap)
    if strategy != "peak" and scan.filling is not None and peak_filter:
        reasons = [f"{why}; near peak opacification" if scan.records[row].frame is not None else why
                   for row, why in zip(rows, reasons)]
    return [{"record": scan.records[row], "score": score, "why": why} for row, score, why in zip(rows, scores, reasons)]


def _ranked(strategy, scan, candidates, count, seed, coverage, min_gap):
    if strategy == "random":
        return strategies.choose_random(candidates, scan.records, count, seed, min_gap)
    if strategy == "peak":
        return strategies.choose_ranked(candidates, scan.filling, scan.records, count, scan.filling_kind, min_gap)
    if strategy == "uncertainty":
        return strategies.choose_ranked(candidates, scan.disagreement, scan.records, count,
                                        "flip disagreement", min_gap)
    if coverage:
        return strategies.choose_coverage(candidates, scan.features, scan.records, count, min_gap)
    return strategies.choose_typical(candidates, scan.features, scan.records, count, seed, min_gap)


def frame_png(angiogram):
    """The frame as it was stored where PNG can hold it: 8-bit for 0..255
    integers, 16-bit for 0..65535 integers, else rescaled to 0..255."""
    whole = np.array_equal(angiogram, np.round(angiogram))
    low, high = float(angiogram.min()), float(angiogram.max())
    if whole and low >= 0 and high <= 255:
        return angiogram.astype(np.uint8)
    if whole and low >= 0 and high <= 65535:
        return angiogram.astype(np.uint16)
    return to_uint8(angiogram)


def contact_tile(angiogram, tile=CONTACT_TILE):
    """The frame for the contact sheet: 8-bit, `tile` x `tile` px."""
    return cv2.resize(to_uint8(angiogram), (tile, tile), interpolation=cv2.INTER_AREA)


def contact_sheet(tiles, labels, tile=CONTACT_TILE):
    """One BGR montage of `contact_tile`s, each with its label."""
    columns = max(1, math.ceil(math.sqrt(len(tiles))))
    rows = math.ceil(len(tiles) / columns)
    sheet = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for index, (grey, label) in enumerate(zip(tiles, labels)):
        picture = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        cv2.putText(picture, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(picture, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1, cv2.LINE_AA)
        row, column = divmod(index, columns)
        sheet[row * tile:(row + 1) * tile, column * tile:(column + 1) * tile] = picture
    return sheet


def write_selection(chosen, output_dir, settings=None):
    """Write the chosen frames as `NAME.png`, `selection.csv` (rank, source,
    frame, png, score, why), `contact_sheet.png` and, given `settings` (what
    `selection_settings` records), `selection.json`.

    Returns:
        The path of `selection.csv`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tiles, labels, rows = [], [], []  # the sheet keeps tiles, not whole frames
    for rank, choice in enumerate(chosen, 1):
        record = choice["record"]
        angiogram = read_angiogram(record.image_path, record.frame)
        png = output_dir / f"{record.name}.png"
        if not cv2.imwrite(str(png), frame_png(angiogram)):
            raise InvalidInputError(png, "could not be written")
        tiles.append(contact_tile(angiogram))
        labels.append(f"{rank}: {record.name}")
        score = "" if choice["score"] is None or np.isnan(choice["score"]) else f"{choice['score']:.6g}"
        rows.append([rank, record.image_path, "" if record.frame is None else record.frame, png.name, score,
                     choice["why"]])
    table = output_dir / "selection.csv"
    with open(table, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["rank", "source", "frame", "png", "score", "why"])
        writer.writerows(rows)
    cv2.imwrite(str(output_dir / "contact_sheet.png"), contact_sheet(tiles, labels))
    if settings is not None:
        atomic_write_json(output_dir / "selection.json", {**settings, "proposed": len(chosen)})
    return table


def selection_settings(model, inputs, count, options):
    """What `selection.json` records of a `choose_frames` call with `options`:
    the model, the inputs, every option (defaults included) and the
    precision the frames were scanned in on this machine ("auto" resolved),
    so that a selection can be repeated and two selections compared."""
    recorded = {name: parameter.default for name, parameter in inspect.signature(choose_frames).parameters.items()
                if parameter.default is not inspect.Parameter.empty and name not in ("skipped", "progress")}
    recorded.update(options)
    settings = model.segmentation_settings
    return {"model": settings.source if settings and settings.source else model.name,
            "inputs": [str(path) for path in inputs], "count": count, **recorded,
            "precision_asked": recorded["precision"], "precision": resolve_precision(recorded["precision"]),
            "cm_unet_keras": __version__}


def select_files(model, inputs, count, output_dir, skipped=None, progress=None, **options):
    """Index `inputs` (files, folders, DICOM cines), choose `count` frames
    (`choose_frames` with `options`) and write them with their settings
    (`write_selection`, `selection_settings`).

    Returns:
        The list of choices.
    """
    chosen = choose_frames(model, index_unlabeled(inputs), count, skipped=skipped, progress=progress, **options)
    write_selection(chosen, output_dir, selection_settings(model, inputs, count, options))
    return chosen
