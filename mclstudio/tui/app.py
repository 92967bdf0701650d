"""The studio App: owns the feed, runs it in a thread worker, and redraws the latest frame on a timer.

Threading. The worker thread does all model work (``feed.frames()``) and hands each frame to the UI
with ``post_message`` (thread-safe). The UI thread only stores the newest frame and redraws on a
fixed-rate timer, so drawing never waits on a model and a slow model never blocks a key press.
Play/pause/step requests go to the worker through a threading.Event and a step counter.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from textual.app import App
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.command import Hit, Hits, Provider
from textual.message import Message
from textual.widgets import Static
from textual.worker import get_current_worker

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.recording.hdf5 import RecordingWriter
from mclstudio.training.adapters import load_learners
from mclstudio.training.checkpoint import Checkpoint
from mclstudio.recording.playback import Frame, LiveFeed, ReplayFeed
from mclstudio.tui.screens import HelpScreen, LiveScreen, PickerScreen
from mclstudio.tui.widgets import (AccuracyPanel, AssociationMap, ExampleView, MatrixHeatmap, NormsPanel, StatsPanel,
                                  association_kind)

# Steps per second at each speed level; None = as fast as the models go.
SPEEDS: list[float | None] = [0.5, 1, 2, 5, 10, 20, None]
REDRAW_HZ = 30
# torch threads of the model worker: the cores less one, which the UI thread needs.
WORKER_THREADS = max(1, (os.cpu_count() or 1) - 1)


class FrameReady(Message):
    """Posted by the worker after every stream example."""

    def __init__(self, frame: Frame) -> None:
        super().__init__()
        self.frame = frame


class FeedFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class RecordingFailed(Message):
    """Posted by the worker when opening or writing the recording failed; the stream goes on."""

    def __init__(self, path: Path, error: str) -> None:
        super().__init__()
        self.path = path
        self.error = error


def one_line(exc: BaseException) -> str:
    """An exception as one short line for a notification (never a traceback)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def unwritable_folder(folder: Path) -> str | None:
    """Why the studio cannot write into ``folder`` (checked before a write), or None when it can."""
    if not folder.is_dir():
        return f"folder not found: {folder}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder not writable: {folder}"
    return None


