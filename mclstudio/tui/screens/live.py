"""The live view: the panels, the status line and the live keys (play, step, speed, query, switch,
record). The worker's messages (messages.FrameReady, ...) arrive here; the screen keeps what the panels
need of past frames and redraws the newest one on a fixed-rate timer, so drawing never waits on a model
and a slow model never blocks a key press."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from mclstudio.recording.playback import Frame, LiveFeed, ReplayFeed
from mclstudio.tui.exports import new_path, unwritable_folder
from mclstudio.tui.messages import FeedFailed, FrameReady, RecordingFailed
from mclstudio.tui.player import Player
from mclstudio.tui.widgets import (AccuracyPanel, AssociationMap, ExampleView, MatrixHeatmap, NormsPanel, StatsPanel,
                                  View)

# The live view's sizes: below MIN_SIZE a message replaces the panels; below FULL_SIZE (in either
# direction) the compact view shows accuracy, forgetting, state memory and the association map only.
MIN_SIZE = (80, 24)
FULL_SIZE = (110, 34)
REDRAW_HZ = 30


def layout_mode(width: int, height: int) -> str:
    """"too-small", "compact" or "full" for a terminal of width x height cells."""
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        return "too-small"
    return "compact" if width < FULL_SIZE[0] or height < FULL_SIZE[1] else "full"


class LiveScreen(Screen):
    """The live view of a feed (``reset`` starts showing one). Its layout follows the terminal size
    (``layout_mode``): full, compact, or a message when the terminal is too small. ``player``: the
    controls the keys change; ``record_dir``: where ``r`` records to; ``show_timing``: step latencies
    (hidden for deterministic snapshots)."""

    BINDINGS = [
        Binding("space", "toggle_play", "play"),  # short: the footer fits in 80 columns
        Binding("right,n", "step", "step"),
        Binding("plus,+", "faster", "faster"),
        Binding("minus,-", "slower", "slower"),
        Binding("left_square_bracket", "query(-1)", "prev query", show=False),
        Binding("right_square_bracket", "query(1)", "next query", show=False),
        Binding("tab", "switch", "switch", show=False),
        Binding("r", "record", "record"),
    ]

    # What the panels draw, set by each redraw; every panel's own ``view`` is bound to it.
    view: reactive[View | None] = reactive(None, repaint=False, init=False)

    def __init__(self, player: Player, record_dir: Path, show_timing: bool = True) -> None:
        super().__init__()
        self.player = player
        self.record_dir = record_dir
        self.show_timing = show_timing
        self.mode = "full"
        self.feed: LiveFeed | ReplayFeed | None = None
        self.frame: Frame | None = None  # the newest frame received
        self.dirty = False  # a frame arrived (or the layout changed) since the last redraw
        self.ticks = 0  # redraw timer ticks (the benchmark reads these counters)
        self.frames_drawn = 0  # ticks that drew a new frame
        self.frames_received = 0
        self.frame_on_screen: tuple[int, int] | None = None  # (episode, step) the panels hold
        self.selected = ""
        self.query_row = 0
        self.history: dict[str, list[float]] = {}
        self.norms: dict[str, list[np.ndarray]] = {}
        self.maps: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        self.layout_generation = 0  # bumped per size or layout change: every panel draws again
        self.record_note = ""
        self._status_text = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="status")
        yield Static("", id="too-small")
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield ExampleView("waiting for the first step", id="example").data_bind(LiveScreen.view)
                yield StatsPanel("", id="stats").data_bind(LiveScreen.view)
            with Vertical(id="middle"):
                yield AccuracyPanel("", id="accuracy").data_bind(LiveScreen.view)
                yield NormsPanel("", id="norms").data_bind(LiveScreen.view)
            yield MatrixHeatmap("", id="matrix").data_bind(LiveScreen.view)
        yield AssociationMap("", id="assoc").data_bind(LiveScreen.view)
        yield Footer()

    def on_mount(self) -> None:
        titles = {"#example": "example", "#stats": "state memory and step latency",
                  "#accuracy": "accuracy, forgetting",
                  "#norms": "hidden-state norms", "#matrix": "accuracy matrix",
                  "#assoc": "association map (\\[ and ] pick the query)"}
        for selector, title in titles.items():
            self.query_one(selector).border_title = title
        self.apply_size(self.app.size.width, self.app.size.height)
        self.update_status()
        self.set_interval(1 / REDRAW_HZ, self.redraw)

    def reset(self, feed: LiveFeed | ReplayFeed) -> None:
        """Show ``feed`` from its first frame (the learner shown stays when the new feed has it)."""
        self.feed = feed
        self.frame, self.dirty = None, False
        self.history = {n: [] for n in feed.names}
        self.norms = {n: [] for n in feed.names}
        self.maps = {}
        self.query_row = 0
        if self.selected not in feed.names:
            self.selected = feed.names[0]
        self.update_status()

    # ---- size and layout --------------------------------------------------------------------------
    def on_resize(self, event: events.Resize) -> None:
        self.apply_size(event.size.width, event.size.height)

    def apply_size(self, width: int, height: int) -> None:
        self.mode = layout_mode(width, height)
        self.set_class(self.mode == "compact", "-compact")
        self.set_class(self.mode == "too-small", "-too-small")
        self.query_one("#accuracy").border_title = ("accuracy, forgetting, state memory" if self.mode == "compact"
                                                    else "accuracy, forgetting")
        if self.mode == "too-small":
            self.query_one("#too-small", Static).update(
                f"The terminal is {width}x{height}: the studio needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}.\n"
                "Enlarge the window (or make the font smaller). The stream goes on; q quits.")
        # every panel is drawn again at its new size
        self.layout_generation += 1
        self.dirty = self.frame is not None

    # ---- the worker's messages --------------------------------------------------------------------
    def on_frame_ready(self, message: FrameReady) -> None:
        f = message.frame
        self.frames_received += 1
        if f.step == 0:
            self.history = {s.learner: [] for s in f.snapshots}
            self.norms = {s.learner: [] for s in f.snapshots}
            self.maps = {}
        for s in f.snapshots:
            self.history[s.learner].append(np.nan if s.accuracy is None else s.accuracy)
            self.norms[s.learner].append(s.layer_norms)
            if s.rows is not None and s.same_class is not None:
                self.maps[s.learner] = (s.rows, s.same_class, s.step)
        self.frame, self.dirty = f, True
        if f.episode_done and not self.player.controls.playing:
            self.notify(f"episode {f.episode} finished")

    def on_recording_failed(self, message: RecordingFailed) -> None:
        n = self.player.recorded_episodes
        written = f"{n} episodes written to {message.path}" if n else "nothing written"
        self.record_note = f"[red]recording failed[/] ({written})"
        self.notify(f"recording stopped: {message.error} ({written})", severity="error", timeout=10)
        self.update_status()

    def on_feed_failed(self, message: FeedFailed) -> None:
        self.notify(message.error, severity="warning" if "end of" in message.error else "error", timeout=8)
        self.update_status()

    # ---- drawing ----------------------------------------------------------------------------------
    def redraw(self) -> None:
        """Timer: draw the newest frame if it changed, while this screen is the one shown."""
        self.ticks += 1
        if not self.dirty or self.frame is None or self.feed is None or self.app.screen is not self:
            return
        self.dirty = False
        self.frames_drawn += 1
        f = self.frame
        self.frame_on_screen = (f.episode, f.step)
        self.view = View(f, self.history, self.norms, self.maps, self.feed.models, self.selected, self.query_row,
                         self.mode == "compact", self.show_timing, self.layout_generation)
        self.update_status()

    def update_status(self) -> None:
        c, player = self.player.controls, self.player
        speed = player.speed
        state = "playing" if c.playing else "paused"
        rec = f"  [red]● REC {c.recording_to.name}[/] ({player.recorded_episodes} episodes)" if c.recording_to else ""
        note = f"  {self.record_note}" if self.record_note and not c.recording_to else ""
        f = self.frame
        where = ("  (space plays, n steps)" if f is None
                 else f"  step {f.step + 1}/{f.num_examples} task {f.task + 1}/{f.tasks}")
        text = (f"[b]{state}[/b]  speed {'max' if speed is None else f'{speed:g}'} steps/s{rec}{where}  "
                f"showing {self.selected}{note}")
        try:
            status = self.query_one("#status", Static)
        except NoMatches:  # not composed yet; on_mount shows it
            return
        if text != self._status_text:  # Static.update repaints; the status rarely changes
            status.update(text, layout=False)  # one line, always: no layout pass needed
            self._status_text = text

    # ---- the live keys ----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A replay has no models: its footer offers no recording (False hides the key)."""
        if action == "record" and self.feed is not None and not self.feed.live:
            return False
        return True

    def action_toggle_play(self) -> None:
        self.player.toggle_play()
        self.update_status()

    def action_step(self) -> None:
        self.player.step()
        self.update_status()

    def action_faster(self) -> None:
        self.player.faster()
        self.update_status()

    def action_slower(self) -> None:
        self.player.slower()
        self.update_status()

    def action_query(self, delta: int) -> None:
        self.query_row += delta
        self.dirty = True

    def action_switch(self) -> None:
        names = self.feed.names if self.feed is not None else []
        if names:
            i = names.index(self.selected) if self.selected in names else -1
            self.show_learner(names[(i + 1) % len(names)])

    def show_learner(self, name: str) -> None:
        """Show ``name`` in the matrix and norms panels."""
        self.selected = name
        self.dirty = True
        self.update_status()

    def action_record(self) -> None:
        """Start or stop recording. Episodes finished while recording are written (the schema of
        ``mclstudio record``); an episode still running when recording stops is not."""
        if not isinstance(self.feed, LiveFeed):
            self.notify("a replay has no models to record", severity="warning")
            return
        if self.player.controls.recording_to is None:
            problem = unwritable_folder(self.record_dir)
            if problem:
                self.notify(f"cannot record: {problem} (--record-dir)", severity="error", timeout=10)
                return
            path = new_path(self.record_dir, f"studio-{time.strftime('%Y%m%d-%H%M%S')}", ".h5")
            self.player.start_recording(path)
            self.record_note = ""
            self.notify(f"recording to {path} (each finished episode is written)")
        else:
            path = self.player.stop_recording()
            self.record_note = f"recorded {self.player.recorded_episodes} episodes to {path}"
            self.notify(self.record_note)
        self.update_status()
