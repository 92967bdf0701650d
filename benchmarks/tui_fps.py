"""Studio frame rate: how often the app updates the screen while streaming the shipped models.
Prints JSON (and writes it with --out).

    python benchmarks/tui_fps.py --out benchmarks/results/tui_fps_cpu.json

The app runs headless (Textual's test driver, so the compositor renders every update as it would on a
terminal) with the given checkpoints on the default episode (Omniglot-mini meta-test, 20 tasks x 5
shots), playing at maximum speed for --seconds. Reported per second:

- redraw_ticks_per_s: the redraw timer's ticks that ran (target 20; fewer means the UI thread is starved);
- new_frames_drawn_per_s: ticks that drew a new frame (bounded by the model's pace and by 20);
- model_steps_per_s: frames the worker produced (all learners stepped, queries evaluated);
- tick_interval_ms median and p95: the time between redraw ticks (50 ms when the UI thread keeps up), so
  also the delay a key press can see before it is handled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mclstudio.tui.cli import build_open_app
from mclstudio.tui.screens import LiveScreen

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [str(ROOT / "checkpoints" / f"{m}.pt") for m in ("mamba", "transformer", "linear_transformer", "performer")]


async def measure(checkpoints: list[str], seconds: float) -> dict:
    app = build_open_app(checkpoints, device="auto", record_dir="/tmp")
    stamps: list[float] = []
    redraw = app.redraw

    def timed_redraw() -> None:  # wraps the app's timer callback to time its ticks
        stamps.append(time.perf_counter())
        redraw()

    app.redraw = timed_redraw  # type: ignore[method-assign]
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("enter")
        while not isinstance(app.screen, LiveScreen):
            await pilot.pause(0.05)
        for _ in range(4):
            await pilot.press("plus")  # to max speed
        await pilot.press("space")
        while app.frames_received < 2:  # warm-up: first steps include lazy initialisation
            await pilot.pause(0.05)
        t0, ticks0, drawn0, got0 = time.perf_counter(), app.ticks, app.frames_drawn, app.frames_received
        first = len(stamps)
        while time.perf_counter() - t0 < seconds:
            await asyncio.sleep(0.25)
        dt = time.perf_counter() - t0
        gaps = sorted(1e3 * (b - a) for a, b in zip(stamps[first:], stamps[first + 1:]))
        result = {
            "checkpoints": [Path(c).name for c in checkpoints],
            "seconds": round(dt, 2),
            "redraw_ticks_per_s": round((app.ticks - ticks0) / dt, 1),
            "new_frames_drawn_per_s": round((app.frames_drawn - drawn0) / dt, 1),
            "model_steps_per_s": round((app.frames_received - got0) / dt, 1),
            "tick_interval_ms_median": round(statistics.median(gaps), 1),
            "tick_interval_ms_p95": round(gaps[int(0.95 * (len(gaps) - 1))], 1),
            "torch_threads": torch.get_num_threads(),
        }
        await pilot.press("q")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=DEFAULT)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: leave it)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    runs = [asyncio.run(measure(args.checkpoints, args.seconds))]
    if len(args.checkpoints) > 1:  # Mamba alone too
        runs.append(asyncio.run(measure(args.checkpoints[:1], args.seconds)))
    out = {
        "benchmark": "tui_fps",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu"},
        "runs": runs,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
