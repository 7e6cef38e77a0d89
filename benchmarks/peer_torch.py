"""The small U-Net's training step in PyTorch beside ours, in one run (issue 17).

PyTorch is a benchmark-only tool here, never a dependency of the package:
`pip install torch` (on the project's build machines `pip install
torch==2.13.0` takes the CPU build on disk) before running this script.

Both sides train the same network: the width-16, depth-4 U-Net of
`cm_unet_keras.CMUNet` ([Conv3x3 without bias - BatchNorm (momentum 0.1,
eps 1e-5) - ReLU] x 2 per level, 2x2 max-pooling, 2x2 stride-2 transposed
convolutions, skip concatenation, 1x1 head, sigmoid; the same parameter
count, checked), the same loss (0.5 soft Dice per image + 0.5 BCE, in
float32), AdamW (lr 2e-3, weight decay 1e-4), 8 patches of 128x128 per step
from one in-memory batch. Configurations are timed in interleaved rounds,
best round's median step kept:

- Keras: float32, and mixed bfloat16 (the package default on this CPU: its
  fused BatchNorm);
- PyTorch: float32, channels_last, bfloat16 autocast, channels_last +
  bfloat16 autocast;

both frameworks with the same intra-op threads (`--threads`, every core by
default; `peer_torch_threads1.md` for one).

    python benchmarks/peer_torch.py [--steps 8] [--rounds 3] [--threads 1]

Writes `benchmarks/throughput/peer_torch.json` and `peer_torch.md` (with
`--batch-size B --patch-size S` other than 8 and 128: `peer_torch_bBpS.*`).
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent / "throughput"
BATCH, SIZE, WIDTH, DEPTH = 8, 128, 16, 4
LEARNING_RATE, WEIGHT_DECAY = 2e-3, 1e-4


def batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, SIZE, SIZE, 1)).astype("float32")
    y = (rng.random((BATCH, SIZE, SIZE, 1)) < 0.1).astype("float32")
    return x, y


# --- PyTorch ------------------------------------------------------------------
def torch_unet(torch):
    nn = torch.nn

    def block(cin, cout):
        layers = []
        for i in range(2):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [WIDTH * 2**level for level in range(DEPTH)]
            self.encoders = nn.ModuleList()
            cin = 1
            for w in widths:
                self.encoders.append(block(cin, w))
                cin = w
            self.pool = nn.MaxPool2d(2)
            self.bottleneck = block(cin, WIDTH * 2**DEPTH)
            self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
            cin = WIDTH * 2**DEPTH
            for w in reversed(widths):
                self.ups.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
                self.decoders.append(block(2 * w, w))
                cin = w
            self.head = nn.Conv2d(cin, 1, 1)

        def forward(self, x):
            skips = []
            for encoder in self.encoders:
                x = encoder(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottleneck(x)
            for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
                x = decoder(torch.cat([skip, up(x)], dim=1))
            return self.head(x)

    return UNet()


def torch_loss(torch, logits, target):
    probability = torch.sigmoid(logits.float()).clamp(1e-7, 1 - 1e-7)
    axes = (1, 2, 3)
    intersection = (probability * target).sum(axes)
    total = probability.sum(axes) + target.sum(axes)
    soft_dice = 1 - (2 * intersection + 1) / (total + 1)
    bce = -(target * probability.log() + (1 - target) * (1 - probability).log()).mean(axes)
    return (0.5 * soft_dice + 0.5 * bce).mean()


class TorchCase:
    def __init__(self, torch, name, channels_last=False, bfloat16=False):
        self.torch, self.name, self.bfloat16 = torch, name, bfloat16
        torch.manual_seed(0)
        self.model = torch_unet(torch).train()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        x, y = batch()
        self.x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
        self.y = torch.from_numpy(y).permute(0, 3, 1, 2).contiguous()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.medians = []

    def step(self):
        torch = self.torch
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
            logits = self.model(self.x)
        loss = torch_loss(torch, logits, self.y)
        loss.backward()
        self.optimizer.step()
        return loss.detach().item()

    def run(self, steps):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        self.medians.append(float(np.median(times)))


# --- Keras --------------------------------------------------------------------
class KerasCase:
    def __init__(self, name, policy):
        import tensorflow as tf

        from cm_unet_keras.experiments.timing import StepTimer, compiled_unet

        self.name, self.StepTimer = name, StepTimer
        self.model = compiled_unet(policy)  # the width-16, depth-4 U-Net compiled as the package fine-tunes it
        self.params = self.model.count_params() - sum(
            int(np.prod(w.shape)) for w in self.model.non_trainable_weights)
        self.data = tf.data.Dataset.from_tensors(batch()).repeat()
        self.medians = []

    def run(self, steps):
        timer = self.StepTimer()
        self.model.fit(self.data, epochs=1, steps_per_epoch=steps + 1, verbose=0, callbacks=[timer])
        self.medians.append(float(np.median(timer.times[1:])))


def main():
    global BATCH, SIZE  # the step's shape, read by batch() and the cases
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="intra-op threads of both frameworks (default: every core); 1 compares them core for "
                             "core on a busy machine, where OpenMP threads that spin for a core are slowed most")
    parser.add_argument("--batch-size", type=int, default=BATCH, help="patches a step (default 8, the presets')")
    parser.add_argument("--patch-size", type=int, default=SIZE,
                        help="patch side (default 128; the ARCADE protocol's best runs: --batch-size 2 "
                             "--patch-size 384)")
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    BATCH, SIZE = args.batch_size, args.patch_size
    shape = "" if (BATCH, SIZE) == (8, 128) else f"_b{BATCH}p{SIZE}"
    try:
        import torch
    except ImportError:
        sys.exit("peer_torch.py needs PyTorch, a benchmark-only tool: pip install torch (not a dependency of "
                 "cm-unet-keras)")
    import tensorflow as tf

    threads = args.threads
    torch.set_num_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    cases = [
        KerasCase("Keras float32", "float32"),
        KerasCase("Keras mixed_bfloat16 (package default)", "mixed_bfloat16"),
        TorchCase(torch, "PyTorch float32"),
        TorchCase(torch, "PyTorch channels_last", channels_last=True),
        TorchCase(torch, "PyTorch bfloat16 autocast", bfloat16=True),
        TorchCase(torch, "PyTorch channels_last + bfloat16 autocast", channels_last=True, bfloat16=True),
    ]
    params = {case.params for case in cases}
    if len(params) != 1:
        sys.exit(f"the two U-Nets differ: trainable parameters {sorted(params)}")
    from cm_unet_keras.experiments.timing import interleaved_rounds

    interleaved_rounds(cases, args.steps, args.rounds)

    ours = cases[1]
    best_torch = min(cases[2:], key=lambda c: min(c.medians))
    rows = [{"variant": c.name, "step_seconds": min(c.medians), "rounds": c.medians,
             "images_per_s": BATCH / min(c.medians), "vs_package_default": min(ours.medians) / min(c.medians)}
            for c in cases]
    result = {
        "machine": {"processor": platform.machine(), "cpus": os.cpu_count(), "threads": threads, "tensorflow": tf.__version__,
                    "torch": torch.__version__},
        "trainable_parameters": params.pop(), "batch": BATCH, "size": SIZE, "steps": args.steps,
        "rounds": args.rounds, "rows": rows,
        "ours_over_best_torch": min(best_torch.medians) / min(ours.medians), "best_torch": best_torch.name,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ("" if threads == os.cpu_count() else f"_threads{threads}") + shape
    (out / f"peer_torch{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"peer_torch{suffix}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result):
    machine = result["machine"]
    lines = [
        "# The same U-Net's training step in PyTorch (issue 17)",
        "",
        f"Machine: {machine['processor']}, {machine['cpus']} CPUs, TensorFlow {machine['tensorflow']}, PyTorch "
        f"{machine['torch']}. `python benchmarks/peer_torch.py --steps {result['steps']} --rounds "
        f"{result['rounds']} --threads {machine['threads']}"
        + ("" if (result["batch"], result["size"]) == (8, 128) else
           f" --batch-size {result['batch']} --patch-size {result['size']}")
        + f"`: width-16 U-Net ({result['trainable_parameters']:,} trainable parameters on both "
        f"sides), {result['batch']} x {result['size']}^2 a step, 0.5 Dice + 0.5 BCE, AdamW; interleaved rounds, "
        "best round's median step.",
        "",
        "| framework and configuration | step s | images/s | package default's speed relative to it |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['step_seconds']:.3f} | {row['images_per_s']:.1f} | "
                     f"{row['vs_package_default']:.2f}x |")
    lines += ["", f"Ours (mixed_bfloat16) against the best PyTorch configuration ({result['best_torch']}): "
                  f"{result['ours_over_best_torch']:.2f}x its speed."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
