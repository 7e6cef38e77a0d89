"""Wall time of the `cm-unet` commands that must answer at once (issue 27).

`cm-unet --version`, `--help`, `COMMAND --help` and `presets` import
neither TensorFlow nor Keras (`tests/test_cli.py` checks `sys.modules`);
this measures what a user waits for each, as a fresh process started the
way the console script starts it (`python -m cm_unet_keras.cli ...`, from
this checkout), on an idle machine and with one core kept busy by a spin
loop. `python -c "import keras"` (what each of them cost before) is timed
beside them, in the same run. Target: under 1 s each.

Writes `benchmarks/cli_startup/results.json` and `results.md`.

    python benchmarks/cli_startup.py [--repeats 5] [--no-busy]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "cli_startup"
TARGET_S = 1.0
COMMANDS = (["--version"], ["--help"], ["predict", "--help"], ["finetune", "--help"], ["presets"])


def wall_time(argv):
    """Seconds from starting a fresh interpreter on `argv` to its exit."""
    started = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(repeats):
    """{label: [seconds, ...]} of each command and of `import keras`."""
    runs = {" ".join(["cm-unet", *command]): ["-m", "cm_unet_keras.cli", *command] for command in COMMANDS}
    runs['python -c "import keras" (before)'] = ["-c", "import keras"]
    times = {label: [] for label in runs}
    for _ in range(repeats):  # interleaved: a noisy machine moves every command alike
        for label, argv in runs.items():
            times[label].append(wall_time(argv))
    return times


def busy_core():
    """A process that keeps one core busy until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def machine():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    isa = "AVX512_BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "?"
    return (f"{os.cpu_count()}-core {platform.machine()}, {isa}, load average {os.getloadavg()[0]:.1f} at start, "
            f"run at niceness {os.nice(0)}")


def markdown(results):
    lines = [
        "# `cm-unet` start-up: commands that answer without TensorFlow",
        "",
        f"Machine: {results['machine']}. Python {results['python']}. {results['repeats']} runs each, "
        "interleaved; median [min, max] seconds of a fresh process, from start to exit.",
        f"Target: under {TARGET_S:g} s. Command: `python benchmarks/cli_startup.py`.",
        "",
        "| command | " + " | ".join(results["conditions"]) + " |",
        "|---|" + "---|" * len(results["conditions"]),
    ]
    for label in results["conditions"][next(iter(results["conditions"]))]:
        cells = []
        for times in results["conditions"].values():
            values = times[label]
            cells.append(f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]")
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-busy", action="store_true", help="skip the pass with one core busy")
    args = parser.parse_args()
    results = {"machine": machine(), "python": platform.python_version(), "repeats": args.repeats,
               "conditions": {"as is": measure(args.repeats)}}
    if not args.no_busy:
        spinner = busy_core()
        try:
            results["conditions"]["one core busy"] = measure(args.repeats)
        finally:
            spinner.kill()
            spinner.wait()
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (OUT / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
