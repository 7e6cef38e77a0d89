"""Segmenting angiograms: load a model with its settings, segment files,
write PNGs.

`load_model` and `segment` are the Python API (`cm_unet_keras.load_model`,
`cm_unet_keras.segment`); they add pretraining runs to what the network's
own `CMUNet.from_preset` and `CMUNet.segment` take, which stand on
`models.segmentation` (settings, precision, the batched pipeline). The
`predict` command writes what they compute.
"""

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import index_unlabeled, iter_angiograms
from cm_unet_keras.data.pipeline import preprocess_angiogram
from cm_unet_keras.inference.video import CineViews
from cm_unet_keras.models import presets, segmentation
from cm_unet_keras.models.full_image import predict_normalized
from cm_unet_keras.models.loading import load_model_file, pretrained_weights_path
from cm_unet_keras.models.segmentation import (
    DEFAULT_THRESHOLD,
    SEGMENT_BATCH,
    inference_model,
    settings_of,
    stream_probabilities,
    with_settings,
)

# Vessels are drawn in this BGR colour on the overlays.
OVERLAY_COLOUR = (40, 40, 230)
OVERLAY_ALPHA = 0.55


def load_model(name_or_path):
    """A U-Net and the settings it segments with, from a preset or a file.

    Args:
        name_or_path: a preset name (checksum-verified), a `.keras` U-Net
            (a fine-tuning run's `model.keras`), or a pretraining run folder
            or its `pretrained.weights.h5`. Loaded with `safe_mode`: no code
            from the file runs.

    Returns:
        A `CMUNet` whose `segmentation_settings` hold the threshold and CLAHE
        setting of its card or run folder. A pretrained-only model (a
        pretrained preset or a pretraining run) loads with a warning: its
        segmentation head was never trained, and `segment` refuses it.
    """
    name_or_path = pretrained_weights_path(name_or_path) or name_or_path
    path = presets.resolve_model_path(name_or_path)
    return with_settings(load_model_file(path), path, name_or_path)


