"""Timing helpers the speed benchmarks share (`benchmarks/throughput.py`,
`train_step.py`, `peer_torch.py`): the matmul ceiling, convolution FLOPs,
per-step wall times and interleaved rounds, so that a busy machine slows
every compared case alike."""

import time

import keras
import numpy as np
import tensorflow as tf

from cm_unet_keras.config import FinetuneConfig
from cm_unet_keras.models.unet import CMUNet
from cm_unet_keras.training.finetune import make_optimizer
from cm_unet_keras.training.losses import DiceBCELoss


def matmul_ceiling(dtype, size=2048, repeats=8):
    """Best FLOP/s of a square matmul in `dtype`."""
    a = tf.cast(tf.random.normal((size, size)), dtype)
    matmul = tf.function(lambda x: tf.matmul(x, x))
    matmul(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def forward_flops(model, height, width):
    """2 x multiply-adds of the convolutions of `model` on one H x W image.

    The graph has dynamic spatial sizes, so each layer's output size comes
    from its level in the name (`encoder_level2_*` works at H/4 x W/4).
    """
    flops = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            multiply_adds_per_pixel = int(np.prod(layer.kernel.shape))
            flops += 2 * multiply_adds_per_pixel * _output_pixels(layer.name, model.depth, height, width)
    return flops


def _output_pixels(name, depth, height, width):
    level = 0  # the head works at full resolution
    if name.startswith("bottleneck"):
        level = depth
    for prefix in ("encoder_level", "decoder_level"):
        if name.startswith(prefix):
            level = int(name[len(prefix):].split("_")[0])
    # A transposed convolution at level L outputs level-L pixels too.
    return (height // 2**level) * (width // 2**level)


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training batch."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def interleaved_rounds(cases, steps, rounds):
    """Time `cases` (objects with `name`, `run(steps)` and a `medians` list) in interleaved rounds.

    Each case first runs 2 untimed steps (tracing, kernel caches); then each
    round runs every case in turn, so a busy machine slows them alike.
    """
    for case in cases:
        case.run(2)
        case.medians.clear()
    for round_index in range(rounds):
        for case in cases:
            case.run(steps)
        print(f"round {round_index + 1}: " + ", ".join(f"{c.name} {c.medians[-1]:.3f}s" for c in cases), flush=True)


def compiled_unet(policy, base_filters=16, depth=4, jit=False):
    """The U-Net compiled as the package fine-tunes it (AdamW with its schedule,
    Dice + BCE), built under `policy`; the global policy is float32 after."""
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = CMUNet(base_filters=base_filters, depth=depth)
    model.compile(optimizer=make_optimizer(FinetuneConfig(), 1000), loss=DiceBCELoss(), jit_compile=jit)
    keras.mixed_precision.set_global_policy("float32")
    return model
