"""How the network segments raw angiograms: the low floor under `CMUNet`.

`CMUNet.from_preset` and `CMUNet.segment` stand on this module, and so do
the inference stage above (`cm_unet_keras.load_model`, `segment`, the
`predict` command): the settings a model segments with (read from beside
its file: a preset's `card.json`, or a fine-tuning run's `config.yaml` and
`split.json`), the float32 / mixed precision copy it runs in, and the
pipeline that normalises raw frames and runs them through the network in
batches. Nothing here imports the pretrainer, training or inference: the
network must not import the code that uses it (keras-hub keeps its
preset loader and preprocessing below the Backbone in the same way).
"""

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cm_unet_keras.config import FinetuneConfig, read_recipe
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.conventions import DEFAULT_CONVENTION, check_convention
from cm_unet_keras.data.pipeline import preprocess_angiogram
from cm_unet_keras.data.readers import read_frames
from cm_unet_keras.models import presets
from cm_unet_keras.models.full_image import predict_normalized
from cm_unet_keras.models.precision import resolve_precision
from cm_unet_keras.models.saving import PRETRAINER_CONFIG, load_unet

DEFAULT_THRESHOLD = 0.5
SEGMENT_BATCH = 8

# What segment, predict and export say of a model whose head was never trained.
PRETRAINED_ONLY = (
    "pretrained only, its segmentation head was never trained: fine-tune it first "
    "(cm-unet finetune --init ...) or use a fine-tuned model such as cmunet_small_xca"
)


@dataclasses.dataclass(frozen=True)
class SegmentationSettings:
    """How a loaded model segments: what `CMUNet.segment` uses unless told otherwise.

    Args:
        threshold: the mask threshold on the vessel probability.
        clahe: CLAHE before normalisation, as the model was trained.
        source: the file the settings were read from (a card or a run's
            `config.yaml`), or None for the defaults.
        pretrained_only: the model comes from pretraining (a pretrained
            preset or a pretraining run): its segmentation head was never
            trained, so it cannot segment.
        convention: the mask convention of a one-output model, as its card
            (`conventions`) or run (`convention`) records it; None if not
            recorded. A multi-output model knows its own (`conventions`).
    """

    threshold: float
    clahe: bool
    source: str | None = None
    pretrained_only: bool = False
    convention: str | None = None

    def overridden(self, threshold=None, clahe=None):
        """These settings with the caller's `threshold` and `clahe` (None: keep)."""
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return dataclasses.replace(self, threshold=threshold, clahe=self.clahe if clahe is None else bool(clahe))


def training_context(model_path):
    """How the model at `model_path` was trained, from the files beside it.

    Returns:
        dict with `source` (the file read, or None), `clahe`, `threshold`
        (None if not recorded), `training_data` (a note, or None),
        `pretrained_only` (a pretrained preset's card, or a pretraining run)
        and `convention` (of a one-output model: the card's one
        `conventions` entry or the run's `convention`; else None).
    """
    folder = Path(model_path).parent
    card, config = folder / "card.json", folder / "config.yaml"
    # Beside a pretraining run's weights: a U-Net whose head was never trained.
    pretrained_only = (folder / PRETRAINER_CONFIG).is_file()
    if card.is_file():
        values = json.loads(card.read_text())
        # A fine-tuned preset's card records its training configuration.
        values = {**values.get("training", {}).get("finetune_config", {}), **values}
        source = card
        pretrained_only = pretrained_only or values.get("kind") == "pretrained"
    elif config.is_file():
        values = read_recipe(config)
        source = config
    else:
        return {"source": None, "clahe": False, "threshold": None, "training_data": None,
                "pretrained_only": pretrained_only, "convention": None}
    training_data = values.get("training_data")
    split = folder / "split.json"
    if training_data is None and split.is_file():
        names = json.loads(split.read_text())
        training_data = (
            f"fine-tuning run {folder.name}: {len(names.get('train', []))} training and "
            f"{len(names.get('val', []))} validation angiograms (split.json)"
        )
    return {
        "source": str(source),
        "clahe": bool(values.get("clahe", False)),
        "threshold": values.get("threshold"),
        "training_data": training_data,
        "pretrained_only": pretrained_only,
        "convention": _recorded_convention(values),
    }


def _recorded_convention(values):
    """The one convention a card (`conventions: [NAME]`) or a one-output
    run (`convention: NAME`, no `conventions`) records, else None."""
    if values.get("conventions") is not None:
        conventions = list(values["conventions"])
        return conventions[0] if len(conventions) == 1 else None
    return values.get("convention")


def resolve_settings(model_path, threshold=None, clahe=None):
    """The `(threshold, clahe)` to use the model at `model_path` with.

    Args:
        model_path: the `.keras` file (a preset's or a run's).
        threshold: the caller's threshold, or None for the recorded one
            (else `FinetuneConfig.threshold`).
        clahe: the caller's choice, or None for the recorded one.

    Returns:
        `(threshold, clahe, source)`: `source` is the file the recorded
        settings came from, or None.
    """
    context = training_context(model_path)
    if threshold is None:
        threshold = context["threshold"]
    if threshold is None:
        threshold = FinetuneConfig.threshold
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold, context["clahe"] if clahe is None else bool(clahe), context["source"]


def segmentation_settings(model_path):
    """The `SegmentationSettings` recorded beside the model at `model_path`."""
    threshold, clahe, source = resolve_settings(model_path)
    context = training_context(model_path)
    return SegmentationSettings(threshold, clahe, source, context["pretrained_only"], context["convention"])


