"""How far did pretraining move the U-Net from where it started? (issue 13)

Issue 13 opened on "pretraining barely moves the weights": after the first
1,200-step CPU pretraining the first convolution had moved 0.05 of its norm
and the BatchNorm gammas stayed within 0.03 of 1. This measures the same for
any pretraining: each U-Net weight after pretraining against the weights the
run started from (a fresh pretrainer of the same seed, in the backend that
trained it), as the relative change ||w - w0|| / ||w0|| of each
convolution kernel, summarised by part of the U-Net, and the largest
|gamma - 1| of its BatchNorm layers.

    python benchmarks/weight_change.py \\
        --start shift_1200=git:747a832:saved_models/cmunet_small_pretrained/model.keras \\
        --start crops_6000=runs/label_efficiency/pretrain/cmunet \\
        --start mae_only_6000=runs/label_efficiency/pretrain/mae_only \\
        --start gpu_b256=runs/pretrain_gpu/b256 --jax-python /tmp/jaxenv/bin/python

A start is a pretraining run folder (`cm-unet pretrain`, or
`recipes/pretrain_jax.py import`: its initial weights are drawn by JAX, with
`--jax-python`, a Python that has JAX and Keras), a `.keras` U-Net (seed 60,
the study's), or `git:REV:PATH` for a file of an earlier commit. Writes
`benchmarks/pretrain_screen/weight_change.md`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "pretrain_screen" / "weight_change.md"
PARTS = ("first convolution", "encoder", "bottleneck", "decoder")


def part_of(layer_name):
    if layer_name == "encoder_level0_conv1":
        return "first convolution"
    for prefix, part in (("encoder", "encoder"), ("bottleneck", "bottleneck"), ("decoder", "decoder")):
        if layer_name.startswith(prefix):
            return part
    return None


def trained_unet(source):
    """(U-Net after pretraining, its pretrainer settings or None)."""
    from cm_unet_keras.models.loading import load_pretrainer, load_unet

    if source.startswith("git:"):
        _, revision, path = source.split(":", 2)
        blob = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, check=True).stdout
        folder = Path(tempfile.mkdtemp())
        (folder / Path(path).name).write_bytes(blob)
        return load_unet(folder / Path(path).name), None
    path = Path(source)
    if path.is_dir():
        pretrainer = load_pretrainer(path / "pretrained.weights.h5")
        return pretrainer.unet, pretrainer.get_config()
    return load_unet(path), None


def initial_unet_weights(unet, settings, source, jax_python):
    """{layer name: [arrays]} of the U-Net as its pretraining started."""
    import keras

    from cm_unet_keras.models.pretrainer import ContrastiveMaskedPretrainer

    seed = settings["seed"] if settings else 60
    if source and (Path(source) / "pretrain_jax.json").is_file():
        if not jax_python:
            raise SystemExit(f"{source} was trained on JAX: its initial weights need --jax-python")
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "init.npz"
            subprocess.run([jax_python, str(ROOT / "recipes" / "pretrain_jax.py"), "initial-weights", str(out),
                            "--base-filters", str(unet.base_filters), "--depth", str(unet.depth),
                            "--seed", str(seed)], check=True, env={**os.environ, "KERAS_BACKEND": "jax"})
            with np.load(out) as stored:
                stored = dict(stored)
        weights = {}
        for key, value in stored.items():
            network, layer, index = key.split("/")
            if network == "online_network":
                weights.setdefault(layer, {})[int(index)] = value
        return {layer: [arrays[i] for i in sorted(arrays)] for layer, arrays in weights.items()}
    # `cm-unet pretrain` seeds the job, then builds its pretrainer (training.pretrain.pretrain).
    keras.utils.set_random_seed(seed)
    kwargs = {k: v for k, v in (settings or {}).items() if k != "name"}
    kwargs.setdefault("base_filters", unet.base_filters)
    kwargs.setdefault("depth", unet.depth)
    fresh = ContrastiveMaskedPretrainer(**kwargs).unet
    return {layer.name: layer.get_weights() for layer in fresh.layers if layer.weights}


def measure(label, source, jax_python):
    unet, settings = trained_unet(source)
    initial = initial_unet_weights(unet, settings, None if source.startswith("git:") else source, jax_python)
    changes = {part: [] for part in PARTS}
    gamma = 0.0
    for layer in unet.layers:
        part = part_of(layer.name)
        if part is None or not layer.weights:
            continue
        before = initial[layer.name]
        after = layer.get_weights()
        if "conv" in layer.name and "bn" not in layer.name:
            change = np.linalg.norm(after[0] - before[0]) / np.linalg.norm(before[0])
            changes[part].append(float(change))
        if "_bn" in layer.name:
            gamma = max(gamma, float(np.max(np.abs(after[0] - 1.0))))
    return {"label": label, "source": source, "gamma": gamma,
            **{part: (min(values), max(values)) for part, values in changes.items() if values}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", action="append", required=True, help="LABEL=SOURCE; repeat")
    parser.add_argument("--jax-python", help="a Python with JAX and Keras, for starts trained on JAX")
    args = parser.parse_args(argv)
    rows = [measure(*start.split("=", 1), args.jax_python) for start in args.start]
    lines = [
        "# How far pretraining moved the U-Net (issue 13)",
        "",
        "Written by `python benchmarks/weight_change.py` (its docstring has the command). Relative change",
        "||w - w0|| / ||w0|| of each convolution kernel from the weights the run started from (min - max",
        "over the part's convolutions), and the largest |gamma - 1| of the U-Net's BatchNorm layers.",
        "A kernel redrawn at random would be about 1.4 from its start.",
        "",
        "| start | source | " + " | ".join(PARTS) + " | max abs(gamma - 1) |",
        "|---|---|" + "---|" * len(PARTS) + "---|",
    ]
    for row in rows:
        cells = [f"{row[part][0]:.2f}" if row[part][0] == row[part][1] else f"{row[part][0]:.2f}-{row[part][1]:.2f}"
                 for part in PARTS]
        lines.append(f"| {row['label']} | `{row['source']}` | " + " | ".join(cells) + f" | {row['gamma']:.3f} |")
    OUT.write_text("\n".join(lines) + "\n")
    (OUT.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
