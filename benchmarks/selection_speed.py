"""Speed of `cm-unet select` on a folder of 1,500 angiograms (issue 26:
under 5 minutes on 2 cores).

Times `select_files` (index, scan at the 256x256 working size, choose,
write) on `../shared/data/arcade_stenosis` (1,000 + 200 + 300 ARCADE
angiograms, 512x512) with `cmunet_small_pretrained`, once per strategy
asked, and appends the numbers to `benchmarks/selection/speed.json`.

    nice -n 10 python benchmarks/selection_speed.py --strategies typical random
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.selection import select_files
    from cm_unet_keras.training.runtime import resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "arcade_stenosis"))
    parser.add_argument("--model", default="cmunet_small_pretrained")
    parser.add_argument("--strategies", nargs="+", default=["typical"])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--precision", default="float32", help="scan precision (select's default: float32)")
    parser.add_argument("--note", default="", help="what else the machine was doing")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.model)
    rows = []
    for strategy in args.strategies:
        with tempfile.TemporaryDirectory() as output:
            done = []
            started = time.perf_counter()
            chosen = select_files(model, [args.data], args.count, output, strategy=strategy, precision=args.precision,
                                  progress=lambda frames: done.append(frames))
            seconds = time.perf_counter() - started
        row = {"strategy": strategy, "model": args.model, "frames": done[-1] if done else None,
               "count": len(chosen), "seconds": round(seconds, 1),
               "frames_per_second": round(done[-1] / seconds, 1) if done else None,
               "cpus": os.cpu_count(), "machine": platform.machine(), "precision": resolve_precision(args.precision),
               "load_average_at_end": os.getloadavg()[0], "note": args.note}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = ROOT / "benchmarks" / "selection" / "speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(previous + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
