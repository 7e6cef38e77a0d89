"""Build the shipped presets in `saved_models/` (issues 4, 13 and 14).

    cm-unet study --stage pretrain      # the study's pretraining (writes runs/label_efficiency/pretrain/cmunet)
    python recipes/build_presets.py     # saved_models/cmunet_small_pretrained, cmunet_small_xca, cmunet_small_general

- `cmunet_small_pretrained`: the small U-Net (width 16, 4 levels) of the
  study's `cmunet` pretraining run: encoder and decoder pretrained by
  contrastive masked autoencoding on the 1,200 unlabeled ARCADE stenosis
  train and val angiograms (never its test split) plus the 30 XCA training
  angiograms without their masks. Its segmentation
  head was never trained: fine-tune it (`--init cmunet_small_pretrained`).
- `cmunet_small_xca`: fine-tuned from `cmunet_small_pretrained` on the 30
  training pairs of `recipes/xca_split.json` with the package's fine-tuning
  recipe (issue 12: 2,000 steps, every pair trains, the last epoch kept),
  and scored on the 10 validation pairs of that split, which chose no epoch
  (they did choose the recipe's budget and the pretrained layers' learning
  rate: `benchmarks/finetune_budget/results.md`).
- `cmunet_small_general`: fine-tuned from `cmunet_small_pretrained` on every
  labelled source's training part, CIMAT's 30 pairs (full vessel trees)
  and ARCADE's 140 main-segment pairs of `recipes/arcade_split.json`
  (partially labelled), as `recipes/general.py`'s `GENERAL_VARIANT` and
  `GENERAL_STEPS` say (chosen there on the validation parts); scored on the
  validation part of each source (`benchmarks/cross_source.py`).

The v2 and v3 presets (issue 31), built by name only:

    cm-unet pretrain --config recipes/pretrain_arcade.yaml --out runs/pretrain_arcade --images ...
    python recipes/build_presets.py --only pretrained_v2 --pretrain-run runs/pretrain_arcade
    python recipes/arcade_protocol.py --arcade-train data/arcade_syntax_train ...   # the chosen run
    python recipes/build_presets.py --only general_v2 --protocol-run runs/arcade_protocol/<run>
    python recipes/build_presets.py --only arcade_v2 --protocol-run runs/arcade_protocol/<run>   # --sources arcade
    python recipes/build_presets.py --only general_v3 --protocol-run runs/arcade_protocol/<run>
    python recipes/build_presets.py --only arcade_v3 --protocol-run runs/arcade_protocol/<run>   # --sources arcade

- `cmunet_small_pretrained_v2`: the U-Net of a pretraining run whose pool
  (its `images.json`) holds no test split; its card pairs the protocol's
  runs from it with random starts of the same shape and seed.
- `cmunet_small_general_v2`: an ARCADE protocol run (trained on ARCADE's
  syntax train split and CIMAT's 30 pairs, chosen on ARCADE's 200
  validation pairs), its card's numbers read from its row of
  `benchmarks/arcade_protocol/results.jsonl`; `--failure-modes FILE` adds
  the line on what it still gets wrong.
- `cmunet_small_arcade_v2`: a protocol run on ARCADE's pairs alone
  (`--sources arcade`), so one convention, `syntax`: the main SYNTAX
  segments, side branches and catheter background, as ARCADE labels them.
- `cmunet_small_general_v3`, `cmunet_small_arcade_v3`: the same network,
  protocol and sources as their v2, trained longer on larger batches;
  publishing one names it on its v2's card (`superseded_by`, first
  limitation), leaving v2's model file as it is.

Each preset folder holds `model.keras` (float32, loads with
`safe_mode=True`), `card.json` (intended use, limitations, data and what
their licences allow, this command, the training configuration, validation
metrics, input expectations and the file's SHA-256) and `README.md`, the
card rendered for people. A preset is written whole or not at all; an existing one is
replaced only with `--overwrite`.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cm_unet_keras.experiments.data import study_data, unlabeled_pool  # noqa: E402
from cm_unet_keras.config import FinetuneConfig, config_to_dict, read_recipe  # noqa: E402
from cm_unet_keras.core.files import atomic_write  # noqa: E402
from cm_unet_keras.models import presets  # noqa: E402
from cm_unet_keras.models.loading import load_model_file  # noqa: E402
from cm_unet_keras.models.saving import float32_policy  # noqa: E402
from cm_unet_keras.version import __version__  # noqa: E402

PRETRAINED = "cmunet_small_pretrained"
XCA = "cmunet_small_xca"
GENERAL = "cmunet_small_general"
COMMAND = "cm-unet study --stage pretrain && python recipes/build_presets.py"

# Fine-tuning of cmunet_small_xca: the package's defaults (AdamW 2e-3, warm-up
# + cosine over 2,000 steps, Dice + BCE, batch 8 of 128 px patches, last
# epoch kept) from the pretrained preset. The same configuration as the
# N=30 pretrained seed-0 run of benchmarks/finetune_budget.py, so
# `--runs runs/finetune_budget/<that run>` publishes that run.
XCA_CONFIG = dict(base_filters=16, depth=4, epochs=20, steps_per_epoch=100, seed=0, init=PRETRAINED,
                  pretrained_lr_factor=1.0, select="last", val_fraction=0.0)

DATA = {
    "unlabeled": (
        "ARCADE stenosis task (Popov et al., Scientific Data 2024; MICCAI 2023 challenge), train and val images "
        "(its test split never: the project is scored on it), 1,200 angiograms 512x512, labels ignored; via a "
        "public GitHub copy. Check the ARCADE record's licence "
        "(CC BY 4.0 on its Zenodo release) before redistributing derived data."
    ),
    "labelled": (
        "CIMAT angiograms (Cervantes-Sanchez et al., the DCA1 authors), xca_vessels/train: 40 pairs 300x300, "
        "from the public repository fercer/Coronary (BSD-3-Clause); split 30 train / 10 validation by "
        "recipes/xca_split.json (seed 0)."
    ),
}
DATA_ARCADE_VESSELS = (
    "ARCADE syntax task, validation split (Popov et al., Scientific Data 2024), via a public GitHub copy of its "
    "polygons: 200 angiograms 512x512 with masks of the main coronary segments (the union of the 25 SYNTAX "
    "segments; side branches visible but not annotated), split 140 train / 60 validation by "
    "recipes/arcade_split.json (seed 0); none of them is among the unlabeled pretraining images. CC BY 4.0."
)
# What every card says of its use, its limits and its data's licences
# (rendered into README.md beside card.json by presets.write_preset).
NOT_INTENDED_FOR = [
    "Clinical decisions of any kind: diagnosis, grading of stenoses, treatment planning, or any use on patients. "
    "It is not a medical device and has not been validated clinically or approved by any regulator.",
    "Measuring vessel diameters or the degree of a stenosis: the mask is a thresholded probability, not a "
    "calibrated outline.",
]
LICENCES = (
    "The weights are derived from the training images, so the data's terms travel with them; the package's "
    "Apache-2.0 licence covers the code, not the data. ARCADE is published under CC BY 4.0 (its Zenodo record): "
    "redistributing the weights or models derived from them requires crediting its authors (Popov et al., "
    "Scientific Data 2024). The CIMAT images come from the repository fercer/Coronary, under BSD-3-Clause: keep its "
    "copyright notice and cite Cervantes-Sanchez et al. with the weights. Neither source was checked for terms on "
    "commercial or clinical use: check both before using the weights beyond research."
)
SHARED_LIMITATIONS = [
    "Failure modes were not studied systematically: look at the overlays `cm-unet predict` writes before trusting "
    "a mask.",
    "A small network (width 16, 1.95M parameters), sized to train on a laptop CPU; the paper's width-64 network was "
    "not trained here.",
]
MASK_CONVENTION = {
    PRETRAINED: (
        'None of its own: its head was never trained. A model fine-tuned from it follows the convention of the masks it is fine-tuned on.'
    ),
    XCA: (
        "CIMAT's: the whole visible vessel tree, side branches and the guiding catheter included (the catheter is marked vessel). XCAD's and ARCADE's masks leave the catheter out: on such frames expect the catheter in the mask."
    ),
    GENERAL: (
        "Mixed, and so ambiguous: one output trained on CIMAT (tree_catheter: the whole tree, the guiding catheter included) and ARCADE (syntax: main SYNTAX segments only; side branches and the catheter unlabelled, trained as background) together, half its patches from each. It marks the catheter on some frames and not on others. Its one convention is declared tree_catheter, the wider of the two (every ARCADE vessel pixel is a tree_catheter vessel too; only ARCADE's background disagrees), so `--convention tree_catheter` is the only one it accepts. Fine-tune it on a few of your own masks to teach it your convention (docs/adaptation.md)."
    ),
}
# The mask conventions (cm_unet_keras.data.conventions) of each preset's
# outputs: what `--convention` accepts; none for a head never trained.
PRESET_CONVENTIONS = {PRETRAINED: [], XCA: ["tree_catheter"], GENERAL: ["tree_catheter"]}
CARD_TEXT = {
    PRETRAINED: {
        "intended_use": (
            "Research: the starting point for fine-tuning a U-Net on your own labelled X-ray angiograms "
            "(`cm-unet finetune --init cmunet_small_pretrained`), and for studying self-supervised pretraining. "
            "It does not segment by itself: `segment` and `cm-unet predict` refuse it."
        ),
        "not_intended_for": NOT_INTENDED_FOR,
        "limitations": [
            "Its segmentation head was never trained; only the encoder and decoder carry what pretraining learned.",
            "Pretrained on 1,230 angiograms of two public sources (ARCADE, and the CIMAT training images "
            "without their masks); other scanners, centres, projections and image sizes are untested.",
            "No metric of its own: it is judged through models fine-tuned from it, and its gain is small. On the "
            "10 validation pairs, fine-tuned with the same budget as a random start, it adds +0.011 Dice at 3 "
            "labelled pairs (5 seeds, interval -0.005 to +0.027), +0.012 at 10 and +0.008 at 30 (3 seeds each); "
            "it beat the random start in 10 of 11 paired runs, and both lose 15% of their Dice from 30 to 3 "
            "pairs (benchmarks/label_efficiency/results.md). The screen on the 27 other training pairs: +0.014 "
            "(3 pairs, 2 seeds; the previous 1,200-step pretraining: +0.009; benchmarks/pretrain_screen/results.md).",
            "With a handful of labelled pairs, fine-tune it for about 500 steps (`--epochs 5`), not the default "
            "2,000: at 3 pairs its selection-pair Dice peaks at 500 steps (0.701, against 0.694 at 2,000; 5 seeds) "
            "while a random start needs 2,000 (4,000 add +0.003), and on the validation pairs 500 steps gave +0.017 over the "
            "random start at 2,000 (interval -0.013 to +0.047, 4 of 5 seeds; `cmunet@500` in "
            "benchmarks/label_efficiency/results.md), in a quarter of the time. With tens of pairs keep 2,000-4,000 "
            "steps.",
            *SHARED_LIMITATIONS,
        ],
        "mask_convention": MASK_CONVENTION[PRETRAINED],
        "conventions": PRESET_CONVENTIONS[PRETRAINED],
        "licences": LICENCES,
    },
    XCA: {
        "intended_use": (
            "Research on coronary vessel segmentation in X-ray angiography: a baseline to compare with, a model "
            "to try the package on real angiograms, and a starting point to fine-tune on your own labels. It "
            "gives a vessel probability and mask for a grey angiogram frame of any size."
        ),
        "not_intended_for": NOT_INTENDED_FOR,
        "limitations": [
            "Trained on few images from few sources: 30 labelled 300x300 angiograms of one public database "
            "(CIMAT), after pretraining on 1,230 unlabeled angiograms of ARCADE and CIMAT. Scanners, "
            "centres, projections, frame rates and patient groups outside these sources are untested.",
            "Validated on only 10 angiograms of the same database as its training pairs, with no independent "
            "test set; the fine-tuning budget was chosen on those 10, so their Dice (0.77) is optimistic for "
            "new data.",
            "The probabilities are not calibrated; the mask thresholds them at 0.5 and is cleared outside the "
            "detected field of view.",
            *SHARED_LIMITATIONS,
        ],
        "mask_convention": MASK_CONVENTION[XCA],
        "conventions": PRESET_CONVENTIONS[XCA],
        "licences": LICENCES,
    },
    GENERAL: {
        "intended_use": (
            "Research on coronary vessel segmentation in X-ray angiography on frames from scanners and sites other "
            "than one database's: the preset to try first on your own angiograms (512x512 cine frames with dark "
            "frame borders, collimators, other contrast and noise), and a starting point to fine-tune on your "
            "labels. Use cmunet_small_xca for CIMAT-like 300x300 images, where it is the specialist."
        ),
        "not_intended_for": NOT_INTENDED_FOR,
        "limitations": [
            "Trained on two public sources only: 30 CIMAT pairs with full vessel trees and 140 ARCADE pairs whose "
            "masks hold the main coronary segments only. Side branches of ARCADE were labelled background, so "
            "the model under-segments small branches on ARCADE-like frames; other scanners, centres, projections "
            "and patient groups are untested.",
            "Validated on 10 CIMAT, 60 ARCADE and 2 XCAD angiograms carved from the same sources; the training "
            "variant and budget were chosen on them, so their numbers are optimistic for new data.",
            "Adapting it to a new source with the few-label default (benchmarks/adaptation/results.md, docs/adaptation.md): with one labelled XCAD frame, Dice on the other XCAD frame fell (0.76 -> 0.59 and 0.74 -> 0.69, 100 steps at 5e-4); a generalist trained like it but without CIMAT reached 0.701 +- 0.039 on CIMAT from 3 CIMAT pairs (+0.037 over cmunet_small_pretrained, every draw). Score an adapted copy on a frame you held out before using it.",
            "The probabilities are not calibrated; the mask thresholds them at 0.5 and is cleared outside the "
            "detected field of view.",
            *SHARED_LIMITATIONS,
        ],
        "mask_convention": MASK_CONVENTION[GENERAL],
        "conventions": PRESET_CONVENTIONS[GENERAL],
        "licences": LICENCES,
    },
}
INPUT = (
    "One grey X-ray coronary angiogram at native resolution (trained on 300x300 CIMAT and 512x512 ARCADE frames; any "
    "size works, padded to a multiple of 16). `cm-unet predict`, `segment_angiogram` and the exported SavedModel take "
    "raw intensities (PNG/JPEG/TIFF 8 or 16 bit, grey or RGB, DICOM) and z-score them inside the field of view; the "
    "bare Keras model expects that normalised image as float32 [batch, H, W, 1]. Vessels are dark (contrast-filled). "
    "Output: vessel probability in [0, 1]; threshold 0.5."
)


def with_failure_modes(limitations, failure_modes):
    """A card's limitations with the line on what the model still gets wrong
    (`benchmarks/failure_modes.py`) in place of the shared line saying that
    nobody looked; unchanged when there is no such line."""
    if not failure_modes:
        return list(limitations)
    unstudied = SHARED_LIMITATIONS[0]
    return [failure_modes if line == unstudied else line for line in limitations]


def machine():
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'unknown'})"


def pretraining_summary(config, history, n_images, sittings=None):
    """One sentence: how long the pretraining ran, on what, with which views,
    in the precision its sittings resolved (`state.json`; older runs: the recipe's)."""
    steps = len(history) * int(config["steps_per_epoch"])
    hours = sum(float(row["seconds"]) for row in history) / 3600.0
    precision = (", ".join(sorted({s["precision"] for s in sittings})) if sittings
                 else config.get("precision", "auto"))
    where = "; ".join(sorted({s["machine"] for s in sittings})) if sittings else machine()
    return (f"{steps:,} steps of batch {config['batch_size']} ({steps * int(config['batch_size']):,} view pairs) "
            f"on {config['image_size']} px \"{config.get('views', 'shift')}\" views of {n_images:,} unlabeled angiograms, "
            f"{hours:.1f} h on {where} in {precision} precision")


def pretraining_record(config, history, n_images, sittings=None):
    """A pretrained card's `training` and `final_losses`, from the run's recipe, history and sittings."""
    steps = len(history) * int(config["steps_per_epoch"])
    return {
        "training": {"pretrain_config": config, "n_images": n_images, "epochs_done": len(history), "steps": steps,
                     "views_seen": steps * int(config["batch_size"]),
                     "summary": pretraining_summary(config, history, n_images, sittings),
                     **({"sittings": sittings} if sittings else {}),
                     "seconds": round(sum(float(row["seconds"]) for row in history), 1), "machine": machine()},
        "final_losses": {k: round(float(history[-1][k]), 4) for k in
                         ("loss", "reconstruction_loss", "contrastive_loss", "contrastive_accuracy")
                         if k in history[-1]},
    }


def pretrained_card(pretrain_run, unet, config, history, n_images, sittings=None):
    """The card of `cmunet_small_pretrained` (the study's pretraining; its
    runs recorded no sittings, so `sittings` is not read)."""
    return {
        "name": PRETRAINED,
        "kind": "pretrained",
        "file": "model.keras",
        "description": (
            "Small CM-UNet (U-Net width 16, 4 levels, 1.95M parameters) after contrastive masked pretraining "
            f"({pretraining_summary(config, history, n_images)}): encoder and decoder pretrained, segmentation head "
            "untrained. Fine-tune it on your labelled angiograms: `cm-unet finetune --init "
            "cmunet_small_pretrained ...`."
        ),
        **CARD_TEXT[PRETRAINED],
        "architecture": {"class": "CMUNet", "base_filters": unet.base_filters, "depth": unet.depth,
                         "parameters": int(unet.count_params())},
        "data": {"unlabeled": DATA["unlabeled"] + " Plus the 30 XCA training angiograms without their masks "
                 "(the 10 validation angiograms were never seen)."},
        **pretraining_record(config, history, n_images),
        "validation_metrics": "none by itself (no head); see benchmarks/label_efficiency/results.md for the "
                              "held-out Dice of models fine-tuned from this pretraining",
        "input": INPUT,
        "rebuild": COMMAND,
        "package_version": __version__,
    }


def build_pretrained(pretrain_run, root, overwrite, n_images, log=print, name=PRETRAINED, card_only=False):
    """Extract the U-Net of a pretraining run into a pretrained preset:
    `cmunet_small_pretrained` (card: `pretrained_card`) or
    `cmunet_small_pretrained_v2` (`pretrained_v2_card`). `card_only`
    rebuilds the card of the published preset (its ablation reads the
    protocol's newer rows) and keeps its model file byte for byte: a saved
    `.keras` file differs at each save, and a published one stays."""
    import csv

    import keras

    pretrain_run = Path(pretrain_run)
    weights = pretrain_run / "pretrained.weights.h5"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: run `cm-unet study --stage pretrain` first")
    history = list(csv.DictReader((pretrain_run / "history.csv").read_text().splitlines()))
    state = pretrain_run / "state.json"
    sittings = json.loads(state.read_text()).get("sittings") if state.is_file() else None
    config = read_recipe(pretrain_run / "config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        if card_only:
            shutil.copyfile(presets.verified_preset_path(name, root), path)
            unet = keras.models.load_model(path, safe_mode=True, compile=False)
        else:
            with float32_policy():
                unet = load_model_file(weights)
            unet.save(path)
            keras.models.load_model(path, safe_mode=True, compile=False)  # what users will do
        make_card = pretrained_v2_card if name == PRETRAINED_V2 else pretrained_card
        card = make_card(pretrain_run, unet, config, history, n_images, sittings)
        card_path = presets.write_preset(name, [path], card, root, overwrite or card_only)
    log(f"wrote {card_path}" + (" (card only; model file kept)" if card_only else ""))
    return card_path


def build_xca(data_root, split, runs, root, overwrite, log=print, name=XCA, failure_modes=None):
    """Fine-tune the XCA preset from the pretrained preset and publish it;
    `name=XCA_V2` starts from `cmunet_small_pretrained_v2` instead, and
    `failure_modes` is the card's line on what it still gets wrong."""
    from cm_unet_keras.experiments.runs import finetune_and_evaluate

    os.environ[presets.ENV_VAR] = str(root)  # `init` names the preset in this root
    init = PRETRAINED_V2 if name == XCA_V2 else PRETRAINED
    train, validation = study_data(data_root, split)
    config = FinetuneConfig(**{**XCA_CONFIG, "init": init})
    started = time.perf_counter()
    fit, report = finetune_and_evaluate(config, train, validation, runs, log=log, verbose=2, val_records=validation)
    text = CARD_TEXT[XCA]
    if name == XCA_V2:
        pool = presets.preset_card(PRETRAINED_V2, root)["training"]["n_images"]
        text = {**text, "limitations": [
            "Trained on few images from few sources: 30 labelled 300x300 angiograms of one public database "
            f"(CIMAT), after pretraining on {pool:,} unlabeled angiograms of ARCADE and CIMAT, none of a test split "
            f"({PRETRAINED_V2}). Scanners, centres, projections, frame rates and patient groups outside these "
            "sources are untested.", *text["limitations"][1:]]}
    text = {**text, "limitations": with_failure_modes(text["limitations"], failure_modes)}
    card = {
        "name": name,
        "kind": "finetuned",
        "file": "model.keras",
        "description": (
            "Small CM-UNet (U-Net width 16, 4 levels) for coronary vessel segmentation in X-ray angiograms: "
            f"{init} fine-tuned 2,000 steps on 30 labelled CIMAT angiograms, last epoch kept."
        ),
        **text,
        "architecture": {"class": "CMUNet", "base_filters": config.base_filters, "depth": config.depth},
        "data": {**DATA, "unlabeled": DATA_V2["unlabeled"]} if name == XCA_V2 else DATA,
        "training": {"finetune_config": config_to_dict(config), "n_train": fit["n_train"], "n_val": fit["n_val"],
                     "kept_epoch": fit["best_epoch"], "selection": config.select, "run_folder": Path(runs).name,
                     "seconds_this_call": round(time.perf_counter() - started, 1),
                     "machine": machine()},
        "validation_metrics": {
            "on": "the 10 validation pairs of recipes/xca_split.json, whole 300x300 images, threshold 0.5, "
                  "mirror padding, cleared outside the field of view shrunk by 4 px, no TTA",
            "caveat": "no epoch was chosen on these pairs (the last epoch is kept), but the fine-tuning budget and "
                      "the pretrained layers' learning-rate factor were chosen on them "
                      "(benchmarks/finetune_budget/results.md); no test set was used",
            "mean": {k: round(float(v), 4) for k, v in report["mean"].items()},
            "std": {k: round(float(v), 4) for k, v in report["std"].items()},
        },
        "input": INPUT,
        "rebuild": ("python recipes/build_presets.py --only pretrained_v2 --pretrain-run runs/pretrain_arcade && "
                    "python recipes/build_presets.py --only xca_v2"
                    + (f" --failure-modes benchmarks/failure_modes/{XCA_V2}_card.txt" if failure_modes else "")
                    if name == XCA_V2 else COMMAND),
        "package_version": __version__,
    }
    card_path = presets.write_preset(name, [fit["model_path"]], card, root, overwrite)
    log(f"wrote {card_path}: validation Dice {report['mean']['dice']:.4f} +- {report['std']['dice']:.4f}")
    return card_path


def build_general(data_root, runs, root, overwrite, log=print):
    """Fine-tune the multi-source preset from the pretrained preset, score it on every source, publish it."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import general

    os.environ[presets.ENV_VAR] = str(root)  # `init` names the preset in this root
    started = time.perf_counter()
    fit, config, scores = general.train(general.GENERAL_VARIANT, PRETRAINED, general.GENERAL_STEPS, 0, data_root,
                                        runs, log=log)
    reports = scores["reports"]
    metrics = {source: {"images": reports[source]["n_images"],
                        "mean": {k: round(float(v), 4) for k, v in reports[source]["mean"].items()},
                        "std": {k: round(float(v), 4) for k, v in reports[source]["std"].items()}}
               for source in reports}
    card = {
        "name": GENERAL,
        "kind": "finetuned",
        "file": "model.keras",
        "description": (
            "Small CM-UNet (U-Net width 16, 4 levels) for coronary vessel segmentation in X-ray angiograms from "
            f"several sources: {PRETRAINED} fine-tuned {general.GENERAL_STEPS:,} steps on 30 CIMAT pairs (full "
            "vessel trees) and 140 ARCADE pairs (main coronary segments only), half the patches from each"
            + (", with zoom and simulated frame-border augmentation" if "augment_borders" in
               general.VARIANTS[general.GENERAL_VARIANT][1] else "")
            + "; last epoch kept."
        ),
        **CARD_TEXT[GENERAL],
        "architecture": {"class": "CMUNet", "base_filters": config.base_filters, "depth": config.depth},
        "data": {**DATA, "partially_labelled": DATA_ARCADE_VESSELS},
        "training": {"finetune_config": config_to_dict(config), "variant": general.GENERAL_VARIANT,
                     "n_train": fit["n_train"], "run_folder": Path(runs).name,
                     "seconds_this_call": round(time.perf_counter() - started, 1), "machine": machine()},
        "validation_metrics": {
            "on": "the validation part of each source, whole images, the model's threshold (0.5), mirror padding, "
                  "cleared outside the field of view shrunk by 4 px, no TTA: CIMAT's 10 pairs of "
                  "recipes/xca_split.json, ARCADE's 60 pairs of recipes/arcade_split.json (main segments only: "
                  "read sensitivity; specificity and Dice count correctly found side branches as errors), the 2 "
                  "XCAD sample pairs (full trees)",
            "caveat": "the variant (sources, augmentation, unlabelled-vessel handling) and the budget were chosen "
                      "on these validation parts (benchmarks/cross_source/training.md); no test set was used",
            "sources": metrics,
        },
        "input": INPUT,
        "rebuild": "cm-unet study --stage pretrain && python recipes/build_presets.py --only pretrained && "
                   "python recipes/build_presets.py --only general",
        "package_version": __version__,
    }
    card_path = presets.write_preset(GENERAL, [fit["model_path"]], card, root, overwrite)
    log(f"wrote {card_path}: " + ", ".join(
        f"{source} Dice {m['mean']['dice']:.3f} sensitivity {m['mean']['sensitivity']:.3f}"
        for source, m in metrics.items()))
    return card_path


# --- The v2 presets (issue 31): ARCADE by its own protocol, a pool without a test split ---
PRETRAINED_V2 = "cmunet_small_pretrained_v2"
GENERAL_V2 = "cmunet_small_general_v2"
GENERAL_V3 = "cmunet_small_general_v3"
ARCADE_V2 = "cmunet_small_arcade_v2"
ARCADE_V3 = "cmunet_small_arcade_v3"
XCA_V2 = "cmunet_small_xca_v2"
PROTOCOL_RESULTS = ROOT / "benchmarks" / "arcade_protocol" / "results.jsonl"
DATA_V2 = {
    "unlabeled": (
        "Every unlabelled angiogram the project's rules allow, none of a test split (the pretraining run's "
        "images.json lists each file): ARCADE stenosis train and val (1,200) and ARCADE syntax train (1,000) and "
        "val (200) images, 512x512, labels ignored (Popov et al., Scientific Data 2024; CC BY 4.0 on its Zenodo "
        "record); the 40 CIMAT angiograms without their masks (fercer/Coronary, BSD-3-Clause)."
    ),
    "partially_labelled": (
        "ARCADE syntax task, train split: 1,000 angiograms 512x512 with the union of the 25 SYNTAX segment "
        "polygons (main segments; side branches visible but not annotated), imported by "
        "recipes/import_arcade_syntax.py from the ARCADE Zenodo record (CC BY 4.0); half of each step's patches. "
        "Its 200 validation pairs chose between runs and score the model; they were never trained on (refused by "
        "pixel content). Its test split was never read."
    ),
    "labelled": DATA["labelled"],
}
V2_CONVENTION = MASK_CONVENTION[GENERAL].replace(
    "half its patches from each", "half its patches from each (ARCADE's syntax train split here)")


def protocol_rows(results=PROTOCOL_RESULTS):
    """The ARCADE protocol's scored runs by name (`recipes/arcade_protocol.py`)."""
    from cm_unet_keras.experiments.store import read_jsonl

    return read_jsonl(Path(results), lambda row: row["run"])


def run_shape(row):
    """What a protocol run trains besides its start: network, patches, steps,
    seed and sources (rows older than a setting hold the protocol's default)."""
    return (row["base_filters"], row.get("depth", 4), row.get("patch_size", 128), row.get("batch_size", 8),
            row["steps"], row["seed"], row.get("sources", "both"), bool(row.get("conventions")))


def ablation_rows(rows, pretrain_run):
    """(seed, pretrained row, random-start row) for every seed where a start
    from `pretrain_run` and a random start share everything else (`run_shape`)."""
    starts = [row for row in rows.values() if row.get("init") and Path(row["init"]).name == Path(pretrain_run).name]
    random = [row for row in rows.values() if row.get("init") is None]
    pairs = [(row["seed"], row, other) for row in starts for other in random if run_shape(other) == run_shape(row)]
    return sorted(pairs, key=lambda pair: pair[0])


def ablation_summary(rows, pretrain_run):
    """What the pretraining is worth on ARCADE's protocol: a sentence per
    setting (everything of `run_shape` but the seed), paired over its seeds."""
    pairs = ablation_rows(rows, pretrain_run)
    if not pairs:
        return "Not yet fine-tuned by the ARCADE protocol from both starts: its worth there is unmeasured."
    settings = {}
    for seed, row, other in pairs:
        settings.setdefault(run_shape(row)[:5] + run_shape(row)[6:], []).append((seed, row, other))
    sentences = []
    for group in settings.values():
        first = group[0][1]
        differences = {part: [row["mean"][part]["dice"] - other["mean"][part]["dice"] for _, row, other in group]
                       for part in ("arcade_val", "cimat", "xcad")}
        per_seed = ", ".join(signed(d) for d in differences["arcade_val"])
        sources = " on ARCADE's pairs alone" if first.get("sources", "both") == "arcade" else ""
        sentences.append(
            f"Fine-tuned by the ARCADE protocol{sources} ({first['batch_size']} x {first['patch_size']} px "
            f"patches, {first['steps']:,} steps) from it and from a random start with the same seeds "
            f"({', '.join(str(seed) for seed, _, _ in group)}): ARCADE validation Dice "
            f"{np.mean([row['mean']['arcade_val']['dice'] for _, row, _ in group]):.3f} against "
            f"{np.mean([other['mean']['arcade_val']['dice'] for _, _, other in group]):.3f}, paired over seeds "
            f"{signed(np.mean(differences['arcade_val']))} (per seed {per_seed}); CIMAT "
            f"{signed(np.mean(differences['cimat']))}, XCAD {signed(np.mean(differences['xcad']))}.")
    return " ".join(sentences) + " The runs: benchmarks/arcade_protocol/results.md."


def signed(value):
    """`value` to 3 decimals with its sign, +0.000 rather than -0.000."""
    return f"{round(float(value), 3) + 0.0:+.3f}"


def pretrained_v2_card(pretrain_run, unet, config, history, n_images, sittings=None):
    """The card of `cmunet_small_pretrained_v2`: the pool, the views' scale, its worth on ARCADE's protocol."""
    summary = pretraining_summary(config, history, n_images, sittings)
    return {
        "name": PRETRAINED_V2,
        "kind": "pretrained",
        "file": "model.keras",
        "description": (
            "Small CM-UNet (U-Net width 16, 4 levels, 1.95M parameters) after contrastive masked pretraining "
            f"({summary}), with views at the scale of native-resolution fine-tuning "
            "(recipes/pretrain_arcade.yaml) and a pool without any test split: encoder and decoder pretrained, "
            f"segmentation head untrained. Fine-tune it: `cm-unet finetune --init {PRETRAINED_V2} ...`. It replaces "
            f"{PRETRAINED}, whose pool held ARCADE's 300 stenosis test images."
        ),
        "intended_use": CARD_TEXT[PRETRAINED]["intended_use"].replace(PRETRAINED, PRETRAINED_V2),
        "not_intended_for": NOT_INTENDED_FOR,
        "limitations": [
            "Its segmentation head was never trained; only the encoder and decoder carry what pretraining learned.",
            f"Pretrained on {n_images:,} angiograms of two public sources (ARCADE, CIMAT); other scanners, centres, "
            "projections and image sizes are untested.",
            ablation_summary(protocol_rows(), pretrain_run),
            *SHARED_LIMITATIONS,
        ],
        "mask_convention": MASK_CONVENTION[PRETRAINED],
        "conventions": [],
        "licences": LICENCES,
        "architecture": {"class": "CMUNet", "base_filters": unet.base_filters, "depth": unet.depth,
                         "parameters": int(unet.count_params())},
        "data": {"unlabeled": DATA_V2["unlabeled"]},
        **pretraining_record(config, history, n_images, sittings),
        "validation_metrics": "none by itself (no head); see benchmarks/arcade_protocol/results.md for the "
                              "validation Dice of models fine-tuned from this pretraining",
        "input": INPUT,
        "rebuild": "cm-unet pretrain --config recipes/pretrain_arcade.yaml --out runs/pretrain_arcade --images "
                   "(the folders in its header) && python recipes/build_presets.py --only pretrained_v2 "
                   "--pretrain-run runs/pretrain_arcade",
        "package_version": __version__,
    }


def portable_init(init):
    """A start as another checkout names it: a pretraining run by its folder
    under `runs/` (never this machine's absolute path), a preset by its name."""
    return f"runs/{Path(init).name}" if init is not None and Path(init).is_absolute() else init


def portable_config(config):
    """A run's fine-tuning recipe as a card records it (`portable_init`)."""
    return {**config, "init": portable_init(config.get("init"))} if "init" in config else config


def protocol_command(row):
    """The `recipes/arcade_protocol.py` command that trains the run of `row`."""
    init = portable_init(row.get("init"))
    init = "" if init is None else f" --init {init}"
    return (f"python recipes/arcade_protocol.py --arcade-train data/arcade_syntax_train --base-filters "
            f"{row['base_filters']} --depth {row['depth']} --patch-size {row['patch_size']} --batch-size "
            f"{row['batch_size']} --steps {row['steps']} --seed {row['seed']}{init}"
            + (" --sources arcade" if row.get("sources", "both") == "arcade" else ""))


# The sources each protocol preset is trained on (the protocol's `--sources`),
# and the one convention its output follows.
PROTOCOL_PRESETS = {GENERAL_V2: ("both", "tree_catheter"), ARCADE_V2: ("arcade", "syntax"),
                    GENERAL_V3: ("both", "tree_catheter"), ARCADE_V3: ("arcade", "syntax")}
# The protocol preset each one replaces: publishing it names it on the old card (`mark_superseded`).
PREDECESSORS = {GENERAL_V3: GENERAL_V2, ARCADE_V3: ARCADE_V2}
# The whole-tree preset that ARCADE's syntax presets point to.
GENERAL_NOW = GENERAL_V3


SETTING = ("sources", "base_filters", "depth", "patch_size", "batch_size", "steps", "conventions")


def setting_seeds(rows, row):
    """`{seed: ARCADE validation Dice}` of the scored protocol runs of `row`'s
    setting (`SETTING`, and a pretrained or a random start: a pretraining
    run's folder and the preset made from it are the same weights)."""
    def setting(other):
        return tuple(other.get(field, "both" if field == "sources" else None) for field in SETTING) + (
            other.get("init") is None,)

    return {other["seed"]: other["mean"]["arcade_val"]["dice"]
            for other in sorted(rows.values(), key=lambda other: other["seed"]) if setting(other) == setting(row)}


def seeds_limitation(row, seeds):
    """The card's line on seeds: the run's, beside its setting's other seeds when there are some."""
    chosen = ("the setting was chosen on these validation pairs among the protocol's runs "
              "(benchmarks/arcade_protocol/results.md), so its numbers are optimistic for new data")
    if len(seeds) < 2:
        return (f"One run of seed {row['seed']}: a second seed of one setting of the protocol moved ARCADE "
                f"validation Dice by 0.018 (docs/results.md), and {chosen} by about that much.")
    values, dice = ", ".join(f"{v:.3f} (seed {seed})" for seed, v in seeds.items()), list(seeds.values())
    return (f"One run of seed {row['seed']}; its setting's {len(seeds)} seeds scored ARCADE validation Dice "
            f"{values}: mean {np.mean(dice):.3f}, range {max(dice) - min(dice):.3f} (docs/results.md), and "
            f"{chosen}.")


def protocol_preset_text(name, row, start, mean, seeds=None):
    """What differs between the protocol presets' cards: description, use,
    first limitations, convention and data, from the run's `row` and its
    setting's `seeds` (`setting_seeds`)."""
    schedule = schedule_words(row).replace(" px patches", " px native-resolution patches")
    chosen = seeds_limitation(row, seeds or {})
    below = (f"Below the field's published results on ARCADE's validation split (Dice {mean['arcade_val']:.3f} here, "
             "0.767 for MedSAM2 fine-tuned) and issue 31's targets (ARCADE 0.80, CIMAT 0.80, XCAD 0.78): see "
             "docs/results.md.")
    data = DATA_V2 if row.get("init") else {k: v for k, v in DATA_V2.items() if k != "unlabeled"}
    if PROTOCOL_PRESETS[name][0] == "both":
        return {
            "description": (
                "Small CM-UNet (U-Net width 16, 4 levels) for coronary vessel segmentation in X-ray angiograms, "
                f"trained by ARCADE's own protocol (recipes/arcade_protocol.py): from {start}, {schedule}, half "
                "from ARCADE's 1,000 syntax-train pairs (main segments) and half from 30 CIMAT pairs (full "
                "trees), last epoch kept; chosen on ARCADE's 200 validation pairs."),
            "intended_use": CARD_TEXT[GENERAL]["intended_use"].replace(GENERAL, name).replace(XCA, XCA_V2),
            "limitations": [
                "Trained on two public sources only: 1,000 ARCADE syntax-train pairs whose masks hold the main "
                "coronary segments only (side branches visible but unlabelled, trained as background) and 30 CIMAT "
                "pairs with full trees; other scanners, centres, projections and patient groups are untested.",
                chosen, below],
            "mask_convention": V2_CONVENTION,
            "data": data,
        }
    return {
        "description": (
            "Small CM-UNet (U-Net width 16, 4 levels) that segments the main coronary segments the way ARCADE's "
            "syntax task labels them (the union of the 25 SYNTAX segments; side branches and the catheter left "
            f"out), trained by ARCADE's own protocol (recipes/arcade_protocol.py --sources arcade): from {start}, "
            f"{schedule}, all from ARCADE's 1,000 syntax-train pairs, last epoch kept; chosen on ARCADE's 200 "
            "validation pairs."),
        "intended_use": (
            "Research on the main coronary segments of X-ray angiograms as ARCADE labels them: comparisons with "
            "results published on ARCADE's syntax task, and a start for SYNTAX-segment work on 512x512 cine frames. "
            f"It is not a whole-tree segmenter: for every visible vessel use {GENERAL_NOW}."),
        "limitations": [
            "Trained on one public source only: 1,000 ARCADE syntax-train pairs (512x512); other scanners, centres, "
            "projections and patient groups are untested.",
            "It leaves side branches out by design, so its Dice against whole-tree masks is low (CIMAT "
            f"{mean['cimat']:.3f}, XCAD {mean['xcad']:.3f} on this card): those numbers mostly measure the "
            "convention, but CIMAT's 300 px frames were never in its training and on the faintest of them it "
            "misses proximal segments too (the failure modes below).",
            chosen, below],
        "mask_convention": (
            "ARCADE syntax (`syntax`): the 25 SYNTAX main segments only. Visible side branches, the guiding "
            "catheter and everything else are background, as in ARCADE's syntax masks; `--convention syntax` is "
            "the only one it accepts."),
        "data": {k: (v.replace("half of each step's patches", "every patch") if k == "partially_labelled" else v)
                 for k, v in data.items() if k != "labelled"},
    }


def build_protocol_preset(name, protocol_run, root, overwrite, results=PROTOCOL_RESULTS, failure_modes=None,
                          log=print):
    """Publish an ARCADE protocol run (`recipes/arcade_protocol.py`), scored in
    `results`, as the protocol preset `name` (`PROTOCOL_PRESETS`: the run's
    sources must be that preset's); its card takes the run's numbers from its
    row and, when given, the failure modes looked at on its frames."""
    import keras

    from cm_unet_keras.core.errors import InvalidInputError

    if name not in PROTOCOL_PRESETS:
        raise ValueError(f"unknown protocol preset {name!r}: choose one of {', '.join(PROTOCOL_PRESETS)}")
    run = Path(protocol_run)
    rows = protocol_rows(results)
    if run.name not in rows:
        raise InvalidInputError(run, f"not a scored run of {results}: train and score it with "
                                "recipes/arcade_protocol.py first")
    row = rows[run.name]
    if row.get("conventions"):
        raise InvalidInputError(run, f"has one output per convention; {name} has one output")
    sources, convention = PROTOCOL_PRESETS[name]
    trained_on = row.get("sources", "both")
    if trained_on != sources:
        others = " or ".join(n for n, (s, _) in PROTOCOL_PRESETS.items() if s == trained_on)
        raise InvalidInputError(run, f"was trained on sources {trained_on!r}, {name} on {sources!r}: publish it "
                                f"as {others}")
    model_path = run / "model.keras"
    if not model_path.is_file():
        raise InvalidInputError(model_path, "not found: the run has not finished")
    model = keras.models.load_model(model_path, safe_mode=True, compile=False)  # what users will do
    names = {"arcade_val": "ARCADE syntax validation (200, main segments)", "cimat": "CIMAT validation (10)",
             "xcad": "XCAD sample (2)"}
    scored = {part: {"images": len(row["per_image"][part]),
                     # 6 digits: a card rounds them again to 3 for people (0.74447 kept as 0.7445 showed 0.745)
                     "mean": {k: round(float(v), 6) for k, v in row["mean"][part].items()},
                     "std": {k: round(float(v), 6) for k, v in row["std"][part].items()}}
              for part in ("arcade_val", "cimat", "xcad")}
    mean = {part: float(row["mean"][part]["dice"]) for part in scored}  # unrounded: the card's text rounds once
    start = ("a random start" if row.get("init") is None
             else f"{PRETRAINED_V2} (the shipped preset)" if Path(row["init"]).name == PRETRAINED_V2
             else f"{PRETRAINED_V2} (pretraining run {Path(row['init']).name})")
    text = protocol_preset_text(name, row, start, mean, setting_seeds(rows, row))
    limitations = text["limitations"] + [
        "The probabilities are not calibrated; the mask thresholds them at 0.5 and is cleared outside the detected "
        "field of view.",
    ]
    old, before = PREDECESSORS.get(name), predecessor_dice(name, root)
    parts = ("arcade_val", "cimat", "xcad") if sources == "both" else ("arcade_val",)  # syntax: ARCADE's alone
    lost = [part for part in parts if before and mean[part] < before[part] - 0.01]
    if lost:
        limitations.append(
            f"Below {old}, which it replaces, on " + ", ".join(
                f"{PART_WORDS[part]} ({mean[part]:.3f} against {before[part]:.3f}, {len(row['per_image'][part])} "
                "images)" for part in lost)
            + ": its gains elsewhere did not carry to every source; check it on frames of your own before "
              "switching.")
    limitations = with_failure_modes(limitations + SHARED_LIMITATIONS, failure_modes)
    card = {
        "name": name,
        "kind": "finetuned",
        "file": "model.keras",
        "description": text["description"],
        "intended_use": text["intended_use"],
        "not_intended_for": NOT_INTENDED_FOR,
        "limitations": limitations,
        "mask_convention": text["mask_convention"],
        "conventions": [convention],
        "licences": LICENCES,
        "architecture": {"class": "CMUNet", "base_filters": row["base_filters"], "depth": row["depth"],
                         "parameters": int(model.count_params())},
        "data": text["data"],
        "training": {"finetune_config": portable_config(read_recipe(run / "config.yaml")), "protocol_run": run.name,
                     "seconds": row["train_seconds"], "machine": row["machine"],
                     "load_average_at_end": row.get("load_average_at_end"), "note": row.get("note", "")},
        "validation_metrics": {
            "on": "whole images at native resolution, threshold 0.5, mirror padding, cleared outside the field of "
                  "view, no TTA: " + "; ".join(names.values()) + ". ARCADE's masks hold main segments only: its "
                  "Dice (the published metric) counts found side branches as errors",
            "caveat": "the run was chosen among the protocol's runs on ARCADE's validation pairs (the last epoch "
                      "is kept, no epoch was chosen); no test split was used",
            "headline": {part: "dice" for part in scored},
            "sources": scored,
        },
        "input": INPUT if sources == "both" else INPUT.replace("300x300 CIMAT and 512x512 ARCADE frames",
                                                                "512x512 ARCADE frames"),
        "rebuild": protocol_command(row) + f" && python recipes/build_presets.py --only "
                                           f"{name.removeprefix('cmunet_small_')} --protocol-run "
                                           f"runs/arcade_protocol/{run.name}"
                   + (f" --failure-modes benchmarks/failure_modes/{run.name}_card.txt" if failure_modes else ""),
        "package_version": __version__,
    }
    card_path = presets.write_preset(name, [model_path], card, root, overwrite)
    log(f"wrote {card_path}: " + ", ".join(f"{part} Dice {value:.3f}" for part, value in mean.items()))
    if before:
        reason = (f"{name} is trained by the same protocol on the same sources for {schedule_words(row)} and "
                  "scores validation Dice " + ", ".join(f"{PART_WORDS[part]} {mean[part]:.3f} against its "
                                                        f"{before[part]:.3f}" for part in parts) + ".")
        log(f"marked {mark_superseded(old, name, root, reason)} superseded by {name}")
    return card_path


PART_WORDS = {"arcade_val": "ARCADE", "cimat": "CIMAT", "xcad": "XCAD"}


def predecessor_dice(name, root):
    """`{part: validation Dice}` of the published preset that `name` replaces
    (`PREDECESSORS`), or None when there is none in `root`."""
    old = PREDECESSORS.get(name)
    if old is None or not (Path(root) / old / "card.json").is_file():
        return None
    sources = presets.preset_card(old, root)["validation_metrics"]["sources"]
    return {part: m["mean"]["dice"] for part, m in sources.items()}


def schedule_words(row):
    """A protocol run's schedule in the words of its card."""
    return f"{row['steps']:,} steps of {row['batch_size']} x {row['patch_size']} px patches"


def mark_superseded(name, successor, root, reason):
    """Name `successor` on the card of preset `name` (`superseded_by`, and the
    first limitation, with `reason`), leaving its model file as it is. Its
    fine-tuning recipe's start is written as another checkout names it
    (`portable_config`). Returns the card's path."""
    path = Path(root) / name / "card.json"
    card = json.loads(path.read_text())
    training = card.get("training", {})
    if "finetune_config" in training:
        training = {**training, "finetune_config": portable_config(training["finetune_config"])}
    limitations = [line for line in card["limitations"] if not line.startswith("Superseded by ")]
    card = {**card, "training": training, "superseded_by": successor, "limitations": [
        f"Superseded by {successor} (issue 31): {reason} It stays only so that results made with it can be "
        "reproduced.", *limitations]}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n"))
    atomic_write(path.with_name(presets.CARD_README), lambda tmp: Path(tmp).write_text(presets.render_card(card)))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-run", default=str(ROOT / "runs/label_efficiency/pretrain/cmunet"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--split", default=str(ROOT / "recipes/xca_split.json"))
    parser.add_argument("--runs", default=str(ROOT / "runs/presets/cmunet_small_xca"), help="fine-tuning run folder")
    parser.add_argument("--root", default=str(ROOT / "saved_models"), help="presets folder")
    parser.add_argument("--general-runs", default=str(ROOT / "runs/presets/cmunet_small_general"),
                        help="fine-tuning run folder of the general preset")
    parser.add_argument("--only", choices=["pretrained", "xca", "general", "pretrained_v2", "xca_v2", "general_v2",
                                                "arcade_v2", "general_v3", "arcade_v3"],
                        help="build one preset (default the first three, in order; the v2 and v3 presets by name)")
    parser.add_argument("--protocol-run", help="general_v2, arcade_v2, general_v3, arcade_v3: the ARCADE protocol run "
                        "folder to publish")
    parser.add_argument("--failure-modes", help="xca_v2 and the protocol presets: a file with the line on what it "
                        "still gets wrong (benchmarks/failure_modes/<label>_card.txt)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing presets")
    parser.add_argument("--card-only", action="store_true",
                        help="pretrained_v2: rebuild the published preset's card (its ablation from the protocol's "
                        "newest rows), keeping its model file")
    args = parser.parse_args(argv)
    if args.only in (None, "pretrained"):
        train, _ = study_data(args.data, args.split)
        build_pretrained(args.pretrain_run, args.root, args.overwrite, len(unlabeled_pool(args.data, train)))
    if args.only in (None, "xca"):
        build_xca(args.data, args.split, args.runs, args.root, args.overwrite)
    if args.only in (None, "general"):
        build_general(args.data, args.general_runs, args.root, args.overwrite)
    if args.only == "pretrained_v2":
        pool = json.loads((Path(args.pretrain_run) / "images.json").read_text())
        build_pretrained(args.pretrain_run, args.root, args.overwrite, pool["count"], name=PRETRAINED_V2,
                         card_only=args.card_only)
    failure_modes = Path(args.failure_modes).read_text().strip() if args.failure_modes else None
    if args.only == "xca_v2":
        runs = args.runs if args.runs != parser.get_default("runs") else str(ROOT / "runs/presets" / XCA_V2)
        build_xca(args.data, args.split, runs, args.root, args.overwrite, name=XCA_V2, failure_modes=failure_modes)
    if f"cmunet_small_{args.only}" in PROTOCOL_PRESETS:
        if not args.protocol_run:
            parser.error(f"--only {args.only} needs --protocol-run")
        build_protocol_preset(f"cmunet_small_{args.only}", args.protocol_run, args.root, args.overwrite,
                              failure_modes=failure_modes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
