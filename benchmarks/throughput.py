"""Throughput of cm-unet-keras against this machine's own limits, in one run.

Measures, for the small and base U-Nets, on the machine it runs on:
- the matmul ceiling in float32 and bfloat16 (best of several 2048^3 runs);
- FLOPs per image, counted analytically from the layers (2 x multiply-adds
  of every convolution, transposed convolution and the head; BatchNorm,
  ReLU, pooling and concatenation are left out, < 1% here); a training step
  is counted as 3 x the forward pass (forward + two backward products);
- achieved FLOP/s of a supervised training step (256x256) and of inference
  (512x512), as a fraction of the ceiling of the precision used;
- a naive reference: the same architecture in float32 trained with
  `model.fit` on in-memory numpy arrays, against the package's default path
  (automatic precision, tf.data patch pipeline): the speed-up ratio;
- a pretraining step's time over a supervised step's (same batch and size);
- the input pipeline alone in images/s against what training consumes.

End to end (`--end-to-end`, issues 17 and 32): `cm-unet predict`'s
pipeline (`predict_files`: decode, normalise, batched forward pass, PNGs
written) with the `cmunet_small_xca` preset over a folder of 512x512
ARCADE angiograms and over a multi-frame DICOM cine made of the same
frames, in images/s, against the bare forward pass (normalised batches
through `predict_normalized`) in float32 batch 1, bfloat16 batch 1 and
bfloat16 batch 8, and the pipeline as it ran before (float32, one frame at
a time): every case on the same frames in interleaved rounds, with the
process's CPU time per image beside the wall rate; the pipeline is given
as a share of the faster bare bfloat16 forward (batch 1 or 8). The host
stages (decode, normalise, PNG writes) are also timed alone.

Writes `benchmarks/throughput/results.json` and `results.md` (the
end-to-end part to `end_to_end.json` and `end_to_end.md`). Ratios are
measured in the same process, interleaved, so a noisy machine moves both
sides alike.

    python benchmarks/throughput.py [--steps 6] [--batch 4] [--models small base]
    python benchmarks/throughput.py --end-to-end [--images 48] [--rounds 2]
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cm_unet_keras import SIZES, CMUNet  # noqa: E402
from cm_unet_keras.data.pipeline import AugmentConfig, LabelledAngiogram, PatchSampler  # noqa: E402
from cm_unet_keras.data.synthetic import generate_angiogram  # noqa: E402
from cm_unet_keras.data.normalize import normalize_angiogram  # noqa: E402
from cm_unet_keras.models.full_image import predict_normalized  # noqa: E402
from cm_unet_keras.config import FinetuneConfig  # noqa: E402
from cm_unet_keras.training.finetune import make_optimizer  # noqa: E402
from cm_unet_keras.training.losses import DiceBCELoss  # noqa: E402
from cm_unet_keras.training.runtime import resolve_precision  # noqa: E402
from cm_unet_keras.experiments.timing import (  # noqa: E402
    StepTimer, forward_flops, matmul_ceiling)

HERE = Path(__file__).resolve().parent
TRAIN_SIZE = 256
INFER_SIZE = 512


def synthetic_items(count, size, seed=0):
    items = []
    for i in range(count):
        angiogram, mask = generate_angiogram(size, rng=seed * 1000 + i)
        image = normalize_angiogram(angiogram.astype("float32")[..., None]).numpy()
        items.append(LabelledAngiogram(f"s{i}", image, (mask[..., None] > 0).astype(np.uint8)))
    return items


def timed_fit(model, data, steps, batch):
    """Median seconds per step after one warm-up fit (tracing excluded)."""
    if isinstance(data, tuple):
        model.fit(*data, batch_size=batch, epochs=1, steps_per_epoch=2, verbose=0)
        timer = StepTimer()
        model.fit(*data, batch_size=batch, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    else:
        model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
        timer = StepTimer()
        model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return float(np.median(timer.times))


def supervised_model(base_filters, policy):
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = CMUNet(base_filters=base_filters, depth=4)
    model.compile(optimizer=make_optimizer(FinetuneConfig(), 1000), loss=DiceBCELoss(), jit_compile=False)
    return model


def measure_model(name, base_filters, args, items, policy, ceilings):
    batch, steps = args.batch, args.steps
    result = {"base_filters": base_filters, "params": None}

    # Package default path: automatic precision, tf.data patches.
    model = supervised_model(base_filters, policy)
    result["params"] = model.count_params()
    fwd_train = forward_flops(model, TRAIN_SIZE, TRAIN_SIZE)
    fwd_infer = forward_flops(model, INFER_SIZE, INFER_SIZE)
    sampler = PatchSampler(items, TRAIN_SIZE, seed=0, augment=AugmentConfig())
    default_step = timed_fit(model, sampler.dataset(batch), steps, batch)

    # Inference, 512x512, one angiogram at a time (as `predict` runs).
    image = items[0].angiogram
    image = np.pad(image, [(0, INFER_SIZE - image.shape[0]), (0, INFER_SIZE - image.shape[1]), (0, 0)])
    predict_normalized(model, image)
    infer_times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        predict_normalized(model, image).numpy()
        infer_times.append(time.perf_counter() - start)
    infer_seconds = float(np.median(infer_times))

    # Naive reference: float32, model.fit on numpy arrays.
    naive = supervised_model(base_filters, "float32")
    x = np.stack([items[i % len(items)].angiogram[:TRAIN_SIZE, :TRAIN_SIZE] for i in range(batch * (steps + 2))])
    y = np.stack([items[i % len(items)].vessel_mask[:TRAIN_SIZE, :TRAIN_SIZE] for i in range(batch * (steps + 2))]).astype("float32")
    naive_step = timed_fit(naive, (x, y), steps, batch)

    # Pretraining step, same batch and view size, same precision as default.
    from cm_unet_keras.models.pretrainer import ContrastiveMaskedPretrainer

    keras.mixed_precision.set_global_policy(policy)
    pretrainer = ContrastiveMaskedPretrainer(base_filters=base_filters, depth=4)
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-4))
    views = tf.data.Dataset.from_tensors(
        {
            "online": tf.random.normal((batch, TRAIN_SIZE, TRAIN_SIZE, 1)),
            "target": tf.random.normal((batch, TRAIN_SIZE, TRAIN_SIZE, 1)),
            "sample_index": tf.range(batch, dtype=tf.int64),
        }
    ).repeat()
    pretrain_step = timed_fit(pretrainer, views, steps, batch)

    # Input pipeline alone.
    dataset = iter(sampler.dataset(batch))
    next(dataset)
    start = time.perf_counter()
    n_batches = 4 * steps
    for _ in range(n_batches):
        next(dataset)
    pipeline_images_per_s = n_batches * batch / (time.perf_counter() - start)
    keras.mixed_precision.set_global_policy("float32")

    ceiling = ceilings["bfloat16" if "bfloat16" in policy else "float32"]
    train_flops = 3 * fwd_train * batch / default_step
    infer_flops = fwd_infer / infer_seconds
    train_images_per_s = batch / default_step
    result.update({
        "policy": policy,
        "forward_gflops_per_image_256": fwd_train / 1e9,
        "forward_gflops_per_image_512": fwd_infer / 1e9,
        "train_step_seconds_default": default_step,
        "train_step_seconds_naive": naive_step,
        "train_images_per_s_default": train_images_per_s,
        "train_gflops_per_s": train_flops / 1e9,
        "train_fraction_of_ceiling": train_flops / ceiling,
        "inference_seconds_512": infer_seconds,
        "inference_gflops_per_s": infer_flops / 1e9,
        "inference_fraction_of_ceiling": infer_flops / ceiling,
        "speedup_vs_naive": naive_step / default_step,
        "pretrain_step_seconds": pretrain_step,
        "pretrain_step_ratio": pretrain_step / default_step,
        "pipeline_images_per_s": pipeline_images_per_s,
        "pipeline_ratio": pipeline_images_per_s / train_images_per_s,
    })
    print(f"{name}: {json.dumps(result, indent=1)}", flush=True)
    return result


def measure_end_to_end(data_root, count, rounds=2):
    """images/s of predict's pipeline and of the bare forward pass (see the module docstring).

    Every case handles the same `count` frames once a round; the rounds are
    interleaved (every case in turn), so a loaded machine slows them alike.
    Per case: the best wall rate over the rounds, and the process's CPU
    seconds per image (all threads; steadier than wall time on a shared
    machine). The host stages are also timed alone, on one thread.
    """
    import shutil
    import tempfile

    from cm_unet_keras.data.cine import write_xa_cine
    from cm_unet_keras.data.pipeline import preprocess_angiogram
    from cm_unet_keras.data.readers import read_angiogram
    from cm_unet_keras.inference.predict import inference_model, load_model, predict_files

    files = sorted((Path(data_root) / "arcade_vessels" / "val" / "images").glob("*.png"))[:count]
    if len(files) < count:
        raise FileNotFoundError(f"need {count} angiograms in {data_root}/arcade_vessels/val/images")
    model = load_model("cmunet_small_xca")
    fast = inference_model(model, "auto")
    frames = [read_angiogram(f) for f in files]
    normalized, fov = (np.stack(parts) for parts in zip(*(preprocess_angiogram(f, return_fov=True) for f in frames)))

    def forward(network, batch):
        for first in range(0, count, batch):
            predict_normalized(network, normalized[first:first + batch], fov=fov[first:first + batch]).numpy()
        return count

    result = {"images": count, "rounds": rounds, "policy": resolve_precision("auto")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "angiograms"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
        cine = tmp / "cine.dcm"
        write_xa_cine(cine, np.stack([np.clip(f, 0, 255).astype(np.uint8) for f in frames]))
        result["host_ms_per_image"] = host_stage_costs(files, frames, fast, tmp / "stages")
        pipeline = lambda inputs, **options: len(predict_files(model, inputs, tmp / "out", log=None, **options))  # noqa: E731
        cases = {
            "forward_float32_batch1": lambda: forward(model, 1),
            "forward_fast_batch1": lambda: forward(fast, 1),
            "forward_fast_batch8": lambda: forward(fast, 8),
            "predict_folder": lambda: pipeline([folder], precision="auto", batch_size=8),
            "predict_cine": lambda: pipeline([cine], precision="auto", batch_size=8),
            "predict_folder_batch1": lambda: pipeline([folder], precision="auto", batch_size=1),
            "predict_folder_before": lambda: pipeline([folder], precision="float32", batch_size=1),
        }
        predict_files(model, [folder / files[0].name], tmp / "warm", log=None)  # trace
        for network, batch in ((model, 1), (fast, 1), (fast, 8)):  # trace every batch shape
            predict_normalized(network, normalized[:batch], fov=fov[:batch]).numpy()
        rates, cpu = {name: [] for name in cases}, {name: [] for name in cases}
        for round_index in range(rounds):
            for name, case in cases.items():
                wall, processor = time.perf_counter(), time.process_time()
                images = case()
                rates[name].append(images / (time.perf_counter() - wall))
                cpu[name].append((time.process_time() - processor) / images * 1000)
            print(f"round {round_index + 1} (load {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{name} {rates[name][-1]:.2f}/s {cpu[name][-1]:.0f} ms CPU" for name in cases), flush=True)
    for name in cases:
        result[name] = max(rates[name])
        result[f"{name}_cpu_ms"] = min(cpu[name])
        result[f"{name}_rounds"] = rates[name]
    best = max(result["forward_fast_batch1"], result["forward_fast_batch8"])
    result["forward_fast_best"] = best
    result["folder_of_forward"] = result["predict_folder"] / best
    result["cine_of_forward"] = result["predict_cine"] / best
    result["folder_of_forward_cpu"] = result["forward_fast_batch8_cpu_ms"] / result["predict_folder_cpu_ms"]
    result["cine_of_forward_cpu"] = result["forward_fast_batch8_cpu_ms"] / result["predict_cine_cpu_ms"]
    result["speedup_vs_before"] = result["predict_folder"] / result["predict_folder_before"]
    return result


def host_stage_costs(files, frames, network, out):
    """CPU milliseconds per image of each host stage of predict, alone on this thread."""
    from cm_unet_keras.data.pipeline import preprocess_angiogram
    from cm_unet_keras.data.readers import read_angiogram
    from cm_unet_keras.inference.predict import write_prediction

    probabilities = [None] * len(frames)

    def segment(index):
        normalized, fov = preprocess_angiogram(frames[index], return_fov=True)
        probabilities[index] = predict_normalized(network, normalized, fov=fov).numpy()[..., 0]

    stages = {
        "decode (PNG)": lambda index: read_angiogram(files[index]),
        "normalise (field of view, z-score)": lambda index: preprocess_angiogram(frames[index], return_fov=True),
        "write mask, probability and overlay PNGs": lambda index: write_prediction(
            out, f"a{index}", frames[index], probabilities[index]),
    }
    for index in range(len(frames)):
        segment(index)
    costs = {}
    for name, stage in stages.items():
        started = time.process_time()
        for index in range(len(frames)):
            stage(index)
        costs[name] = (time.process_time() - started) / len(frames) * 1000
    return costs


def end_to_end_markdown(r, machine):
    best = r["forward_fast_best"]
    row = lambda label, key: (f"| {label} | {r[key]:.2f} | {r[key] / best:.0%} | {r[key + '_cpu_ms']:.0f} | "  # noqa: E731
                              f"{r['forward_fast_batch8_cpu_ms'] / r[key + '_cpu_ms']:.0%} |")
    return "\n".join([
        "# predict end to end (issues 17 and 32)",
        "",
        f"Machine: {machine}, load average {r.get('load', 'not recorded')} at the start. "
        f"`python benchmarks/throughput.py --end-to-end --images {r['images']} --rounds {r['rounds']}`; "
        f"cmunet_small_xca on {r['images']} ARCADE angiograms of 512x512 (PNG files, and the same frames as one "
        f"uncompressed XA cine); every case handles the same frames once a round, the rounds interleaved; "
        "images/s is the best round, CPU the process's CPU time (all threads) per image in its best round; "
        "all rows from one process.",
        "",
        "| path | images/s | of the best bare bfloat16 forward | CPU ms/image | bare batch-8 CPU / this CPU |",
        "|---|---|---|---|---|",
        row("bare forward, float32, batch 1", "forward_float32_batch1"),
        row(f"bare forward, {r['policy']}, batch 1", "forward_fast_batch1"),
        row(f"bare forward, {r['policy']}, batch 8", "forward_fast_batch8"),
        row(f"`predict` folder ({r['policy']}, batch 8)", "predict_folder"),
        row(f"`predict` cine ({r['policy']}, batch 8)", "predict_cine"),
        row(f"`predict` folder ({r['policy']}, `--batch-size 1`)", "predict_folder_batch1"),
        row("`predict` folder as before (float32, one at a time)", "predict_folder_before"),
        "",
        "Host stages of `predict`, each alone on one thread (CPU ms per image): "
        + "; ".join(f"{name} {ms:.1f}" for name, ms in r["host_ms_per_image"].items()) + ".",
        "",
        f"Pipeline speed-up over the previous predict: {r['speedup_vs_before']:.2f}x. The bare forward pass "
        "includes mirror padding and the field-of-view rule on normalised inputs; the pipeline adds decoding, "
        "normalisation (field of view), thresholding and writing three PNGs per angiogram.",
    ]) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["small", "base"], choices=list(SIZES))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default=str(HERE / "throughput"))
    parser.add_argument("--end-to-end", action="store_true", help="only the predict pipeline rows")
    parser.add_argument("--images", type=int, default=48, help="angiograms for --end-to-end")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds for --end-to-end")
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    args = parser.parse_args()
    if args.end_to_end:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}"
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        result = measure_end_to_end(args.data, args.images, args.rounds)
        result["machine"], result["load"] = machine, load
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "end_to_end.json").write_text(json.dumps(result, indent=2))
        (out / "end_to_end.md").write_text(end_to_end_markdown(result, machine))
        print(end_to_end_markdown(result, machine))
        return

    started = time.perf_counter()
    ceilings = {"float32": matmul_ceiling(tf.float32), "bfloat16": matmul_ceiling(tf.bfloat16)}
    print(f"matmul ceiling: {ceilings['float32'] / 1e9:.0f} GFLOP/s float32, {ceilings['bfloat16'] / 1e9:.0f} bfloat16")
    policy = resolve_precision(args.precision)
    items = synthetic_items(4, TRAIN_SIZE + 64)
    models = {name: measure_model(name, SIZES[name], args, items, policy, ceilings) for name in args.models}
    worst = lambda key, pick=min: pick(m[key] for m in models.values())  # noqa: E731
    results = {
        "speedup_vs_naive": worst("speedup_vs_naive"),
        "fraction_of_ceiling": min(worst("train_fraction_of_ceiling"), worst("inference_fraction_of_ceiling")),
        "pretrain_step_ratio": worst("pretrain_step_ratio", max),
        "pipeline_ratio": worst("pipeline_ratio"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "ceiling_gflops_per_s": {k: v / 1e9 for k, v in ceilings.items()},
        "settings": {"batch": args.batch, "steps": args.steps, "train_size": TRAIN_SIZE, "infer_size": INFER_SIZE},
        "models": models,
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results):
    lines = [
        "# Throughput",
        "",
        f"Machine: {results['machine']}. Ceiling (matmul 2048^3): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in results["ceiling_gflops_per_s"].items())
        + f". Batch {results['settings']['batch']}, training at {TRAIN_SIZE}^2, inference at {INFER_SIZE}^2.",
        "",
        "| model | params | policy | GFLOP/img fwd 256 | train img/s | train GFLOP/s (of ceiling) "
        "| infer 512 s | infer GFLOP/s (of ceiling) | vs naive | pretrain/supervised step | pipeline/training |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results["models"].items():
        lines.append(
            f"| {name} | {m['params'] / 1e6:.2f}M | {m['policy']} | {m['forward_gflops_per_image_256']:.2f} "
            f"| {m['train_images_per_s_default']:.2f} | {m['train_gflops_per_s']:.0f} ({m['train_fraction_of_ceiling']:.0%}) "
            f"| {m['inference_seconds_512']:.3f} | {m['inference_gflops_per_s']:.0f} ({m['inference_fraction_of_ceiling']:.0%}) "
            f"| {m['speedup_vs_naive']:.2f}x | {m['pretrain_step_ratio']:.2f}x | {m['pipeline_ratio']:.1f}x |"
        )
    lines += [
        "",
        "Headline (worst case over models): "
        f"speedup_vs_naive {results['speedup_vs_naive']:.2f}, fraction_of_ceiling {results['fraction_of_ceiling']:.2f}, "
        f"pretrain_step_ratio {results['pretrain_step_ratio']:.2f}, pipeline_ratio {results['pipeline_ratio']:.1f}.",
        "",
        "FLOPs are counted analytically: 2 x multiply-adds of every convolution; a training step is 3 x forward.",
        "",
        "Where the small model's training step spends its time and what was tried to shorten it (fused "
        "BatchNorm: kept; XLA, other batch shapes: not): `README.md` in this folder, with the numbers of "
        "`train_step.md` (`benchmarks/train_step.py`) and `peer_torch.md` (`benchmarks/peer_torch.py`, the same "
        "U-Net in PyTorch).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
