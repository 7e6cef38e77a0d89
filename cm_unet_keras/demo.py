"""`cm-unet demo`: the main job on real angiograms, in a few minutes on a CPU.

Three parts, on the public angiograms shipped in `cm_unet_keras/demo_data/`
(5 CIMAT pairs, 3 ARCADE frames with main-segment masks; their sources and
licences in its README.md):

1. **Segment**: the shipped `cmunet_small_general_v3` preset segments every
   angiogram; overlays and Dice per frame go into `report.md`.
2. **Adapt with a few masks**: a short fine-tune of that preset on 3 CIMAT
   pairs, every other shipped pair scored before and after. It shows the
   path, not a converged model (a real fine-tune trains hundreds of steps).
3. **Pretrain on unlabeled angiograms**: a few steps of CM-UNet pretraining
   on the shipped angiograms without their masks, the run folder that
   `cm-unet finetune --init` takes.
"""

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from cm_unet_keras.config import FinetuneConfig, PretrainConfig
from cm_unet_keras.data.layouts import index_images_masks, index_pairs, index_unlabeled, read_pair
from cm_unet_keras.evaluation.metrics import segmentation_metrics
from cm_unet_keras.inference.predict import load_model, segment, write_prediction
from cm_unet_keras.training.finetune import finetune
from cm_unet_keras.training.pretrain import pretrain
from cm_unet_keras.training.runtime import resolve_precision

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
PRESET = "cmunet_small_general_v3"
# The CIMAT pairs the few-label fine-tune trains on; every other pair is scored.
FEW_LABELS = ("1", "6", "7")
# Sizes of the demo and of the smoke test (`quick`). The fine-tune keeps the
# preset's network (width 16, 4 levels); pretraining uses its own small one.
DEMO = {"epochs": 3, "steps_per_epoch": 20, "batch_size": 8, "patch_size": 128, "lr": 5e-4,
        "pretrain_filters": 16, "pretrain_depth": 4, "view": 64, "pretrain_epochs": 2, "pretrain_steps": 6}
QUICK = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch_size": 64, "lr": 5e-4,
         "pretrain_filters": 8, "pretrain_depth": 2, "view": 32, "pretrain_epochs": 1, "pretrain_steps": 1}


@dataclasses.dataclass(frozen=True)
class DemoFrame:
    """One shipped angiogram with its mask, named `SOURCE_N` in the outputs."""

    source: str
    record: object

    @property
    def name(self):
        return f"{self.source}_{self.record.name}"


def demo_frames(data_dir=DEMO_DATA):
    """The shipped angiograms: CIMAT pairs first, then ARCADE frames."""
    data_dir = Path(data_dir)
    cimat = index_pairs(data_dir / "cimat", mask_suffix="_gt")
    arcade = index_images_masks(data_dir / "arcade" / "images", data_dir / "arcade" / "masks")
    return [DemoFrame("cimat", r) for r in cimat] + [DemoFrame("arcade", r) for r in arcade]


def run_demo(out_dir, quick=False, precision="auto", log=print):
    """Run the demo into `out_dir`; returns the path of `report.md`."""
    sizes = QUICK if quick else DEMO
    out_dir = Path(out_dir)
    frames = demo_frames()
    seconds = {}
    cpu_started, load = time.process_time(), os.getloadavg()[0]

    started = time.perf_counter()
    log(f"1/3 segmenting {len(frames)} real angiograms with the {PRESET} preset")
    preset = load_model(PRESET)
    segmented = score_frames(preset, frames, precision, out_dir / "segment")
    seconds["segment"] = time.perf_counter() - started

    started = time.perf_counter()
    train = [frame for frame in frames if frame.source == "cimat" and frame.record.name in FEW_LABELS]
    held_out = [frame for frame in frames if frame not in train]
    log(f"2/3 fine-tuning {PRESET} on {len(train)} CIMAT pairs, scoring the other {len(held_out)} before and after")
    config = FinetuneConfig(
        init=PRESET, epochs=sizes["epochs"], steps_per_epoch=sizes["steps_per_epoch"],
        batch_size=sizes["batch_size"], patch_size=sizes["patch_size"], lr=sizes["lr"],
        val_fraction=0.0, precision=precision, seed=0,
    )
    fitted = finetune(config, [frame.record for frame in train], out_dir / "few_labels", log=log, verbose=2)
    adapted = score_frames(load_model(fitted["model_path"]), held_out, precision, out_dir / "few_labels" / "overlays")
    seconds["few_labels"] = time.perf_counter() - started

    started = time.perf_counter()
    log(f"3/3 CM-UNet pretraining on the {len(frames)} angiograms without their masks")
    pretrained = pretrain_briefly(frames, sizes, precision, out_dir / "pretrain", log)
    seconds["pretrain"] = time.perf_counter() - started

    # CPU seconds and the load beside the wall time: on a shared machine the
    # wall time says more about the other jobs than about the demo.
    context = {"precision": resolve_precision(precision), "config": config, "seconds": seconds,
               "train": train, "pretrained": pretrained, "cpu_seconds": time.process_time() - cpu_started,
               "load": load, "cores": os.cpu_count()}
    path = write_markdown(out_dir, segmented, {f.name: s for f, s in zip(held_out, adapted)},
                          [f.name for f in held_out], context)
    log(f"demo: {sum(seconds.values()):.0f} s in all (segment {seconds['segment']:.0f} s, "
        f"few labels {seconds['few_labels']:.0f} s, pretraining {seconds['pretrain']:.0f} s); "
        f"{context['cpu_seconds']:.0f} CPU s on {context['cores']} cores, load average {load:.1f} at the start")
    return path


