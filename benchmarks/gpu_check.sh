#!/usr/bin/env bash
# GPU check for cm-unet-keras, sized for <= 8 minutes on one H100 or H200.
#
# Measures, on the GPU it runs on, with the package's own code:
#   1. training and inference throughput of the base U-Net (width 32) at
#      256x256 (training) and 512x512 (inference) under mixed_float16, with
#      and without XLA (jit_compile);
#   2. the time of one pretraining epoch over the 1,500 ARCADE angiograms at
#      256 px, decoding and caching the PNGs once included.
# Writes benchmarks/gpu/results.json and prints it. Needs TensorFlow with
# CUDA (pip install ".[cuda]") and ../shared/data beside the project.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"

timeout 420 "$PY" - "$OUT" <<'PY'
import json, sys, time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cm_unet_keras import CMUNet
from cm_unet_keras.data.layouts import index_unlabeled
from cm_unet_keras.training.config import FinetuneConfig
from cm_unet_keras.training.finetune import make_optimizer
from cm_unet_keras.training.losses import DiceBCELoss
from cm_unet_keras.training.runtime import resolve_precision

out = Path(sys.argv[1])
gpus = tf.config.list_physical_devices("GPU")
assert gpus, "no GPU visible to TensorFlow: install tensorflow[and-cuda]"
policy = resolve_precision("auto")
results = {"gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus],
           "tensorflow": tf.__version__, "keras": keras.__version__, "policy": policy}


def timed_steps(function, steps):
    function()  # trace / compile
    function()
    start = time.perf_counter()
    for _ in range(steps):
        value = function()
    keras.ops.convert_to_numpy(value if not isinstance(value, dict) else list(value.values())[0])
    return (time.perf_counter() - start) / steps


for jit in (False, True):
    keras.mixed_precision.set_global_policy(policy)
    model = CMUNet(base_filters=32, depth=4)
    model.compile(optimizer=make_optimizer(FinetuneConfig(), 1000), loss=DiceBCELoss(), jit_compile=jit)
    batch = 32
    x = tf.random.normal((batch, 256, 256, 1))
    y = tf.cast(tf.random.uniform((batch, 256, 256, 1)) > 0.9, tf.float32)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=50, epochs=1, verbose=0)
    train_step = (time.perf_counter() - start) / 50
    infer = tf.function(lambda images: model(images, training=False), jit_compile=jit)
    images = tf.random.normal((8, 512, 512, 1))
    infer_step = timed_steps(lambda: infer(images), 20)
    key = "xla" if jit else "no_xla"
    results[key] = {"train_images_per_s_256": batch / train_step, "train_step_s": train_step,
                    "infer_images_per_s_512": 8 / infer_step}
    print(key, results[key], flush=True)

# One pretraining epoch over the ARCADE pool at 256 px.
from cm_unet_keras.training.pretrain import PretrainConfig, pretrain

records = index_unlabeled(["../shared/data/arcade_stenosis"])
config = PretrainConfig(base_filters=32, depth=4, image_size=256, batch_size=128, epochs=1, precision="auto")
start = time.perf_counter()
summary = pretrain(config, records, out / "pretrain_run", verbose=2)
results["pretrain_epoch_1500_arcade_256px_s"] = time.perf_counter() - start
results["pretrain_summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
(out / "results.json").write_text(json.dumps(results, indent=2, default=str))
print(json.dumps(results, indent=2, default=str))
PY
