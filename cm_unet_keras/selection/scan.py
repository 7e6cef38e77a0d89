"""One pass over unlabeled frames, measuring what the selection strategies
rank them by: the encoder's pooled bottleneck features, a vessel-filling
value (the model's vessel fraction, or a vesselness measure for a
pretrained-only model) and flip-TTA disagreement.

Every frame is shrunk to a working size (`WORKING_SIZE`, a multiple of the
U-Net's 16) before it is normalised and sent through the network in
batches: ranking frames needs their content, not their finest vessels, and
a 256x256 pass costs a quarter of a 512x512 one.
"""

import dataclasses

import cv2
import numpy as np

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import iter_angiograms
from cm_unet_keras.data.normalize import FOV_MARGIN, normalize_angiogram_host
# Decoding runs on a thread ahead of the forward passes, as in `predict`.
from cm_unet_keras.models.segmentation import prefetched

WORKING_SIZE = 256
SCAN_BATCH = 16
# Black top-hat disc at the working size: wider than the widest coronary
# artery there (about 8 px at 256 for 16 px at 512), so that a vessel is
# filled by the closing and stands out, narrower than the heart's shadow.
VESSELNESS_KERNEL = 15
# The four flips whose disagreement is the uncertainty, as axes of [B, H, W].
FLIPS = ((), (2,), (1,), (1, 2))


@dataclasses.dataclass
class FrameScan:
    """What one scan measured, one row per frame of `records`.

    Args:
        records: the `AngiogramRecord`s scanned, in order.
        features: `[N, C]` pooled bottleneck features, or None.
        filling: `[N]` vessel-filling values (fraction of the field of view),
            or None.
        filling_kind: "vessel fraction" (the model's mask) or "vesselness"
            (black top-hat of a pretrained-only model's frames).
        disagreement: `[N]` mean standard deviation of the vessel probability
            over the four flips inside the field of view, or None.
        skipped: `(path, problem)` of frames left out as unreadable.
    """

    records: list
    features: np.ndarray | None
    filling: np.ndarray | None
    filling_kind: str | None
    disagreement: np.ndarray | None
    skipped: list


def working_frame(angiogram, size=WORKING_SIZE):
    """A raw `[H, W]` frame resized to `size` x `size` (area averaging)."""
    angiogram = np.asarray(angiogram, np.float32)
    return cv2.resize(angiogram, (size, size), interpolation=cv2.INTER_AREA)