def segment(model, angiograms, threshold=None, clahe=None, tta=False, precision="auto", batch_size=SEGMENT_BATCH,
            convention=None):
    """`CMUNet.segment` (`models.segmentation.segment`), where `model` may
    also be a pretraining run (refused there, with the reason)."""
    if isinstance(model, (str, os.PathLike)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # refused by segment, with the reason
            model = load_model(model)
    return segmentation.segment(model, angiograms, threshold, clahe, tta, precision, batch_size, convention)


def segment_angiogram(model, angiogram, clahe=False, tta=False):
    """Vessel probability of one raw-intensity angiogram.

    Args:
        model: a `CMUNet`.
        angiogram: float array `[H, W]` in raw intensity, any size.
        clahe: apply CLAHE before normalisation (as the model was trained).
        tta: average the four flips (4x the compute).

    Returns:
        float32 array `[H, W]` of probabilities, 0 outside the field of view
        (see `cm_unet_keras.models.full_image`).
    """
    normalized, fov = preprocess_angiogram(np.asarray(angiogram, np.float32), clahe, return_fov=True)
    return predict_normalized(model, normalized, tta=tta, fov=fov).numpy()[..., 0]


def to_uint8(angiogram):
    """Rescale a raw angiogram to 0..255 for display."""
    low, high = float(np.min(angiogram)), float(np.max(angiogram))
    if high <= low:
        return np.zeros(angiogram.shape, np.uint8)
    return np.round((angiogram - low) * (255.0 / (high - low))).astype(np.uint8)


def overlay(angiogram, vessel_mask):
    """BGR picture of the angiogram with the vessels coloured."""
    grey = cv2.cvtColor(to_uint8(angiogram), cv2.COLOR_GRAY2BGR)
    coloured = grey.copy()
    coloured[vessel_mask > 0] = OVERLAY_COLOUR
    return cv2.addWeighted(coloured, OVERLAY_ALPHA, grey, 1.0 - OVERLAY_ALPHA, 0.0)


def write_prediction(output_dir, name, angiogram, probability, threshold=DEFAULT_THRESHOLD):
    """Write `NAME_mask.png` (0/255), `NAME_prob.png` and `NAME_overlay.png`."""
    return _write_pngs(output_dir, name, angiogram, probability, threshold)[0]


def _write_pngs(output_dir, name, angiogram, probability, threshold):
    """`write_prediction`, returning `(paths, vessel_mask, overlay)`: a cine
    run's video takes the same overlay picture."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vessel_mask = probability >= threshold
    paths = {
        "mask": output_dir / f"{name}_mask.png",
        "prob": output_dir / f"{name}_prob.png",
        "overlay": output_dir / f"{name}_overlay.png",
    }
    picture = overlay(angiogram, vessel_mask)
    cv2.imwrite(str(paths["mask"]), vessel_mask.astype(np.uint8) * 255)
    cv2.imwrite(str(paths["prob"]), np.round(probability * 255.0).astype(np.uint8))
    cv2.imwrite(str(paths["overlay"]), picture)
    return paths, vessel_mask, picture


class ProgressBar:
    """`done/total` angiograms, rate and time left, redrawn on one line of a
    terminal stream (as `keras.utils.Progbar`, which writes to stdout)."""

    WIDTH = 30

    def __init__(self, total, stream, label="angiograms"):
        self.total, self.stream, self.label = total, stream, label
        self.started = time.perf_counter()
        self.done = 0

    def advance(self):
        self.done += 1
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate else 0.0
        filled = round(self.WIDTH * self.done / max(self.total, 1))
        self.stream.write(
            f"\r{self.done}/{self.total} {self.label} [{'=' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{rate:.1f}/s, ETA {int(left) // 60}:{int(left) % 60:02d}"
            + ("\n" if self.done >= self.total else "")
        )
        self.stream.flush()


def predict_files(
    model, inputs, output_dir, threshold=DEFAULT_THRESHOLD, clahe=False, log=print, skipped=None, tta=False,
    progress=None, batch_size=SEGMENT_BATCH, precision="float32", cine_summaries=None,
):
    """Segment every angiogram in `inputs` (files, folders, DICOM runs).

    A pipeline (`stream_probabilities`): files and cine frames are decoded
    and normalised ahead on threads, same-sized frames go through the
    network `batch_size` at a time in `precision` (`inference_model`), and
    the PNGs are written on a thread behind them. A DICOM cine run is read
    once and streamed frame by frame.

    Args:
        log: a print-like function for one line per angiogram, or None.
        skipped: None to stop at the first unreadable file; or a list to
            which `(path, problem)` of each unreadable file is appended, the
            file being left out (`--skip-invalid`).
        progress: a stream (a terminal's stderr) to draw a progress bar with
            the time left on, one step per angiogram or cine frame; None:
            no bar.
        batch_size: frames of one size per forward pass.
        precision: "float32" (outputs as the exported model's), "auto" (the
            machine's fastest: bfloat16 on AVX512_BF16 CPUs, float16 on
            GPUs), or a Keras mixed policy name.
        cine_summaries: None; or a list: each cine run also gets an overlay
            video, a vessel-filling plot and a summary with its best frame
            (`inference.video`, `--video`), appended here; a run stopped by
            an unreadable frame keeps a finished video of the frames before.

    Returns:
        The list of written path dicts, one per angiogram (per frame).

    Raises:
        InvalidInputError: as `segment`: a pretrained-only model, or a file
            that cannot be read (unless `skipped`).
    """
    settings_of(model)
    model = inference_model(model, precision)
    records = index_unlabeled(inputs)
    bar = ProgressBar(len(records), progress) if progress is not None else None
    angiograms = {}
    by_name = {record.name: record for record in records}
    views = CineViews(output_dir) if cine_summaries is not None else None

    def readable():
        for record, angiogram in iter_angiograms(records):
            if isinstance(angiogram, InvalidInputError):
                if skipped is None:
                    raise angiogram
                skipped.append((angiogram.path, angiogram.problem))
                if bar:
                    bar.advance()
                continue
            angiograms[record.name] = angiogram  # kept until written (the overlay needs it)
            yield record.name, angiogram

    def write(name, angiogram, probability):
        paths, vessel_mask, picture = _write_pngs(output_dir, name, angiogram, probability, threshold)
        if views is not None:  # one writer thread: the video's frames arrive in order
            views.add(by_name[name], angiogram, vessel_mask, picture)
        return paths

    try:
        with ThreadPoolExecutor(max_workers=1) as writer:  # PNGs are written behind the forward passes
            pending = []
            for name, probability in stream_probabilities(model, readable(), clahe, tta, batch_size):
                pending.append(writer.submit(write, name, angiograms.pop(name), probability))
                if log:
                    log(f"{name}: {int(np.count_nonzero(probability >= threshold))} vessel pixels")
                if bar:
                    bar.advance()
            # A PNG or a video frame that failed to write is an error, not a silent gap.
            written = [future.result() for future in pending]
    except BaseException:
        if views is not None:  # the writer thread has finished: what it wrote is kept, the video playable
            views.abandon()
        raise
    if views is not None:
        cine_summaries.extend(views.close())
    return written
