"""Segmenting angiograms from files: normalise, predict at full size, write PNGs."""

from pathlib import Path

import cv2
import numpy as np

from cm_unet_keras.data.errors import InvalidInputError
from cm_unet_keras.data.layouts import index_unlabeled, iter_angiograms
from cm_unet_keras.data.pipeline import preprocess_angiogram
from cm_unet_keras.models.full_image import predict_normalized
from cm_unet_keras.models.presets import resolve_model_path
from cm_unet_keras.training.transfer import load_unet

DEFAULT_THRESHOLD = 0.5
# Vessels are drawn in this BGR colour on the overlays.
OVERLAY_COLOUR = (40, 40, 230)
OVERLAY_ALPHA = 0.55


def load_model(name_or_path):
    """A U-Net from a `.keras` path or a preset name, loaded with `safe_mode`."""
    return load_unet(resolve_model_path(name_or_path))


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
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vessel_mask = probability >= threshold
    paths = {
        "mask": output_dir / f"{name}_mask.png",
        "prob": output_dir / f"{name}_prob.png",
        "overlay": output_dir / f"{name}_overlay.png",
    }
    cv2.imwrite(str(paths["mask"]), vessel_mask.astype(np.uint8) * 255)
    cv2.imwrite(str(paths["prob"]), np.round(probability * 255.0).astype(np.uint8))
    cv2.imwrite(str(paths["overlay"]), overlay(angiogram, vessel_mask))
    return paths


def predict_files(
    model, inputs, output_dir, threshold=DEFAULT_THRESHOLD, clahe=False, log=print, skipped=None, tta=False
):
    """Segment every angiogram in `inputs` (files, folders, DICOM runs).

    A DICOM cine run is read once and segmented frame by frame.

    Args:
        skipped: None to stop at the first unreadable file; or a list to
            which `(path, problem)` of each unreadable file is appended, the
            file being left out (`--skip-invalid`).

    Returns:
        The list of written path dicts, one per angiogram (per frame).
    """
    written = []
    for record, angiogram in iter_angiograms(index_unlabeled(inputs)):
        if isinstance(angiogram, InvalidInputError):
            if skipped is None:
                raise angiogram
            skipped.append((angiogram.path, angiogram.problem))
            continue
        probability = segment_angiogram(model, angiogram, clahe, tta)
        written.append(write_prediction(output_dir, record.name, angiogram, probability, threshold))
        log(f"{record.name}: {int((probability >= threshold).sum())} vessel pixels")
    return written
