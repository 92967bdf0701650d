"""Studio frame rate: how often the screen shows new model data while streaming the shipped models.
Prints JSON (and writes it with --out).

    python benchmarks/tui_fps.py --both --out benchmarks/results/tui_fps_cpu.json   # headless and in tmux
    python benchmarks/tui_fps.py --tmux                                              # a real terminal only
    python benchmarks/tui_fps.py --device cuda                                       # the models on a GPU
    python benchmarks/tui_fps.py --worker both                                       # thread vs process worker

Each setting (all the given checkpoints, then the first alone) runs --repeats times, interleaved; the
summary holds the medians.

The app runs headless (Textual's test driver) with the given checkpoints on the default episode
(Omniglot-mini meta-test, 20 tasks x 5 shots), playing at maximum speed for --seconds. Headless Textual
composites every screen update but skips encoding it for the terminal; the benchmark does that encoding
itself (``render_segments``, what a real terminal run pays), so the UI thread carries the whole cost.

Counted where the screen is written (``App._display``, one call per screen update), per second:

- new_data_screen_updates_per_s: screen updates that show a frame (a model step) the previous screen
  update did not show. This is the issue's "screen updates per second while streaming" (target >= 15);
- screen_updates_per_s: all screen updates of the live view (new data or not: a key, the status line);
- redraw_ticks_per_s: ticks of the app's redraw timer (target REDRAW_HZ = 30; fewer means the UI thread is late);
- panel_updates_per_s: ticks that handed a new frame to the panels (each is then shown by the next
  screen update, or replaced by a newer frame before it);
- model_steps_per_s: frames the worker produced (all learners stepped, queries evaluated);
- tick_interval_ms median and p95: the time between redraw ticks (33 ms when the UI thread keeps up),
  so also the delay a key press can see before it is handled;
- this_process_cores (of which ui_thread_cores on the UI thread, the rest on the model worker) and
  other_processes_cores: CPU used by the studio and by everything else on the machine during the run,
  in cores (the machine has "cpus"); figures are only comparable when the other processes' share is
  near 0. With ``--worker process`` (``open --worker process``: the models in a child process),
  model_process_cores is that child's CPU, not counted in the other two.

With --tmux the app runs for real (``mclstudio open ... --play``, then ``+ +`` to maximum speed) in a
private tmux server, as a user would see it: Textual writes escape codes to a pseudo-terminal and tmux
parses them into its screen, so the terminal's own rendering is included. The benchmark polls that screen
(``tmux capture-pane -p``) as fast as it can and reads the step counter of the status line ("step S/N")
and the episode ("episode E") of the example panel. Per second:

- terminal_new_frames_per_s: distinct (episode, step) values seen on the tmux screen. A lower bound of
  the frames the terminal showed: two frames between two polls count as one (captures_per_s says how
  often it looked; each capture is a subprocess, whose CPU is counted in poller_cores);
- terminal_model_steps_per_s: how far the step counter advanced (episode * N + step), i.e. model steps
  the app made while its screen was a real terminal;
- app_cores, app_children_cores, tmux_cores, poller_cores, other_processes_cores: CPU of the app, of its
  child processes (``--worker process``: the model process), of the tmux server, of this benchmark and
  its capture-pane calls, and of everything else on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mclstudio.choices import STUDIO_DEFAULT_WORKER, STUDIO_FUSED_MODES, STUDIO_WORKERS
from mclstudio.tui.cli import build_open_app
from mclstudio.tui.headless import start_live, wait_until
from mclstudio.tui.screens import LiveScreen

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [str(ROOT / "checkpoints" / f"{m}.pt") for m in ("mamba", "transformer", "linear_transformer", "performer", "longhorn")]


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far; Linux /proc, else 0s.
    Their difference over a run is the CPU other processes took: the numbers are only comparable when
    that is near 0."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, open("/proc/stat").readline().split()[1:9])
        own = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        return (user + nice + system + irq + softirq + steal) / ticks, (int(own[11]) + int(own[12])) / ticks
    except (OSError, ValueError):
        return 0.0, 0.0


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far; 0 when it cannot be read."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def child_pids(pid: int) -> list[int]:
    """The children of process ``pid`` (``open --worker process``: its model process and multiprocessing's
    resource tracker); Linux /proc, else none."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (the capture-pane calls)."""
    t = os.times()
    return t.children_user + t.children_system


POLL_S = 0.01  # between captures: about 60 a second, at about a tenth of a core (2 cores here, shared)
STEP = re.compile(r"step (\d+)/(\d+) task")
EPISODE = re.compile(r"episode (\d+)")