def score_frames(model, frames, precision, overlay_dir):
    """Segment `frames`, write their overlays, and score them against their masks.

    Frames of one size go through the network together. Returns one dict
    per frame: name, source, size, `overlay` (the overlay PNG written in
    `overlay_dir`) and its Dice, clDice and sensitivity.
    """
    pairs = [read_pair(frame.record) for frame in frames]
    by_size = {}
    for index, (angiogram, _) in enumerate(pairs):
        by_size.setdefault(angiogram.shape, []).append(index)
    probabilities = [None] * len(frames)
    for indices in by_size.values():
        batch = np.stack([pairs[i][0] for i in indices]).astype(np.float32)
        result = segment(model, batch, precision=precision)
        for i, probability in zip(indices, result.probability):
            probabilities[i] = probability
    threshold = model.segmentation_settings.threshold
    scores = []
    for frame, (angiogram, vessel_mask), probability in zip(frames, pairs, probabilities):
        paths = write_prediction(overlay_dir, frame.name, angiogram, probability, threshold)
        metrics = segmentation_metrics(probability >= threshold, vessel_mask)
        scores.append({"name": frame.name, "source": frame.source, "size": "x".join(map(str, angiogram.shape)),
                       "overlay": paths["overlay"], **{k: metrics[k] for k in ("dice", "cldice", "sensitivity")}})
    return scores


def pretrain_briefly(frames, sizes, precision, run_dir, log):
    """A few steps of CM-UNet pretraining on the angiograms of `frames`, masks ignored."""
    config = PretrainConfig(
        base_filters=sizes["pretrain_filters"], depth=sizes["pretrain_depth"], image_size=sizes["view"],
        working_size=None, views="crops", batch_size=min(8, len(frames)), epochs=sizes["pretrain_epochs"],
        steps_per_epoch=sizes["pretrain_steps"], warmup_epochs=0, lr=1e-3, precision=precision, seed=0,
    )
    # Files, not folders: the CIMAT folder holds the masks beside the angiograms.
    unlabeled = index_unlabeled([frame.record.image_path for frame in frames])
    return pretrain(config, unlabeled, run_dir, log=log, verbose=2)


def _relative(path, out_dir):
    return Path(path).relative_to(out_dir).as_posix()


def _mean(scores, key, source):
    values = [score[key] for score in scores if score["source"] == source]
    return sum(values) / len(values)


def segment_section(segmented, out_dir):
    rows = "\n".join(
        f"| {s['name']} | {s['size']} | {s['dice']:.3f} | {s['cldice']:.3f} | {s['sensitivity']:.3f} |"
        for s in segmented
    )
    overlays = "\n".join(f"![{s['name']}]({_relative(s['overlay'], out_dir)})" for s in segmented)
    return f"""## 1. Segment your angiograms

`cm-unet predict --model {PRESET} --out predictions/ my_angiograms/` does this on
your files (PNG, TIFF, DICOM cine runs). Here the preset segmented the {len(segmented)}
shipped angiograms; vessels in red.

| frame | size | Dice | clDice | sensitivity |
|---|---|---|---|---|
{rows}

Mean Dice: CIMAT {_mean(segmented, 'dice', 'cimat'):.3f}; ARCADE main-segment sensitivity
{_mean(segmented, 'sensitivity', 'arcade'):.3f}. The CIMAT pairs come from the training part of
`recipes/xca_split.json`, on which the preset was trained: their scores are not a validation
(the preset's card gives those). The ARCADE frames come from the preset's validation part; their
masks label the main coronary segments only, so read their sensitivity: Dice counts correctly
found side branches as errors.

{overlays}
"""


