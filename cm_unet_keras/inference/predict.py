"""Segmenting angiograms: load a model with its settings, normalise, predict
at full size, threshold, write PNGs.

`load_model` and `segment` are the Python API (`cm_unet_keras.load_model`,
`cm_unet_keras.segment`, `CMUNet.from_preset` and `CMUNet.segment`); the
`predict` command writes what they compute.
"""

import os
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import index_unlabeled, iter_angiograms
from cm_unet_keras.data.pipeline import preprocess_angiogram
from cm_unet_keras.data.readers import read_frames
from cm_unet_keras.inference.settings import PRETRAINED_ONLY, SegmentationSettings, segmentation_settings
from cm_unet_keras.inference.video import CineViews
from cm_unet_keras.models import presets
from cm_unet_keras.models.full_image import predict_normalized
from cm_unet_keras.models.loading import load_model_file, pretrained_weights_path

DEFAULT_THRESHOLD = 0.5
# Vessels are drawn in this BGR colour on the overlays.
OVERLAY_COLOUR = (40, 40, 230)
OVERLAY_ALPHA = 0.55
# Angiograms of one size segmented per forward pass by `segment`.
SEGMENT_BATCH = 8


class Segmentation(NamedTuple):
    """What `segment` returns: `probability, vessel_mask = segment(...)`.

    Both are `[H, W]` for one angiogram and `[N, H, W]` for a batch or the
    frames of a cine run; `vessel_mask` is boolean, `probability >= threshold`.
    """

    probability: np.ndarray
    vessel_mask: np.ndarray


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
    model = load_model_file(path)
    model.segmentation_settings = segmentation_settings(path)
    if model.segmentation_settings.pretrained_only:
        warnings.warn(f"{name_or_path}: {PRETRAINED_ONLY}", UserWarning, stacklevel=2)
    return model


