"""Where the small U-Net's training step spends its time, and what shortens it (issue 17).

The step every CPU fine-tuning budget is bounded by: the small U-Net (width
16, depth 4) on 8 patches of 128x128 with the package's loss and optimizer
(`DiceBCELoss`, AdamW with warm-up + cosine). Each variant below trains the
same network on the same in-memory batch, so the input pipeline is out of
the picture (it runs 40x faster than training, `results.md`); variants are
timed in interleaved rounds in one process, best round's median step kept,
so a busy machine moves them alike. The bfloat16 matmul ceiling is measured
in the same run.

Variants:
- `naive float32`: float32, `model.fit` on numpy arrays, Keras'
  BatchNormalization (the reference of `results.md`);
- `float32` / `mixed_bfloat16`: tensors from a repeated `tf.data` batch,
  with the package's fused `layers.BatchNormalization` or Keras' own layer;
- `+ XLA`: `jit_compile=True` (the package compiles with `jit_compile=False`);
- `2 x 256^2` / `32 x 64^2`: the same pixels per step in other shapes;
- `no BatchNorm`: BatchNormalization layers replaced by identities, to
  measure their share of the step (not a model we would ship);
- `forward only`: inference on the same batch, for the backward pass's share.

    python benchmarks/train_step.py [--steps 8] [--rounds 3]

Writes `benchmarks/throughput/train_step.json` and `train_step.md`.
"""

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cm_unet_keras.experiments.timing import (  # noqa: E402
    StepTimer, compiled_unet, forward_flops, interleaved_rounds, matmul_ceiling)
from cm_unet_keras.models import unet  # noqa: E402

HERE = Path(__file__).resolve().parent / "throughput"
PIXELS = 8 * 128 * 128


def identity(*args, name=None, **kwargs):
    return keras.layers.Identity(name=name)


@contextlib.contextmanager
def batchnorm_layer(layer):
    """CMUNet built with `layer` where its (fused) BatchNormalization layers go."""
    original = unet.layers.BatchNormalization
    unet.layers.BatchNormalization = layer
    try:
        yield
    finally:
        unet.layers.BatchNormalization = original


def build(policy, jit=False, batchnorm="fused"):
    layer = {"fused": unet.layers.BatchNormalization, "keras": keras.layers.BatchNormalization, None: identity}
    with batchnorm_layer(layer[batchnorm]):
        return compiled_unet(policy, jit=jit)


def batch_of(size):
    count = PIXELS // (size * size)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(count, size, size, 1)).astype("float32")
    y = (rng.random((count, size, size, 1)) < 0.1).astype("float32")
    return x, y


class Variant:
    def __init__(self, name, policy, size=128, jit=False, batchnorm="fused", numpy_fit=False, forward_only=False):
        self.name, self.size, self.numpy_fit, self.forward_only = name, size, numpy_fit, forward_only
        self.policy, self.jit = policy, jit
        self.model = build(policy, jit, batchnorm)
        self.x, self.y = batch_of(size)
        self.batch = len(self.x)
        if numpy_fit:
            repeats = 64
            self.data = (np.concatenate([self.x] * repeats), np.concatenate([self.y] * repeats))
        else:
            self.data = tf.data.Dataset.from_tensors((self.x, self.y)).repeat()
        self.medians = []

    def run(self, steps):
        if self.forward_only:
            predict = self.model.predict_on_batch
            predict(self.x)
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                np.asarray(predict(self.x))
                times.append(time.perf_counter() - start)
        else:
            timer = StepTimer()
            if self.numpy_fit:
                self.model.fit(*self.data, batch_size=self.batch, epochs=1, steps_per_epoch=steps, verbose=0,
                               callbacks=[timer])
            else:
                self.model.fit(self.data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
            times = timer.times[1:]  # the first batch of a fit carries its set-up
        self.medians.append(float(np.median(times)))

    @property
    def seconds(self):
        return min(self.medians)


def variants():
    bf16 = "mixed_bfloat16"
    return [
        Variant("naive float32 (fit on numpy, Keras BatchNorm)", "float32", numpy_fit=True, batchnorm="keras"),
        Variant("float32, Keras BatchNorm", "float32", batchnorm="keras"),
        Variant("float32", "float32"),
        Variant("mixed_bfloat16, Keras BatchNorm (before)", bf16, batchnorm="keras"),
        Variant("mixed_bfloat16 (package default)", bf16),
        Variant("mixed_bfloat16 + XLA", bf16, jit=True),
        Variant("mixed_bfloat16, Keras BatchNorm + XLA", bf16, jit=True, batchnorm="keras"),
        Variant("mixed_bfloat16, 2 x 256^2", bf16, size=256),
        Variant("mixed_bfloat16, 32 x 64^2", bf16, size=64),
        Variant("mixed_bfloat16, no BatchNorm", bf16, batchnorm=None),
        Variant("mixed_bfloat16, forward only", bf16, forward_only=True),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()

    ceiling = matmul_ceiling(tf.bfloat16)
    cases = variants()
    interleaved_rounds(cases, args.steps, args.rounds)
    ceiling = max(ceiling, matmul_ceiling(tf.bfloat16))

    flops_per_image = {size: forward_flops(cases[0].model, size, size) for size in (64, 128, 256)}
    naive = cases[0].seconds
    default = next(c for c in cases if c.name.endswith("(package default)")).seconds
    rows = []
    for case in cases:
        passes = 1 if case.forward_only else 3
        flops = passes * flops_per_image[case.size] * case.batch / case.seconds
        rows.append({
            "variant": case.name, "policy": case.policy, "jit_compile": case.jit, "batch": case.batch,
            "size": case.size, "step_seconds": case.seconds, "rounds": case.medians,
            "images_per_s_128": PIXELS / (128 * 128) / case.seconds,
            "vs_naive": naive / case.seconds, "vs_default": default / case.seconds,
            "gflops_per_s": flops / 1e9, "of_bf16_ceiling": flops / ceiling,
        })
    machine = {"processor": platform.machine(), "cpus": os.cpu_count(), "tensorflow": tf.__version__,
               "keras": keras.__version__}
    result = {"machine": machine, "bf16_ceiling_gflops": ceiling / 1e9, "steps": args.steps,
              "rounds": args.rounds, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "train_step.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result):
    lines = [
        "# The small U-Net's training step (issue 17)",
        "",
        f"Machine: {result['machine']['processor']}, {result['machine']['cpus']} CPUs, TF "
        f"{result['machine']['tensorflow']}, Keras {result['machine']['keras']}. "
        f"`python benchmarks/train_step.py --steps {result['steps']} --rounds {result['rounds']}`: width-16 U-Net, "
        f"{PIXELS:,} pixels a step, DiceBCELoss, AdamW; one in-memory batch; interleaved rounds, best round's "
        f"median step. bfloat16 matmul ceiling {result['bf16_ceiling_gflops']:.0f} GFLOP/s (same run). "
        "A training step counts 3 forward passes of FLOPs.",
        "",
        "| variant | batch x size | step s | images/s (128^2 equiv.) | vs naive float32 | vs package default "
        "| GFLOP/s (of bf16 ceiling) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['variant']} | {row['batch']} x {row['size']}^2 | {row['step_seconds']:.3f} | "
            f"{row['images_per_s_128']:.1f} | {row['vs_naive']:.2f}x | {row['vs_default']:.2f}x | "
            f"{row['gflops_per_s']:.0f} ({row['of_bf16_ceiling']:.0%}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
