"""Wall time of `make test`'s pytest line (issue 27: <= 12 minutes with the
install, on a 2-core AVX2-only CPU, where the install takes ~2.5 of them).

Runs the pytest command of the Makefile's `test` target in the active
interpreter, prints its wall time and its slowest tests, and writes
`results.json` to `--out`:

    python benchmarks/suite_time.py                       # this machine as it is
    python benchmarks/suite_time.py --like-avx2           # as an AVX2-only CPU would run it
    python benchmarks/suite_time.py --like-avx2 -- tests/test_tuning.py   # some files only

`--like-avx2` approximates the issue's machine on a newer CPU: oneDNN
limited to AVX2 kernels (`ONEDNN_MAX_CPU_ISA=AVX2`) and float32 training,
since `--precision auto` picks bfloat16 on a CPU whose /proc/cpuinfo lists
avx512_bf16 or amx_bf16. It hides those flags from the run by mounting a
copy of /proc/cpuinfo without them in a private mount namespace (Linux, as
root: `unshare -m`), so that the test processes and their subprocesses all
read the same CPU as the AVX2 machine's.
"""

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def makefile_pytest_arguments(makefile=ROOT / "Makefile"):
    """The arguments after `-m pytest` in the Makefile's `test` recipe."""
    lines = makefile.read_text().splitlines()
    recipe = lines[lines.index(next(line for line in lines if line.startswith("test:"))) + 1]
    return shlex.split(recipe.split("-m pytest", 1)[1])


def pytest_command(files):
    """`python -m pytest` with the Makefile's arguments; `files` replace its `tests` when given."""
    arguments = makefile_pytest_arguments()
    if files:
        arguments = [a for a in arguments if a != "tests"] + list(files)
    return [sys.executable, "-m", "pytest", *arguments]


def like_avx2(command):
    """`command` under AVX2 kernels and a /proc/cpuinfo without bfloat16 flags."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    hidden = re.sub(r" (%s)\b" % "|".join(BFLOAT16_FLAGS), "", cpuinfo)
    if hidden == cpuinfo:
        return {"ONEDNN_MAX_CPU_ISA": "AVX2"}, command
    if os.geteuid() != 0:
        raise SystemExit("--like-avx2 on a CPU with bfloat16: run as root (it needs unshare -m to hide the flags)")
    copy = Path(tempfile.mkdtemp()) / "cpuinfo"
    copy.write_text(hidden)
    script = f"mount --bind {shlex.quote(str(copy))} /proc/cpuinfo && exec {shlex.join(command)}"
    return {"ONEDNN_MAX_CPU_ISA": "AVX2"}, ["unshare", "-m", "bash", "-c", script]


def run(command, environment):
    """Run `command` in the checkout, echoing its output; (wall seconds, output, return code)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **environment}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    process.wait()
    return time.perf_counter() - started, "".join(lines), process.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--like-avx2", action="store_true", help="AVX2 kernels and float32, as on an AVX2-only CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "suite_time")
    parser.add_argument("files", nargs="*", help="test files or node ids (default: the Makefile's `tests`)")
    args = parser.parse_args()
    command = pytest_command(args.files)
    environment, command = like_avx2(command) if args.like_avx2 else ({}, command)
    seconds, output, code = run(command, environment)
    slowest = re.findall(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)", output, flags=re.M)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    result = {
        "wall_seconds": round(seconds, 1), "return_code": code, "summary": summary,
        "command": shlex.join(command), "environment": environment, "files": args.files or ["tests"],
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "slowest": [{"seconds": float(s), "phase": phase, "test": test} for s, phase, test in slowest],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"pytest wall time: {seconds:.0f} s ({seconds / 60:.1f} min), exit code {code}; {summary}")
    return code


if __name__ == "__main__":
    sys.exit(main())
