"""Start-up cost of the command line: wall time of `mclstudio --help` and `mclstudio info CKPT` (a fresh
Python process each time, as a user runs them), and how many modules `import mclstudio.cli.main` loads.
Runs the commands of the checkout this file sits in, with the Python running it; with --baseline DIR
(a checkout of an earlier commit, e.g. `git archive <commit> | tar -x -C DIR`) it times that one too,
run by run in turn, so that a change in the machine's load affects both alike. Prints a table and
writes JSON (--out) naming the device.

    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py --baseline /tmp/base --out benchmarks/results/cli_startup_cpu.json
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


def environment(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}


def wall_time(tree: Path, args: list[str]) -> float:
    """Seconds of one `python -m mclstudio ARGS` in a fresh process, run in ``tree``."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mclstudio", *args], cwd=tree, env=environment(tree), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def import_counts(tree: Path) -> dict[str, int]:
    """Modules in sys.modules after `import mclstudio.cli.main`, and how many are torch or numpy."""
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=tree, env=environment(tree), check=True,
                         capture_output=True, text=True).stdout.split()
    return {"modules": int(out[0]), "torch_or_numpy_modules": int(out[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", default=None, help="A checkout of an earlier commit to time as well.")
    parser.add_argument("--baseline-label", default="", help="What the baseline is (e.g. its commit).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    trees = {"this checkout": ROOT}
    if args.baseline:
        trees["baseline"] = Path(args.baseline).resolve()
    times: dict[str, dict[str, list[float]]] = {t: {c: [] for c in COMMANDS} for t in trees}
    for run in range(args.runs + 1):  # run 0 warms the page cache and is not counted
        for name, cli_args in COMMANDS.items():
            for tree_name, tree in trees.items():
                seconds = wall_time(tree, cli_args)
                if run:
                    times[tree_name][name].append(seconds)
    report: dict = {
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "python": platform.python_version(), "runs": args.runs, "note": "medians of fresh processes; "
        "with a baseline, the two trees ran in turn, one run each",
    }
    for tree_name, tree in trees.items():
        label = f"{commit}" if tree_name == "this checkout" else args.baseline_label
        counts = import_counts(tree)
        report[tree_name] = {"label": label, "import_cli_main": counts, "commands": {
            name: {"median_s": statistics.median(ts), "min_s": min(ts), "runs_s": ts} for name, ts in times[tree_name].items()}}
        print(f"{tree_name} ({label}): import mclstudio.cli.main loads {counts['modules']} modules, "
              f"{counts['torch_or_numpy_modules']} of them torch or numpy")
        for name, ts in times[tree_name].items():
            print(f"  {name:40s} median {statistics.median(ts):.3f} s  min {min(ts):.3f} s  ({args.runs} runs)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