def new_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``stem-2.suffix``, ... when that exists: an export never replaces a file."""
    path, n = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


@dataclass
class Controls:
    """What the UI asks of the worker. Plain attributes set by the UI thread and read by the worker;
    the Event wakes the worker when it sleeps paused."""

    playing: bool = False
    steps: int = 0  # single steps requested while paused
    speed: int = 4
    recording_to: Path | None = None


class StudioCommands(Provider):
    """Command palette entries: open (a new episode), switch (learner shown), export (SVG, JSON)."""

    async def search(self, query: str) -> Hits:
        app: StudioApp = self.app  # type: ignore[assignment]
        matcher = self.matcher(query)
        commands: list[tuple[str, object, str]] = []
        if app.feed is None or app.feed.live:
            commands.append(("open: a new episode (episode picker)", app.action_open, "pick dataset, split, tasks..."))
        for name in app.learner_names:
            commands.append((f"switch: show {name}", partial(app.show_learner, name), "matrix and norms panels"))
        commands.append(("export: screenshot (SVG)", app.action_export_svg, "save the screen as SVG"))
        commands.append(("export: episode so far (JSON)", app.action_export_json, "accuracy, forgetting, norms"))
        for text, callback, help_text in commands:
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, help=help_text)  # type: ignore[arg-type]


class StudioApp(App):
    """``mclstudio open`` (live learners) and ``mclstudio replay --tui`` (a recording)."""

    CSS_PATH = "studio.tcss"
    TITLE = "mclstudio"
    COMMANDS = App.COMMANDS | {StudioCommands}
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(
        self,
        checkpoints: list[Checkpoint] | None = None,
        replay: ReplayFeed | None = None,
        spec: EpisodeSpec | None = None,
        show_timing: bool = True,
        record_dir: str | Path = ".",
        autostart: bool = False,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.checkpoints = checkpoints or []
        self.precision = replay.recording.engine_config.precision if replay else precision
        self.spec = spec or EpisodeSpec()
        self.show_timing = show_timing
        self.record_dir = Path(record_dir)
        self.autostart = autostart
        self.feed: LiveFeed | ReplayFeed | None = replay
        self.learner_names: list[str] = list(replay.names) if replay else []
        self.controls = Controls()
        self.worker_threads = WORKER_THREADS
        self.wake = threading.Event()
        self.step_lock = threading.Lock()
        self.frame: Frame | None = None
        self.dirty = False
        self.ticks = 0  # redraw timer ticks (the benchmark reads these counters)
        self.frames_drawn = 0  # ticks that drew a new frame
        self.frames_received = 0
        self.frame_on_screen: tuple[int, int] | None = None  # (episode, step) the panels hold
        self.selected = self.learner_names[0] if self.learner_names else ""
        self.query_row = 0
        self.history: dict[str, list[float]] = {}
        self.norms: dict[str, list[np.ndarray]] = {}
        self.maps: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        self.record_note = ""
        self.recorded_episodes = 0
        self._drawn_matrix: tuple = ()
        self._drawn_map: tuple = ()
        self._status_text = ""
        self._generation = 0  # bumped per new feed, so a stale worker's frames are dropped

    # ---- start-up -------------------------------------------------------------------------------
    def on_mount(self) -> None:
        self.set_sub_title("replay" if self.feed is not None else ", ".join(c.name for c in self.checkpoints))
        self.install_screen(LiveScreen(), "live")
        if self.feed is not None:  # replay: no picker, straight to the live view
            self._start_feed(self.feed)
        elif self.autostart:  # --play: no picker, playing from the first step
            error = self.start_episode(self.spec)
            if error:
                self.exit(return_code=2, message=f"error: {error}")
            else:
                self.action_toggle_play()
        else:
            self.push_screen(PickerScreen(self.spec))
        self.set_interval(1 / REDRAW_HZ, self.redraw)

    def set_sub_title(self, text: str) -> None:
        """The header's subtitle; a precision other than the default fp32 is added to it."""
        self.sub_title = text if self.precision == "fp32" else f"{text} · {self.precision}"

    def checkpoint_paths(self) -> list[str]:
        return [str(c.path) for c in self.checkpoints]

    def adapter_paths(self) -> list[str]:
        return [str(c.adapter_path) for c in self.checkpoints if c.adapter_path is not None]

    def start_episode(
        self, spec: EpisodeSpec, paths: list[str] | None = None, adapters: list[str] | None = None
    ) -> str | None:
        """Called by the picker: (re)load the checkpoints, with their adapters, if other paths were given;
        build a live feed for ``spec``; return an error line for the picker to show, or None."""
        try:
            checkpoints = self.checkpoints
            paths = self.checkpoint_paths() if paths is None else paths
            adapters = self.adapter_paths() if adapters is None else adapters
            if paths != self.checkpoint_paths() or adapters != self.adapter_paths():
                if not paths:
                    return "give at least one checkpoint"
                device = next(self.checkpoints[0].learner.parameters()).device if self.checkpoints else "cpu"
                checkpoints = load_learners(paths, adapters, device=device)
            feed = LiveFeed(checkpoints, spec, self.precision)
        except Exception as exc:  # noqa: BLE001 - shown in the picker, one line
            return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.spec = spec
        self.checkpoints = checkpoints
        self.set_sub_title(", ".join(feed.names))
        self.learner_names = list(feed.names)
        if self.selected not in self.learner_names:
            self.selected = self.learner_names[0]
        self._start_feed(feed)
        return None

    def _start_feed(self, feed: LiveFeed | ReplayFeed) -> None:
        self.workers.cancel_group(self, "feed")
        self.controls.recording_to = None
        self.wake.set()
        self.feed = feed
        self._generation += 1
        self.frame, self.dirty = None, False
        self.history = {n: [] for n in feed.names}
        self.norms = {n: [] for n in feed.names}
        self.maps = {}
        self.query_row = 0
        if self.screen is not self.get_screen("live"):
            if isinstance(self.screen, PickerScreen):
                self.switch_screen("live")
            else:
                self.push_screen("live")
        self.run_worker(partial(self._stream, feed, self._generation), thread=True, group="feed",
                        exclusive=True, exit_on_error=False)
        self.update_status()

    # ---- the worker (model side) ----------------------------------------------------------------
    def _stream(self, feed: LiveFeed | ReplayFeed, generation: int) -> None:
        """Pull frames at the requested pace; write finished episodes when recording. Runs in a thread."""
        worker = get_current_worker()
        # Leave a core to the UI thread: torch's thread count is per thread (OpenMP), so this limits only
        # the model work. On 2 cores, a second torch thread fought the UI for its core and was slower.
        torch.set_num_threads(self.worker_threads)
        c = self.controls
        writer: RecordingWriter | None = None
        try:
            frames = feed.frames()
            while not worker.is_cancelled:
                if not c.playing and c.steps <= 0:
                    self.wake.wait(0.05)
                    self.wake.clear()
                    continue
                t0 = time.perf_counter()
                frame = next(frames, None)
                if frame is None:  # a replay ran out
                    c.playing = False
                    self.post_message(FeedFailed("end of the recording"))
                    return
                if not c.playing:
                    with self.step_lock:
                        c.steps = max(c.steps - 1, 0)
                if isinstance(feed, LiveFeed):
                    writer = self._record(feed, frame, writer)
                if generation == self._generation:  # a newer feed replaced this one: drop the frame
                    self.post_message(FrameReady(frame))
                rate = SPEEDS[c.speed]
                if c.playing and rate is not None:  # pace the stream, waking early on a key
                    left = 1 / rate - (time.perf_counter() - t0)
                    if left > 0:
                        self.wake.wait(left)
                        self.wake.clear()
        except Exception as exc:  # noqa: BLE001 - shown in the app, never a crash
            c.playing = False  # the stream stopped: the status line must not say "playing"
            self.post_message(FeedFailed(f"{type(exc).__name__}: {str(exc).strip()[:160]}"))

    def _record(self, feed: LiveFeed, frame: Frame, writer: RecordingWriter | None) -> RecordingWriter | None:
        """Open a writer when recording starts; append each episode that finishes while it records."""
        path = self.controls.recording_to
        if path is None:
            return None
        try:
            if writer is None or writer.path != path:
                writer = feed.start_recording(path)
            if frame.episode_done:
                feed.write_episode(writer)
                self.recorded_episodes += 1
        except Exception as exc:  # noqa: BLE001 - a full disk or a lost folder stops the recording, not the stream
            if self.controls.recording_to == path:
                self.controls.recording_to = None
            self.post_message(RecordingFailed(path, one_line(exc)))
            return None
        return writer

    # ---- the UI side ----------------------------------------------------------------------------
    def on_frame_ready(self, message: FrameReady) -> None:
        f = message.frame
        self.frames_received += 1
        if f.step == 0:
            self.history = {n: [] for n in self.learner_names}
            self.norms = {n: [] for n in self.learner_names}
            self.maps = {}
        for s in f.snapshots:
            self.history[s.learner].append(np.nan if s.accuracy is None else s.accuracy)
            self.norms[s.learner].append(s.layer_norms)
            if s.rows is not None and s.same_class is not None:
                self.maps[s.learner] = (s.rows, s.same_class, s.step)
        self.frame, self.dirty = f, True
        if f.episode_done and not self.controls.playing:
            self.notify(f"episode {f.episode} finished")

    def on_recording_failed(self, message: RecordingFailed) -> None:
        written = f"{self.recorded_episodes} episodes written to {message.path}" if self.recorded_episodes \
            else "nothing written"
        self.record_note = f"[red]recording failed[/] ({written})"
        self.notify(f"recording stopped: {message.error} ({written})", severity="error", timeout=10)
        self.update_status()

    def on_feed_failed(self, message: FeedFailed) -> None:
        self.notify(message.error, severity="warning" if "end of" in message.error else "error", timeout=8)
        self.update_status()

    def redraw(self) -> None:
        """Timer: draw the newest frame if it changed. Only this method touches the panels."""
        self.ticks += 1
        if not self.dirty or self.frame is None or self.screen is not self.get_screen("live"):
            return
        self.dirty = False
        self.frames_drawn += 1
        f, live = self.frame, self.get_screen("live")
        self.frame_on_screen = (f.episode, f.step)
        live.query_one(ExampleView).show(f)
        live.query_one(AccuracyPanel).show(f, self.history, compact=live.mode == "compact")
        # The matrix and the association map change only at task ends: redraw them only then.
        snap = next(s for s in f.snapshots if s.learner == self.selected)
        matrix_key = (f.episode, self.selected, int((~np.isnan(snap.accuracy_matrix)).sum()))
        if matrix_key != self._drawn_matrix:
            live.query_one(MatrixHeatmap).show(f, self.selected)
            self._drawn_matrix = matrix_key
        live.query_one(NormsPanel).show(self.selected, self.norms.get(self.selected, []))
        live.query_one(StatsPanel).show(f, self.show_timing)
        map_key = (f.episode, self.query_row, tuple((n, m[2]) for n, m in self.maps.items()))
        if map_key != self._drawn_map:
            self._draw_map()
            self._drawn_map = map_key
        self.update_status()

    def layout_changed(self) -> None:
        """The live screen changed size or layout: every panel is drawn again at its new size."""
        self._drawn_matrix, self._drawn_map = (), ()
        self.dirty = self.frame is not None

    def _draw_map(self) -> None:
        if self.frame is None or self.feed is None:
            return
        f = self.frame
        # Mamba's hidden attention next to the Transformer's attention when both are loaded; else the first two.
        models = self.feed.models
        names = [n for n in self.learner_names if n in self.maps]
        preferred = [n for n in names if models.get(n) in ("mamba", "transformer")]
        shown = {n: self.maps[n] for n in (preferred or names)[:2]}
        kinds = {n: association_kind(models.get(n, "")) for n in shown}
        q = self.query_row % max(len(f.rows_query_task), 1)
        qtask = int(f.rows_query_task[q]) if len(f.rows_query_task) else 0
        width = max(self.get_screen("live").query_one(AssociationMap).size.width - 2, 20)
        live = self.get_screen("live")
        live.query_one(AssociationMap).show(q, shown, f.task_starts, qtask, len(f.rows_query_task), width, kinds,
                                            fill_height=live.mode == "compact")  # type: ignore[attr-defined]

    def mode_line(self) -> str:
        if isinstance(self.feed, ReplayFeed):
            return f"replaying {self.feed.recording.path}"
        return f"learners: {', '.join(self.learner_names) or '-'}; episode {self.spec.dataset} {self.spec.split}"

    def update_status(self) -> None:
        c = self.controls
        speed = SPEEDS[c.speed]
        state = "playing" if c.playing else "paused"
        rec = f"  [red]● REC {c.recording_to.name}[/] ({self.recorded_episodes} episodes)" if c.recording_to else ""
        note = f"  {self.record_note}" if self.record_note and not c.recording_to else ""
        f = self.frame
        where = ("  (space plays, n steps)" if f is None
                 else f"  step {f.step + 1}/{f.num_examples} task {f.task + 1}/{f.tasks}")
        text = (f"[b]{state}[/b]  speed {'max' if speed is None else f'{speed:g}'} steps/s{rec}{where}  "
                f"showing {self.selected}{note}")
        try:
            status = self.get_screen("live").query_one("#status", Static)
            if text != self._status_text:  # Static.update repaints; the status rarely changes
                status.update(text, layout=False)  # one line, always: no layout pass needed
                self._status_text = text
        except NoMatches:  # the live screen is not composed yet; the next redraw shows it
            pass

    # ---- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A replay has no models: its footer offers no recording (False hides the key)."""
        if action == "record" and self.feed is not None and not self.feed.live:
            return False
        return True

    def action_toggle_play(self) -> None:
        self.controls.playing = not self.controls.playing
        with self.step_lock:  # pending single steps do not outlive a play
            self.controls.steps = 0
        self.wake.set()
        self.update_status()

    def action_step(self) -> None:
        self.controls.playing = False
        with self.step_lock:  # the worker decrements it: a read-modify-write on both sides
            self.controls.steps += 1
        self.wake.set()
        self.update_status()

    def action_faster(self) -> None:
        self.controls.speed = min(self.controls.speed + 1, len(SPEEDS) - 1)
        self.wake.set()
        self.update_status()

    def action_slower(self) -> None:
        self.controls.speed = max(self.controls.speed - 1, 0)
        self.update_status()

    def action_query(self, delta: int) -> None:
        self.query_row += delta
        self.dirty = True

    def action_switch(self) -> None:
        if self.learner_names:
            i = self.learner_names.index(self.selected) if self.selected in self.learner_names else -1
            self.show_learner(self.learner_names[(i + 1) % len(self.learner_names)])

    def show_learner(self, name: str) -> None:
        self.selected = name
        self.dirty = True
        self.update_status()

    def action_record(self) -> None:
        """Start or stop recording. Episodes finished while recording are written (the schema of
        ``mclstudio record``); an episode still running when recording stops is not."""
        c = self.controls
        if not isinstance(self.feed, LiveFeed):
            self.notify("a replay has no models to record", severity="warning")
            return
        if c.recording_to is None:
            problem = unwritable_folder(self.record_dir)
            if problem:
                self.notify(f"cannot record: {problem} (--record-dir)", severity="error", timeout=10)
                return
            c.recording_to = new_path(self.record_dir, f"studio-{time.strftime('%Y%m%d-%H%M%S')}", ".h5")
            self.recorded_episodes = 0
            self.record_note = ""
            self.notify(f"recording to {c.recording_to} (each finished episode is written)")
        else:
            path, c.recording_to = c.recording_to, None
            self.record_note = f"recorded {self.recorded_episodes} episodes to {path}"
            self.notify(self.record_note)
        self.update_status()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_open(self) -> None:
        if isinstance(self.feed, ReplayFeed):
            self.notify("a replay has no models; open checkpoints with `mclstudio open`", severity="warning")
            return
        self.controls.playing = False
        self.push_screen(PickerScreen(self.spec))

    def action_pop_screen_if_live(self) -> None:
        if self.feed is not None and len(self.screen_stack) > 1:
            self.pop_screen()

    def _export(self, stem: str, suffix: str, text: str) -> None:
        """Write an export into --record-dir under a new name; a failure is a notification."""
        problem = unwritable_folder(self.record_dir)
        if problem:
            self.notify(f"cannot export: {problem} (--record-dir)", severity="error", timeout=10)
            return
        path, created = new_path(self.record_dir, stem, suffix), False
        try:
            with open(path, "x") as f:  # "x": never replaces a file that appeared meanwhile
                created = True
                f.write(text)
        except OSError as exc:
            if created:  # a half-written export (a full disk) is removed
                path.unlink(missing_ok=True)
            self.notify(f"cannot export: {one_line(exc)}", severity="error", timeout=10)
            return
        self.notify(f"saved {path}")

    def action_export_svg(self) -> None:
        self._export(f"studio-{time.strftime('%Y%m%d-%H%M%S')}", ".svg", self.export_screenshot())

    def action_export_json(self) -> None:
        import json

        if self.frame is None:
            self.notify("nothing streamed yet", severity="warning")
            return
        out = {
            "episode": self.frame.episode, "step": self.frame.step,
            "learners": {
                s.learner: {
                    "running_accuracy": [None if np.isnan(v) else v for v in self.history[s.learner]],
                    "accuracy_matrix": np.where(np.isnan(s.accuracy_matrix), None, s.accuracy_matrix).tolist(),
                    "forgetting": None if s.forgetting is None else s.forgetting.tolist(),
                    "mean_forgetting": s.mean_forgetting,  # what the panel shows (metrics.mean_forgetting)
                    "state_bytes": s.state_bytes,
                    "layer_norms": np.stack(self.norms[s.learner]).tolist(),
                } for s in self.frame.snapshots
            },
        }
        self._export(f"studio-episode{self.frame.episode}-step{self.frame.step + 1}", ".json", json.dumps(out, indent=1))