def measure_tmux(checkpoints: list[str], seconds: float, device: str, size: tuple[int, int] = (160, 50),
                 fused_step: str = "auto", worker: str = "thread") -> dict:
    """The app in a private tmux server at ``size``, playing at maximum speed; the screen polled with
    capture-pane. See the module docstring for what is counted."""
    if shutil.which("tmux") is None:
        raise SystemExit("error: --tmux needs tmux (apt-get install tmux)")
    sock = f"mclstudio-fps-{os.getpid()}-{time.monotonic_ns()}"  # a private server per run: never the user's
    tmux = ["tmux", "-L", sock]
    command = " ".join([sys.executable, "-m", "mclstudio", "open", *checkpoints, "--play", "--device", device,
                        "--record-dir", "/tmp", "--fused-step", fused_step, "--worker", worker])
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    subprocess.run([*tmux, "-f", "/dev/null", "new-session", "-d", "-s", "fps", "-x", str(size[0]), "-y",
                    str(size[1]), f"cd {ROOT} && {command}"], check=True, env=env)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "fps"], capture_output=True, text=True).stdout

    def counter(text: str) -> tuple[int, int] | None:
        step, episode = STEP.search(text), EPISODE.search(text)
        if step is None or episode is None:
            return None
        return int(episode.group(1)), int(step.group(1)) + int(episode.group(1)) * int(step.group(2))

    try:
        app_pid = int(subprocess.run([*tmux, "list-panes", "-t", "fps", "-F", "#{pane_pid}"], capture_output=True,
                                     text=True, check=True).stdout.split()[0])
        server_pid = int(subprocess.run([*tmux, "display-message", "-p", "#{pid}"], capture_output=True, text=True,
                                        check=True).stdout.strip())
        end = time.monotonic() + 120
        while counter(screen()) is None:  # the app is up and streaming
            if time.monotonic() > end:
                raise SystemExit(f"error: the app never showed a step; its screen:\n{screen()}")
            time.sleep(0.2)
        for _ in range(2):
            subprocess.run([*tmux, "send-keys", "-t", "fps", "+"], check=True)  # --play starts at 10/s: to max
            time.sleep(0.2)
        time.sleep(2.0)  # warm-up at the new speed
        if "speed max" not in screen():
            raise SystemExit(f"error: the app did not reach maximum speed; its screen:\n{screen()}")
        seen: set[tuple[int, int]] = set()
        t0, busy0, own0 = time.perf_counter(), *cpu_seconds()
        kids0, app0, server0 = children_cpu_seconds(), process_cpu_seconds(app_pid), process_cpu_seconds(server_pid)
        app_children = child_pids(app_pid)
        children0 = sum(process_cpu_seconds(c) for c in app_children)
        first = last = counter(screen())
        captures = 0
        while time.perf_counter() - t0 < seconds:
            now = counter(screen())
            captures += 1
            if now is not None:
                seen.add(now)
                last = now
            time.sleep(POLL_S)
        dt = time.perf_counter() - t0
        busy1, own1 = cpu_seconds()
        kids = children_cpu_seconds() - kids0
        app_s, server_s = process_cpu_seconds(app_pid) - app0, process_cpu_seconds(server_pid) - server0
        children_s = sum(process_cpu_seconds(c) for c in app_children) - children0
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    poller = (own1 - own0) + kids
    assert first is not None and last is not None
    return {
        "checkpoints": [Path(c).name for c in checkpoints],
        "terminal": f"tmux {size[0]}x{size[1]}",
        "seconds": round(dt, 2),
        "terminal_new_frames_per_s": round(len(seen) / dt, 1),
        "terminal_model_steps_per_s": round((last[1] - first[1]) / dt, 1),
        "captures_per_s": round(captures / dt, 1),
        "app_cores": round(app_s / dt, 2),
        "app_children_cores": round(children_s / dt, 2),
        "tmux_cores": round(server_s / dt, 2),
        "poller_cores": round(poller / dt, 2),
        "other_processes_cores": round(max(0.0, (busy1 - busy0) - app_s - children_s - server_s - poller) / dt, 2),
    }