def segment(model, angiograms, threshold=None, clahe=None, tta=False, precision="auto", batch_size=SEGMENT_BATCH):
    """Segment raw angiograms of any size and intensity range.

    Args:
        model: a `CMUNet` (from `load_model` or `CMUNet.from_preset`, which
            carry their settings), or a preset name or model path.
        angiograms: one angiogram as a `[H, W]` array (any dtype and
            intensity range) or a file path (image or DICOM; a cine run gives
            every frame); a `[N, H, W]` array (a batch, or the frames of a
            cine); or a list of any of these.
        threshold: the mask threshold; None: the model's card or run
            (`model.segmentation_settings`), else 0.5.
        clahe: CLAHE before normalisation; None: as the model was trained.
        tta: average the four flips (4x the compute).
        precision: "auto" runs the network in the machine's fastest
            precision (bfloat16 on AVX512_BF16 CPUs, float16 on GPUs; masks
            agree with float32's to Dice >= 0.99); "float32" gives the
            exported model's outputs exactly.
        batch_size: frames of one size per forward pass.

    Returns:
        A `Segmentation(probability, vessel_mask)`, `[H, W]` or `[N, H, W]`;
        a list of them for a list.

    Raises:
        InvalidInputError: the model is pretrained only (its head was never
            trained), or a file cannot be read.
        ValueError: an array that is not `[H, W]` or `[N, H, W]`, or holds
            NaN or infinity.
    """
    if isinstance(model, (str, os.PathLike)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # refused below, with the reason
            model = load_model(model)
    settings = settings_of(model).overridden(threshold, clahe)
    threshold, clahe = settings.threshold, settings.clahe
    if isinstance(angiograms, (list, tuple)):
        return [segment(model, item, threshold, clahe, tta, precision, batch_size) for item in angiograms]
    if isinstance(angiograms, (str, os.PathLike)):
        numbered = list(read_frames(angiograms))
        single = numbered[0][0] is None  # a cine run numbers its frames
        frames = [angiogram for _, angiogram in numbered]
    else:
        batch = np.asarray(angiograms)
        if batch.ndim == 4 and batch.shape[-1] == 1:
            batch = batch[..., 0]
        if batch.ndim not in (2, 3) or 0 in batch.shape:
            raise ValueError(f"an angiogram is [H, W] and a batch [N, H, W]; got shape {batch.shape}")
        single = batch.ndim == 2
        frames = [batch] if single else list(batch)
    probability = np.stack(_probabilities(inference_model(model, precision), frames, clahe, tta, batch_size))
    if single:
        probability = probability[0]
    return Segmentation(probability, probability >= threshold)


def settings_of(model, consequence=""):
    """`model.segmentation_settings` (the defaults if it has none), refusing a
    model that cannot segment: a pretrained-only one raises `InvalidInputError`
    (its message ends with `consequence`)."""
    recorded = getattr(model, "segmentation_settings", None) or SegmentationSettings(DEFAULT_THRESHOLD, False)
    if recorded.pretrained_only:
        raise InvalidInputError(recorded.source or model.name, PRETRAINED_ONLY + consequence)
    return recorded


def _probabilities(model, frames, clahe, tta, batch_size=SEGMENT_BATCH):
    """Vessel probabilities of raw `[H, W]` frames, in order (see `stream_probabilities`)."""
    return [probability for _, probability in stream_probabilities(model, enumerate(frames), clahe, tta, batch_size)]


def _preprocessed(frame, clahe):
    frame = np.asarray(frame, np.float32)
    if not np.isfinite(frame).all():
        raise ValueError("the angiogram holds NaN or infinite values")
    return preprocess_angiogram(frame, clahe, return_fov=True)


def _prefetched(items, depth):
    """Iterate `items` on a background thread, up to `depth` ahead, in order.

    Decoding (PNG, DICOM frames) then overlaps the forward passes instead of
    running between them. An exception raised by `items` is raised here, at
    its place in the sequence; closing this generator stops the thread.
    """
    import queue
    import threading

    buffer = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            outcome = (done, None)
        except BaseException as error:  # handed to the consumer, raised there
            outcome = (done, error)
        while not stop.is_set():
            try:
                buffer.put(outcome, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="cm-unet-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


def stream_probabilities(model, items, clahe, tta, batch_size=SEGMENT_BATCH, workers=None):
    """`(key, probability)` of each `(key, raw [H, W] frame)` of `items`, in order.

    A pipeline: `items` is iterated on a background thread (files and a
    cine's frames are decoded there, a few batches ahead), frames are
    normalised ahead on a thread pool (OpenCV and TensorFlow release the
    GIL), runs of up to `batch_size` same-sized frames go through one
    forward pass, and results are yielded as soon as their batch is done,
    so a caller can write them while the next batch runs.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or min(4, os.cpu_count() or 1)
    ahead = deque()
    batch = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        items = _prefetched(iter(items), 2 * batch_size)

        def fill():
            while len(ahead) < 2 * batch_size:
                try:
                    key, frame = next(items)
                except StopIteration:
                    return
                ahead.append((key, pool.submit(_preprocessed, frame, clahe)))

        def flush():
            normalized, fov = (np.stack(parts) for parts in zip(*(prepared for _, prepared in batch)))
            probabilities = predict_normalized(model, normalized, tta=tta, fov=fov).numpy()[..., 0]
            done = [(key, probability) for (key, _), probability in zip(batch, probabilities)]
            batch.clear()
            return done

        try:
            fill()
            while ahead:
                key, future = ahead.popleft()
                prepared = future.result()
                fill()
                if batch and (prepared[0].shape != batch[0][1][0].shape or len(batch) == batch_size):
                    yield from flush()
                batch.append((key, prepared))
            if batch:
                yield from flush()
        finally:
            items.close()  # stops the decoding thread if the caller stopped early


def inference_model(model, precision="float32"):
    """`model` to run inference with in `precision` ("float32", "auto",
    "mixed_bfloat16" or "mixed_float16").

    float32 returns `model` itself. A mixed policy returns a copy built
    under it with the same weights (cached on `model`): convolutions run in
    bfloat16 (AVX512_BF16 / AMX CPUs) or float16 (GPUs), the sigmoid in
    float32. "auto" picks what the machine runs fastest
    (`training.runtime.resolve_precision`).
    """
    from cm_unet_keras.training.runtime import resolve_precision

    policy = resolve_precision(precision)
    if policy == "float32":
        return model
    cache = model.__dict__.setdefault("_inference_copies", {})
    if policy not in cache:
        import keras

        previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(policy)
        try:
            copy = type(model).from_config(model.get_config())
        finally:
            keras.mixed_precision.set_global_policy(previous)
        copy.set_weights(model.get_weights())
        copy.segmentation_settings = getattr(model, "segmentation_settings", None)
        cache[policy] = copy
    return cache[policy]


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
            (`inference.video`, `--video`), and the summaries are appended.

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
    written = []
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

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as writer:  # PNGs are written behind the forward passes
        pending, drawn = [], []
        for name, probability in stream_probabilities(model, readable(), clahe, tta, batch_size):
            angiogram = angiograms.pop(name)
            pending.append(writer.submit(write_prediction, output_dir, name, angiogram, probability, threshold))
            if views is not None:
                vessel_mask = probability >= threshold
                drawn.append(writer.submit(views.add, by_name[name], angiogram, vessel_mask,
                                           overlay(angiogram, vessel_mask)))
            if log:
                log(f"{name}: {int((probability >= threshold).sum())} vessel pixels")
            if bar:
                bar.advance()
        written = [future.result() for future in pending]
        for future in drawn:
            future.result()  # a video that failed to write is an error, not a silent gap
        if views is not None:
            cine_summaries.extend(writer.submit(views.close).result())
    return written