class Segmentation(NamedTuple):
    """What `segment` returns: `probability, vessel_mask = segment(...)`.

    Both are `[H, W]` for one angiogram and `[N, H, W]` for a batch or the
    frames of a cine run; `vessel_mask` is boolean, `probability >= threshold`.
    """

    probability: np.ndarray
    vessel_mask: np.ndarray


def load_preset(name_or_path):
    """The U-Net of a preset or a `.keras` file, with the settings it segments with.

    What `CMUNet.from_preset` returns: checksum-verified (a preset),
    loaded with `safe_mode`, its `segmentation_settings` read from beside
    the file; a pretrained-only preset warns (its head was never trained).
    A pretraining run's weights are a pretrainer's, not a U-Net's: load
    those with `cm_unet_keras.load_model`.
    """
    path = presets.resolve_model_path(name_or_path)
    if path.name.endswith(".weights.h5"):
        raise InvalidInputError(path, "is a pretraining run's weights, not a U-Net: load it with "
                                "cm_unet_keras.load_model (or fine-tune from it with --init)")
    return with_settings(load_unet(path), path, name_or_path)


def with_settings(model, path, name):
    """`model` with the `segmentation_settings` recorded beside `path`; warns
    (naming `name`) when they say it is pretrained only."""
    model.segmentation_settings = segmentation_settings(path)
    if model.segmentation_settings.pretrained_only:
        warnings.warn(f"{name}: {PRETRAINED_ONLY}", UserWarning, stacklevel=3)
    return model


def model_conventions(model):
    """The mask conventions `model` segments in: its outputs' (a
    `CMUNet(conventions=...)`), else the one its card or run records; ()
    for a model that records none."""
    if getattr(model, "conventions", None):
        return tuple(model.conventions)
    recorded = getattr(model, "segmentation_settings", None)
    return (recorded.convention,) if recorded is not None and recorded.convention else ()


def convention_model(model, convention=None):
    """The one-output U-Net that segments in `convention`.

    A model with several outputs gives the one-output copy of that channel
    (`CMUNet.single_output`, cached on `model`, with its settings); None
    is `DEFAULT_CONVENTION` ("tree") when the model has it, else its first
    output. A one-output model is returned as it is: it has one convention
    (its own, or the one its card or run records) and accepts only None
    or that one.

    Raises:
        ValueError: one line: an unknown name (naming every convention), or
            one the model does not have (naming the model's).
    """
    conventions = model_conventions(model)
    if len(conventions) > 1:
        if convention is None:
            convention = DEFAULT_CONVENTION if DEFAULT_CONVENTION in conventions else conventions[0]
        check_convention(convention, conventions)
        copies = model.__dict__.setdefault("_convention_copies", {})
        if convention not in copies:
            copies[convention] = model.single_output(convention)
            copies[convention].segmentation_settings = getattr(model, "segmentation_settings", None)
        return copies[convention]
    if convention is not None:
        check_convention(convention)
        if not conventions:
            settings = getattr(model, "segmentation_settings", None)
            why = PRETRAINED_ONLY if settings is not None and settings.pretrained_only else (
                "one output, and no convention recorded in its card or run folder")
            raise ValueError(f"convention {convention!r}: this model has none ({why}); leave the convention out")
        check_convention(convention, conventions)
    return model


def segment(model, angiograms, threshold=None, clahe=None, tta=False, precision="auto", batch_size=SEGMENT_BATCH,
            convention=None):
    """Segment raw angiograms of any size and intensity range.

    Args:
        model: a `CMUNet` (from `CMUNet.from_preset` or
            `cm_unet_keras.load_model`, which carry their settings), or a
            preset name or `.keras` path (`load_preset`).
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
        convention: the mask convention to segment in (`CONVENTIONS`:
            "tree_catheter", "tree", "syntax"); None: "tree" for a model
            with one output per convention, the model's own for a
            one-output model (`convention_model`).

    Returns:
        A `Segmentation(probability, vessel_mask)`, `[H, W]` or `[N, H, W]`;
        a list of them for a list.

    Raises:
        InvalidInputError: the model is pretrained only (its head was never
            trained), or a file cannot be read.
        ValueError: an array that is not `[H, W]` or `[N, H, W]`, or holds
            NaN or infinity; a convention the model does not have.
    """
    if isinstance(model, (str, os.PathLike)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # refused below, with the reason
            model = load_preset(model)
    settings = settings_of(model).overridden(threshold, clahe)
    threshold, clahe = settings.threshold, settings.clahe
    model = convention_model(model, convention)
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


def prefetched(items, depth):
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

    A frame that cannot be read (an exception raised by `items`) or
    normalised raises in its place: after every frame before it is yielded.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    workers = workers or min(4, os.cpu_count() or 1)
    ahead = deque()
    batch = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        items = prefetched(iter(items), 2 * batch_size)

        def fill():
            while len(ahead) < 2 * batch_size:
                try:
                    key, frame = next(items)
                except StopIteration:
                    return
                except Exception as error:  # raised where it stands, once the frames before it are through
                    future = Future()
                    future.set_exception(error)
                    ahead.append((None, future))
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
                if future.exception() is not None and batch:
                    yield from flush()  # the frames before a failing one are segmented first
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
    (`models.precision.resolve_precision`). A model with one output per
    convention runs its default convention's (`convention_model`): pick
    another with `convention_model` first.
    """
    model = convention_model(model)
    policy = resolve_precision(precision)
    if policy == "float32":
        return model
    cache = model.__dict__.setdefault("_inference_copies", {})
    if policy not in cache:
        import keras  # loaded already: `model` is a Keras model

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