async def measure(checkpoints: list[str], seconds: float, device: str = "auto", fused_step: str = "auto",
                  worker: str = "thread") -> dict:
    app = build_open_app(checkpoints, device=device, record_dir="/tmp", fused_step=fused_step, worker=worker)
    stamps: list[float] = []
    shown: list[tuple | None] = []  # per screen update of the live view: the frame it showed
    live = app.live  # the live screen: its redraw timer and counters
    redraw, display = live.redraw, app._display

    def timed_redraw() -> None:  # wraps the live screen's timer callback to time its ticks
        stamps.append(time.perf_counter())
        redraw()

    def counted_display(screen, renderable) -> None:  # noqa: ANN001 - wraps Textual's private App._display
        display(screen, renderable)
        if renderable is not None and isinstance(screen, LiveScreen):
            renderable.render_segments(app.console)  # the terminal encoding headless mode skips
            shown.append(live.frame_on_screen)

    live.redraw = timed_redraw  # type: ignore[method-assign]
    app._display = counted_display  # type: ignore[method-assign]
    async with app.run_test(size=(160, 50)) as pilot:
        await start_live(pilot)
        for _ in range(4):
            await pilot.press("plus")  # to max speed
        await pilot.press("space")
        await wait_until(pilot, lambda: app.frames_received >= 2)  # warm-up: first steps initialise lazily
        child = getattr(app.player, "process", None)  # --worker process: the model process
        child_cpu = (lambda: process_cpu_seconds(child.pid)) if child is not None else (lambda: 0.0)
        t0, ticks0, drawn0, got0 = time.perf_counter(), live.ticks, live.frames_drawn, live.frames_received
        busy0, own0, ui0, child0 = *cpu_seconds(), time.thread_time(), child_cpu()  # (on the UI thread)
        first, first_shown = len(stamps), len(shown)
        while time.perf_counter() - t0 < seconds:
            await asyncio.sleep(0.25)
        dt = time.perf_counter() - t0
        busy1, own1, ui1, child1 = *cpu_seconds(), time.thread_time(), child_cpu()
        updates = shown[first_shown:]
        new_data = sum(1 for prev, cur in zip(shown[first_shown - 1:], updates) if cur is not None and cur != prev)
        gaps = sorted(1e3 * (b - a) for a, b in zip(stamps[first:], stamps[first + 1:]))
        result = {
            "checkpoints": [Path(c).name for c in checkpoints],
            "worker": worker,
            "seconds": round(dt, 2),
            "new_data_screen_updates_per_s": round(new_data / dt, 1),
            "screen_updates_per_s": round(len(updates) / dt, 1),
            "redraw_ticks_per_s": round((live.ticks - ticks0) / dt, 1),
            "panel_updates_per_s": round((live.frames_drawn - drawn0) / dt, 1),
            "model_steps_per_s": round((live.frames_received - got0) / dt, 1),
            "tick_interval_ms_median": round(statistics.median(gaps), 1),
            "tick_interval_ms_p95": round(gaps[int(0.95 * (len(gaps) - 1))], 1),
            "worker_torch_threads": app.player.worker_threads,
            "this_process_cores": round((own1 - own0) / dt, 2),
            "ui_thread_cores": round((ui1 - ui0) / dt, 2),
            "model_process_cores": round((child1 - child0) / dt, 2),
            "other_processes_cores": round(max(0.0, (busy1 - busy0) - (own1 - own0) - (child1 - child0)) / dt, 2),
        }
        await pilot.press("q")
    return result


SUMMARISED = ("new_data_screen_updates_per_s", "model_steps_per_s", "redraw_ticks_per_s", "ui_thread_cores",
              "this_process_cores", "model_process_cores", "other_processes_cores")
SUMMARISED_TMUX = ("terminal_new_frames_per_s", "terminal_model_steps_per_s", "captures_per_s", "app_cores",
                   "app_children_cores", "tmux_cores", "poller_cores", "other_processes_cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=DEFAULT)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setting (the summary is their median)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="auto", help="where the models run: auto, cpu or cuda[:N]")
    parser.add_argument("--tmux", action="store_true", help="run the app in a real terminal (tmux) instead of headless")
    parser.add_argument("--both", action="store_true",
                        help="headless and tmux runs interleaved, so that both see the same load on the machine")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="Python's thread switch interval in seconds for the headless runs (sys.setswitchinterval; "
                             "default Python's 0.005): the model worker and the UI thread share one interpreter lock")
    parser.add_argument("--fused-step", default="auto", choices=STUDIO_FUSED_MODES,
                        help="the engine's fused step (CUDA graphs on a GPU, engine/graphs.py); off: op by op")
    parser.add_argument("--worker", default=STUDIO_DEFAULT_WORKER, choices=(*STUDIO_WORKERS, "both"),
                        help="open --worker: the models in a thread of the app or in a child process; both: "
                             "each setting with each, interleaved")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    settings = [args.checkpoints] + ([args.checkpoints[:1]] if len(args.checkpoints) > 1 else [])  # + Mamba alone
    modes = ["headless", "tmux"] if args.both else ["tmux"] if args.tmux else ["headless"]
    workers = list(STUDIO_WORKERS) if args.worker == "both" else [args.worker]
    runs, summary = [], []
    for _ in range(args.repeats):  # settings interleaved, so a change in the machine's load hits all alike
        for mode in modes:
            for checkpoints in settings:
                for worker in workers:
                    result = (measure_tmux(checkpoints, args.seconds, args.device, fused_step=args.fused_step,
                                           worker=worker)
                              if mode == "tmux" else asyncio.run(measure(checkpoints, args.seconds, args.device,
                                                                         args.fused_step, worker)))
                    runs.append({"mode": mode, "worker": worker, **result})
    for mode, checkpoints, worker in itertools.product(modes, settings, workers):
        names = [Path(c).name for c in checkpoints]
        mine = [r for r in runs if r["checkpoints"] == names and r["mode"] == mode and r["worker"] == worker]
        summary.append({"mode": mode, "worker": worker, "checkpoints": names, "runs": len(mine),
                        **{f"median_{key}": statistics.median(r[key] for r in mine)
                           for key in (SUMMARISED_TMUX if mode == "tmux" else SUMMARISED)}})
    from mclstudio.store.device import resolve_device

    out = {
        "benchmark": "tui_fps",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "device": str(resolve_device(args.device)),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "fused_step": args.fused_step,
        "switch_interval_s": sys.getswitchinterval(),
        "summary": summary,
        "runs": runs,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
