"""Start-up cost of the command line: wall time of `mclstudio --help` and `mclstudio info CKPT` (a fresh
Python process each time, as a user runs them), and how many modules `import mclstudio.cli.main` loads.
Runs the commands of the checkout this file sits in, with the Python running it; prints a table and
writes JSON (--out) naming the device.

    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py --out benchmarks/results/cli_startup_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "mclstudio --help": ["--help"],
    "mclstudio info checkpoints/mamba.pt": ["info", "checkpoints/mamba.pt"],
}
IMPORT_PROBE = ("import sys, mclstudio.cli.main; "
                "print(len(sys.modules), sum(m.split('.')[0] in ('torch', 'numpy') for m in sys.modules))")


def wall_times(args: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Seconds of `python -m mclstudio ARGS` for each of ``runs`` fresh processes (one warm-up run first,
    so that every timed run finds the files in the page cache)."""
    times = []
    for n in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mclstudio", *args], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if n:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--label", default="", help="A note stored with the results (e.g. the commit).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    modules, heavy = (int(v) for v in subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, env=env,
                                                       check=True, capture_output=True, text=True).stdout.split())
    results = {}
    for name, cli_args in COMMANDS.items():
        times = wall_times(cli_args, args.runs, env)
        results[name] = {"median_s": statistics.median(times), "min_s": min(times), "runs_s": times}
        print(f"{name:40s} median {statistics.median(times):.3f} s  min {min(times):.3f} s  ({args.runs} runs)")
    print(f"import mclstudio.cli.main: {modules} modules, {heavy} of them torch or numpy")
    report = {
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "python": platform.python_version(), "commit": commit, "label": args.label, "runs": args.runs,
        "import_cli_main": {"modules": modules, "torch_or_numpy_modules": heavy}, "commands": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
