"""`cm-unet demo`: the whole pipeline on synthetic angiograms, in minutes on a CPU.

Synthesises labelled angiograms, fine-tunes a small U-Net on a few of them
(validation split carved from the training side), evaluates it on held-out
synthetic angiograms, segments them and writes `report.md` with the metrics
table, the training curves and overlay pictures. Then the method in brief:
CM-UNet pretraining on unlabeled synthetic angiograms, and fine-tuning with
few labels from it and from scratch, same budget and seed (one seed, a
demonstration of the workflow, not evidence: see the label-efficiency study).
"""

import dataclasses
import time
from pathlib import Path

from cm_unet_keras.config import FinetuneConfig, PretrainConfig
from cm_unet_keras.data.layouts import index_images_masks, index_unlabeled
from cm_unet_keras.data.synthetic import write_synthetic_dataset
from cm_unet_keras.evaluation.evaluate import evaluate_model, format_markdown, write_report
from cm_unet_keras.inference.predict import load_model, predict_files
from cm_unet_keras.training.finetune import finetune
from cm_unet_keras.training.pretrain import pretrain

# Sizes of the default demo and of the smoke test (`quick`).
DEMO = {"train": 16, "test": 8, "size": 256, "epochs": 12, "steps_per_epoch": 20,
        "unlabeled": 48, "view": 64, "pretrain_epochs": 3, "pretrain_steps": 15, "few": 4, "few_epochs": 6}
QUICK = {"train": 4, "test": 2, "size": 64, "epochs": 2, "steps_per_epoch": 3,
         "unlabeled": 4, "view": 32, "pretrain_epochs": 1, "pretrain_steps": 1, "few": 3, "few_epochs": 1}


def run_demo(out_dir, quick=False, log=print):
    """Run the demo into `out_dir`; returns the path of `report.md`."""
    sizes = QUICK if quick else DEMO
    out_dir = Path(out_dir)
    started = time.perf_counter()
    write_synthetic_dataset(out_dir / "data" / "train", sizes["train"], size=sizes["size"], seed=1)
    write_synthetic_dataset(out_dir / "data" / "test", sizes["test"], size=sizes["size"], seed=2)
    train = index_images_masks(out_dir / "data" / "train" / "images", out_dir / "data" / "train" / "masks")
    test = index_images_masks(out_dir / "data" / "test" / "images", out_dir / "data" / "test" / "masks")

    config = FinetuneConfig(
        base_filters=8 if quick else 16,
        depth=2 if quick else 4,
        epochs=sizes["epochs"],
        steps_per_epoch=sizes["steps_per_epoch"],
        batch_size=2 if quick else 8,
        patch_size=64 if quick else 128,
        val_fraction=0.25,
        seed=0,
    )
    log(f"fine-tuning a U-Net (base_filters={config.base_filters}) on {len(train)} synthetic angiograms")
    result = finetune(config, train, out_dir / "run", log=log, verbose=2)

    model = load_model(result["model_path"])
    report = evaluate_model(model, test)
    write_report(report, out_dir / "evaluation.json")
    predictions = predict_files(model, [str(out_dir / "data" / "test" / "images")], out_dir / "predictions", log=log)
    few_labels = pretrained_vs_scratch(out_dir, sizes, config, train, test, log)
    minutes = (time.perf_counter() - started) / 60
    return write_markdown(out_dir, report, result, predictions, len(train), minutes, few_labels, sizes["few"])


def pretrained_vs_scratch(out_dir, sizes, config, train, test, log):
    """Pretrain on unlabeled synthetic angiograms; fine-tune few labels from it and from scratch."""
    unlabeled = out_dir / "data" / "unlabeled"
    write_synthetic_dataset(unlabeled, sizes["unlabeled"], size=sizes["size"], seed=3)
    pretrain_config = PretrainConfig(
        base_filters=config.base_filters, depth=config.depth, image_size=sizes["view"], working_size=None,
        batch_size=config.batch_size, epochs=sizes["pretrain_epochs"], steps_per_epoch=sizes["pretrain_steps"],
        warmup_epochs=0, lr=1e-3, seed=0,
    )
    log(f"CM-UNet pretraining on {sizes['unlabeled']} unlabeled synthetic angiograms")
    pretrain(pretrain_config, index_unlabeled([unlabeled / "images"]), out_dir / "pretrain", log=log, verbose=2)
    scores = {}
    for init in ("scratch", "pretrained"):
        few = dataclasses.replace(
            config, limit=sizes["few"], epochs=sizes["few_epochs"], val_fraction=0.0,
            init=str(out_dir / "pretrain") if init == "pretrained" else None,
        )
        log(f"fine-tuning with {sizes['few']} labelled angiograms from {init}")
        fitted = finetune(few, train, out_dir / f"few_labels_{init}", log=log, verbose=2)
        scores[init] = evaluate_model(load_model(fitted["model_path"]), test)
    return scores


def write_markdown(out_dir, report, result, predictions, n_train, minutes, few_labels, few_labels_n):
    overlays = "\n".join(
        f"![{Path(p['overlay']).stem}](predictions/{Path(p['overlay']).name})" for p in predictions[:4]
    )
    few_labels_rows = "\n".join(
        f"| {init} | {scores['mean']['dice']:.3f} | {scores['mean']['cldice']:.3f} | {scores['mean']['hd95']:.1f} |"
        for init, scores in few_labels.items()
    )
    text = f"""# cm-unet demo on synthetic angiograms

A small U-Net trained on {n_train} synthetic angiograms ({result["n_train"]} for training,
{result["n_val"]} watched for validation; the last epoch,
{result['best_epoch']}, is kept: validation Dice {result['best_val_dice']:.3f}), evaluated on
{report['n_images']} held-out synthetic angiograms at native resolution.
Wall time {minutes:.1f} min.

## Metrics (held-out synthetic angiograms)

{format_markdown(report)}

HD95 is in pixels. Per-image values: `evaluation.json`.

## Few labels: CM-UNet pretraining vs scratch

Fine-tuned with {few_labels_n} labelled angiograms (all of them train; last epoch kept), same
budget and seed, after CM-UNet pretraining on unlabeled synthetic angiograms (`pretrain/`) or from
scratch; held-out synthetic angiograms. One seed: a demonstration, not evidence.

| start | dice | cldice | hd95 |
|---|---|---|---|
{few_labels_rows}

## Training curves

![curves](run/curves.png)

## Predictions (vessels in red)

{overlays}
"""
    path = Path(out_dir) / "report.md"
    path.write_text(text)
    return path
