"""The studio App: it keeps the feed's lifecycle (the checkpoints, the episode, the worker that streams
it) and the global actions (help, open, export, quit). The rest lives where it is used: the player
(player.py) holds the controls and the worker's streaming/recording loop, the live screen
(screens/live.py) receives the frames, redraws and runs the live keys, the picker asks for an episode
with a message (messages.py), the palette (palette.py) lists the commands the app offers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from textual.app import App
from textual.binding import Binding

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.recording.playback import Frame, LiveFeed, ReplayFeed
from mclstudio.store.adapters import load_learners
from mclstudio.store.checkpoint import Checkpoint
from mclstudio.store.device import learner_device
from mclstudio.tui.exports import episode_json, one_line, unwritable_folder, write_export
from mclstudio.tui.messages import EpisodeRequested
from mclstudio.tui.palette import StudioCommands
from mclstudio.tui.player import Controls
from mclstudio.tui.process_player import make_player
from mclstudio.tui.screens import HelpScreen, LiveScreen, PickerScreen


# Python's thread switch interval while the models run on a GPU. The worker that steps them and the UI
# share the interpreter lock; at the default 5 ms the worker waits for it between the graphs' launches.
# One H200, five learners (benchmarks/tui_fps.py): 41.9 model steps/s at 5 ms, 56.5 at 1 ms. On this
# 2-core CPU 1 ms was slightly slower (20.0 against 21.2 steps/s), so the CPU keeps Python's default.
GPU_SWITCH_INTERVAL_S = 0.001


def switch_interval_for(device: str) -> float | None:
    """The thread switch interval the studio sets for learners on ``device`` (None: leave Python's)."""
    return GPU_SWITCH_INTERVAL_S if device.startswith("cuda") else None


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
        fused_step: str = "auto",
        worker: str = "thread",
    ) -> None:
        super().__init__()
        self.checkpoints = checkpoints or []
        self.precision = replay.recording.engine_config.precision if replay else precision
        self.fused_step = fused_step  # the engine's (EngineConfig.fused_step) for every live feed
        self.spec = spec or EpisodeSpec()
        self.record_dir = Path(record_dir)
        self.autostart = autostart
        self.feed: LiveFeed | ReplayFeed | None = replay
        self.learner_names: list[str] = list(replay.names) if replay else []
        self.player = make_player(worker)  # open --worker: the models in a thread or a child process
        self.live = LiveScreen(self.player, self.record_dir, show_timing)
        self._switch_interval_before: float | None = None

    # ---- the feed's lifecycle ---------------------------------------------------------------------
    def on_mount(self) -> None:
        interval = switch_interval_for(str(learner_device(self.checkpoints[0].learner))) if self.checkpoints else None
        if interval is not None:
            self._switch_interval_before = sys.getswitchinterval()
            sys.setswitchinterval(interval)
        self.set_sub_title("replay" if self.feed is not None else ", ".join(c.name for c in self.checkpoints))
        self.install_screen(self.live, "live")
        if self.feed is not None:  # replay: no picker, straight to the live view
            self._start_feed(self.feed)
        elif self.autostart:  # --play: no picker, playing from the first step
            error = self.start_episode(self.spec)
            if error:
                self.exit(return_code=2, message=f"error: {error}")
            else:
                self.player.toggle_play()
        else:
            self.push_screen(self._picker())

    def on_unmount(self) -> None:
        self.player.close()  # a model process is stopped and reaped with the app
        if self._switch_interval_before is not None:  # the process goes on after the app (tests, benchmarks)
            sys.setswitchinterval(self._switch_interval_before)

    def set_sub_title(self, text: str) -> None:
        """The header's subtitle; a precision other than the default fp32 is added to it."""
        self.sub_title = text if self.precision == "fp32" else f"{text} · {self.precision}"

    def checkpoint_paths(self) -> list[str]:
        return [str(c.path) for c in self.checkpoints]

    def adapter_paths(self) -> list[str]:
        return [str(c.adapter_path) for c in self.checkpoints if c.adapter_path is not None]

    def _picker(self) -> PickerScreen:
        return PickerScreen(self.spec, self.checkpoint_paths(), self.adapter_paths())

    def on_episode_requested(self, message: EpisodeRequested) -> None:
        error = self.start_episode(message.spec, message.paths, message.adapters)
        if error:
            message.picker.refuse(error)

    def start_episode(
        self, spec: EpisodeSpec, paths: list[str] | None = None, adapters: list[str] | None = None
    ) -> str | None:
        """(Re)load the checkpoints, with their adapters, if other paths were given; build a live feed for
        ``spec`` and stream it; None, or the reason it cannot start (one line)."""
        try:
            checkpoints = self.checkpoints
            paths = self.checkpoint_paths() if paths is None else paths
            adapters = self.adapter_paths() if adapters is None else adapters
            if paths != self.checkpoint_paths() or adapters != self.adapter_paths():
                if not paths:
                    return "give at least one checkpoint"
                device = learner_device(self.checkpoints[0].learner) if self.checkpoints else "cpu"
                checkpoints = load_learners(paths, adapters, device=device)
            feed = LiveFeed(checkpoints, spec, self.precision, self.fused_step)
        except Exception as exc:  # noqa: BLE001 - shown in the picker, one line
            return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.spec = spec
        self.checkpoints = checkpoints
        self.set_sub_title(", ".join(feed.names))
        self.learner_names = list(feed.names)
        self._start_feed(feed)
        return None

    def _start_feed(self, feed: LiveFeed | ReplayFeed) -> None:
        """Stop the current worker and stream ``feed`` in a new one, shown on the live screen."""
        self.workers.cancel_group(self, "feed")
        generation = self.player.new_feed()
        self.feed = feed
        self.live.reset(feed)
        if self.screen is not self.live:
            if isinstance(self.screen, PickerScreen):
                self.switch_screen("live")
            else:
                self.push_screen("live")
        self.run_worker(partial(self.player.stream, feed, generation, self.live.post_message), thread=True,
                        group="feed", exclusive=True, exit_on_error=False)

    def mode_line(self) -> str:
        """What is shown: the recording replayed, or the learners and the episode's data."""
        if isinstance(self.feed, ReplayFeed):
            return f"replaying {self.feed.recording.path}"
        return f"learners: {', '.join(self.learner_names) or '-'}; episode {self.spec.dataset} {self.spec.split}"

    # ---- global actions ---------------------------------------------------------------------------
    def palette_commands(self) -> list[tuple[str, Callable[[], object], str]]:
        """The command palette's entries now (palette.StudioCommands): (text, callback, help)."""
        commands: list[tuple[str, Callable[[], object], str]] = []
        if self.feed is None or self.feed.live:
            commands.append(("open: a new episode (episode picker)", self.action_open, "pick dataset, split, tasks..."))
        for name in self.learner_names:
            commands.append((f"switch: show {name}", partial(self.live.show_learner, name), "matrix and norms panels"))
        commands.append(("export: screenshot (SVG)", self.action_export_svg, "save the screen as SVG"))
        commands.append(("export: episode so far (JSON)", self.action_export_json, "accuracy, forgetting, norms"))
        return commands

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.feed is None or self.feed.live, self.mode_line()))

    def action_open(self) -> None:
        if isinstance(self.feed, ReplayFeed):
            self.notify("a replay has no models; open checkpoints with `mclstudio open`", severity="warning")
            return
        self.player.pause()
        self.push_screen(self._picker())

    def action_pop_screen_if_live(self) -> None:
        if self.feed is not None and len(self.screen_stack) > 1:
            self.pop_screen()

    def _export(self, stem: str, suffix: str, text: str) -> None:
        """Write an export into --record-dir under a new name; a failure is a notification."""
        problem = unwritable_folder(self.record_dir)
        if problem:
            self.notify(f"cannot export: {problem} (--record-dir)", severity="error", timeout=10)
            return
        try:
            path = write_export(self.record_dir, stem, suffix, text)
        except OSError as exc:
            self.notify(f"cannot export: {one_line(exc)}", severity="error", timeout=10)
            return
        self.notify(f"saved {path}")

    def action_export_svg(self) -> None:
        self._export(f"studio-{time.strftime('%Y%m%d-%H%M%S')}", ".svg", self.export_screenshot())

    def action_export_json(self) -> None:
        frame = self.live.frame
        if frame is None:
            self.notify("nothing streamed yet", severity="warning")
            return
        self._export(f"studio-episode{frame.episode}-step{frame.step + 1}", ".json",
                     episode_json(frame, self.live.history, self.live.norms))

    # ---- read-outs for the tests and the benchmark (the owners: the player and the live screen) ----
    @property
    def controls(self) -> Controls:
        return self.player.controls

    @property
    def recorded_episodes(self) -> int:
        return self.player.recorded_episodes

    @property
    def frame(self) -> Frame | None:
        return self.live.frame

    @property
    def frames_received(self) -> int:
        return self.live.frames_received

    @property
    def selected(self) -> str:
        return self.live.selected

    @property
    def maps(self) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        return self.live.maps