def few_labels_section(segmented, adapted, held_out, context, out_dir):
    config, train = context["config"], context["train"]
    before = {s["name"]: s for s in segmented}
    rows = "\n".join(
        f"| {name} | {before[name]['dice']:.3f} | {adapted[name]['dice']:.3f} "
        f"| {before[name]['sensitivity']:.3f} | {adapted[name]['sensitivity']:.3f} |"
        for name in held_out
    )
    overlays = "\n".join(f"![{name}]({_relative(adapted[name]['overlay'], out_dir)})" for name in held_out)
    steps = config.epochs * config.steps_per_epoch
    segmented_held = [before[name] for name in held_out]
    adapted_list = [adapted[name] for name in held_out]
    return f"""## 2. Adapt to your scanner with a few masks

The preset fine-tuned on {len(train)} CIMAT pairs ({", ".join(f.name for f in train)}) for {steps} steps
(batch {config.batch_size}, {config.patch_size} px patches, learning rate {config.lr:g}, every pair
trains, the last step kept), then every other shipped angiogram scored before and after:

    cm-unet finetune --init {PRESET} --pairs my_pairs/ --out runs/mine \\
        --epochs {config.epochs} --steps-per-epoch {config.steps_per_epoch} --lr {config.lr:g}

| frame | Dice before | Dice after | sensitivity before | sensitivity after |
|---|---|---|---|---|
{rows}

Mean Dice on the held-out CIMAT pairs: {_mean(segmented_held, 'dice', 'cimat'):.3f} before,
{_mean(adapted_list, 'dice', 'cimat'):.3f} after; ARCADE sensitivity {_mean(segmented_held, 'sensitivity', 'arcade'):.3f}
before, {_mean(adapted_list, 'sensitivity', 'arcade'):.3f} after (fine-tuning on one source's masks can cost
on another's: mix your sources, as the general preset does).

**This shows the path, not a converged model**: {steps} steps on 3 pairs, one seed, scored on
{len(held_out)} frames. The measured few-label results (hundreds of steps, several seeds, 10
held-out pairs) are in `docs/results.md`. Run folder: `few_labels/` (`history.csv`,
`curves.png`, `model.keras`, `config.yaml`).

{overlays}
"""


def pretrain_section(context):
    pretrained = context["pretrained"]
    steps = pretrained["epochs_done"] * pretrained["steps_per_epoch"]
    return f"""## 3. Pretrain on your unlabeled runs

CM-UNet pretraining (masked reconstruction + contrastive) ran {steps} steps on the
{pretrained["n_images"]} shipped angiograms, masks ignored, into `pretrain/` (`curves.png`,
`history.csv`, `pretrained.weights.h5`). A real run takes tens of minutes to hours on your
unlabeled angiograms or DICOM cine runs, then starts a fine-tune:

    cm-unet pretrain --images my_unlabeled_runs/ --out runs/pretrain --minutes 30
    cm-unet finetune --init runs/pretrain --pairs my_pairs/ --out runs/mine
"""


def write_markdown(out_dir, segmented, adapted, held_out, context):
    seconds = context["seconds"]
    timing = ", ".join(f"{part.replace('_', ' ')} {value:.0f} s" for part, value in seconds.items())
    text = f"""# cm-unet demo on real angiograms

Public angiograms shipped with the package (`cm_unet_keras/demo_data/`: CIMAT, BSD-3-Clause,
Cervantes-Sanchez et al.; ARCADE, CC BY 4.0, Popov et al. 2024). Precision
{context["precision"]}; wall time {sum(seconds.values()):.0f} s ({timing}), after importing TensorFlow;
{context["cpu_seconds"]:.0f} CPU seconds on {context["cores"]} cores, load average {context["load"]:.1f} at the start.

{segment_section(segmented, out_dir)}
{few_labels_section(segmented, adapted, held_out, context, out_dir)}
{pretrain_section(context)}"""
    path = Path(out_dir) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