def field_region(fov, margin=FOV_MARGIN):
    """The field of view shrunk by `margin` px, as `prediction_region` does
    (outside the image counts as inside), in OpenCV for the host."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode(fov.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1) > 0


def vesselness_filling(frame, region):
    """Dark thin contrast per field-of-view pixel of a working-size raw frame.

    The black top-hat of the frame divided by its median inside `region`
    (so that frames of one run, whose brightness the contrast barely moves,
    are on one scale), averaged inside `region`: it rises as contrast fills
    the vessels and falls as it washes out.
    """
    inside = frame[region]
    if inside.size == 0:
        return 0.0
    scale = max(float(np.median(inside)), 1e-6)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (VESSELNESS_KERNEL, VESSELNESS_KERNEL))
    tophat = cv2.morphologyEx(np.ascontiguousarray(frame / scale, np.float32), cv2.MORPH_BLACKHAT, disc)
    return float(tophat[region].mean())


def _network(model, outputs):
    """A compiled forward pass from `model`'s input to the named outputs:
    "features" (bottleneck, averaged over space) and/or "probability"."""
    import keras
    import tensorflow as tf

    chosen = []
    if "probability" in outputs:
        chosen.append(model.output)
    if "features" in outputs:
        chosen.append(keras.layers.GlobalAveragePooling2D(dtype="float32")(model.bottleneck_output()))
    network = keras.Model(model.input, chosen)
    # One graph, not op-by-op eager calls: 30% faster per frame at 256x256.
    return tf.function(lambda images: network(images, training=False),
                       input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])


def _readable(records, skipped):
    for record, angiogram in iter_angiograms(records):
        if isinstance(angiogram, InvalidInputError):
            if skipped is None:
                raise angiogram
            skipped.append((angiogram.path, angiogram.problem))
            continue
        yield record, angiogram


def _prepared(records, size, skipped):
    """`(record, (working frame, normalised frame, region))` of each readable frame."""
    for record, angiogram in _readable(records, skipped):
        frame = working_frame(angiogram, size)
        normalized, fov = normalize_angiogram_host(frame, return_fov=True)
        yield record, (frame, normalized, field_region(fov))


def scan_frames(model, records, features=False, filling=False, disagreement=False, threshold=0.5,
                pretrained_only=False, size=WORKING_SIZE, batch_size=SCAN_BATCH, skipped=None, progress=None):
    """Measure `records`' frames for selection (see `FrameScan`).

    Args:
        model: a `CMUNet` (run as given: pass `inference_model(model, "auto")`
            for the machine's fastest precision).
        records: `AngiogramRecord`s (`index_unlabeled`, or labelled ones:
            their masks are not read).
        features, filling, disagreement: what to measure.
        threshold: the mask threshold of the model's vessel fraction.
        pretrained_only: the model's head was never trained: filling is the
            vesselness measure, and disagreement is refused.
        size: the working size (a multiple of `model.size_multiple`).
        skipped: None to stop at the first unreadable frame, or a list that
            gets `(path, problem)` of each one left out.
        progress: called with the number of frames done after each batch.

    Raises:
        InvalidInputError: an unreadable frame (unless `skipped`).
        ValueError: disagreement asked of a pretrained-only model, or a
            working size the U-Net cannot take.
    """
    if disagreement and pretrained_only:
        raise ValueError("flip disagreement needs a fine-tuned model: a pretrained-only model's head was never trained")
    if size % model.size_multiple:
        raise ValueError(f"working size {size} must be a multiple of {model.size_multiple}")
    wanted = ["features"] * features + ["probability"] * ((filling and not pretrained_only) or disagreement)
    network = _network(model, wanted) if wanted else None
    kept, rows, batch = [], {"features": [], "filling": [], "disagreement": []}, []

    def flush():
        _measure_batch(network, wanted, batch, rows, filling, disagreement, threshold, pretrained_only)
        batch.clear()
        if progress:
            progress(len(kept))

    for record, prepared in prefetched(_prepared(records, size, skipped), 2 * batch_size):
        batch.append(prepared)
        kept.append(record)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    column = lambda name, on: np.asarray(rows[name], np.float32) if on else None  # noqa: E731
    kind = None if not filling else ("vesselness" if pretrained_only else "vessel fraction")
    return FrameScan(kept, column("features", features), column("filling", filling), kind,
                     column("disagreement", disagreement), list(skipped or []))


def _measure_batch(network, wanted, batch, rows, filling, disagreement, threshold, pretrained_only):
    frames, normalized, regions = (np.stack(items) for items in zip(*batch))
    images = normalized[..., None]
    outputs = {}
    if network is not None:
        flips = FLIPS if disagreement else ((),)
        stacked = np.concatenate([np.flip(images, axis) if axis else images for axis in flips])
        result = network(stacked)
        result = dict(zip(wanted, result if isinstance(result, (list, tuple)) else [result]))
        count = len(batch)
        if "features" in result:
            outputs["features"] = np.asarray(result["features"])[:count]
        if "probability" in result:
            probability = np.asarray(result["probability"], np.float32)[..., 0]
            per_flip = [np.flip(probability[i * count:(i + 1) * count], axis) if axis else
                        probability[i * count:(i + 1) * count] for i, axis in enumerate(flips)]
            outputs["probability"] = per_flip
    if "features" in outputs:
        rows["features"].extend(outputs["features"])
    for index, region in enumerate(regions):
        area = max(int(region.sum()), 1)
        if filling and pretrained_only:
            rows["filling"].append(vesselness_filling(frames[index], region))
        elif filling:
            rows["filling"].append(float(((outputs["probability"][0][index] >= threshold) & region).sum()) / area)
        if disagreement:
            spread = np.std(np.stack([flip[index] for flip in outputs["probability"]]), axis=0)
            rows["disagreement"].append(float(spread[region].sum()) / area)
