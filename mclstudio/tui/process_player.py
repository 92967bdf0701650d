"""``open --worker process``: the model side of the studio (the live feed, the engine, recording writes) in
a child process, so that the models and the UI's drawing do not take turns on one interpreter lock.

Two one-way pipes join the app (the UI process) and its model process:

- commands, app -> child: ``("feed", generation, FeedRequest, Controls)`` starts streaming a new episode
  (the child loads the checkpoints from their paths, with their adapters, on the app's device with its
  precision and fused-step setting); ``("call", name, args)`` repeats a control the app's player just
  applied to its own copy (toggle_play, pause, step, faster, slower, start_recording, stop_recording), so
  both copies of the controls stay equal; ``("quit",)``.
- events, child -> app: ``("frame", generation, Frame, recording_to, recorded_episodes)``,
  ``("failed", generation, error)`` (the stream stopped), ``("recording_failed", path, error)``. A reader
  thread in the app turns them into the messages the thread worker posts (messages.py), after mirroring
  what the child changed in its controls (playing stops on a failure; a failed recording stops).

The child loop is the thread worker's own (``Player.run``). The child is started with 'spawn' (CUDA
cannot be used in a forked child), ignores Ctrl-C (the app's key), and ends when the app closes it, and
on its own when the app's end of the command pipe closes (the app died): no orphan processes.
A replay has no models: it streams in a thread as before.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from textual.message import Message

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.recording.playback import LiveFeed, ReplayFeed
from mclstudio.store.adapters import load_learners
from mclstudio.store.checkpoint import Checkpoint, CheckpointError
from mclstudio.store.device import learner_device
from mclstudio.tui.exports import one_line
from mclstudio.tui.messages import FeedFailed, FrameReady, RecordingFailed
from mclstudio.tui.player import WORKER_THREADS, Player

# The controls the app repeats in the child (Player methods): nothing else can be called there.
MIRRORED = ("toggle_play", "pause", "step", "faster", "slower", "start_recording", "stop_recording")
CLOSE_TIMEOUT_S = 5.0  # for the child to finish its step and exit before it is terminated


@dataclass(frozen=True)
class FeedRequest:
    """What the child needs to build the app's LiveFeed again: the checkpoints' paths (each with the
    sha256 the app loaded, so a file changed since is refused), each one's adapter path (None: none), the
    device and the engine settings."""

    paths: tuple[str, ...]
    sha256: tuple[str, ...]
    adapters: tuple[str | None, ...]
    adapter_sha256: tuple[str | None, ...]
    device: str
    spec: EpisodeSpec
    precision: str
    fused_step: str

    @classmethod
    def of(cls, feed: LiveFeed) -> FeedRequest:
        ckpts = feed.checkpoints
        return cls(tuple(str(c.path) for c in ckpts), tuple(c.sha256 for c in ckpts),
                   tuple(None if c.adapter_path is None else str(c.adapter_path) for c in ckpts),
                   tuple(c.adapter_sha256 for c in ckpts), str(learner_device(ckpts[0].learner)), feed.spec,
                   feed.config.precision, feed.config.fused_step)

    def load(self) -> list[Checkpoint]:
        """The checkpoints with their adapters, as the app loaded them (CheckpointError if a file changed)."""
        checkpoints = [load_learners([path], [] if adapter is None else [adapter], device=self.device)[0]
                       for path, adapter in zip(self.paths, self.adapters)]  # each with its own adapter
        for c, sha, adapter_sha in zip(checkpoints, self.sha256, self.adapter_sha256):
            if c.sha256 != sha or c.adapter_sha256 != adapter_sha:
                raise CheckpointError(f"{c.path} changed on disk since the studio loaded it; open it again")
        return checkpoints


class ProcessPlayer(Player):
    """A Player whose loop runs in a child process (module docstring). The controls are changed here, as
    the live screen expects, and repeated in the child. ``target``: the child's entry point (tests give
    one that plants a failure); ``process``: the child while it runs."""

    def __init__(self, worker_threads: int = WORKER_THREADS, target: Callable[..., None] | None = None) -> None:
        super().__init__(worker_threads)
        self.target = target or child_main
        self.process: multiprocessing.process.BaseProcess | None = None
        self.commands: Connection | None = None
        self.post: Callable[[Message], object] | None = None
        self.send_lock = threading.Lock()  # the UI thread and the feed's worker thread both send
        self.reader: threading.Thread | None = None
        self.closing = False
        # Start multiprocessing's resource tracker now, before the app runs: it passes sys.stderr's file
        # descriptor on, and Textual's capture of stderr while it runs has none ("bad value(s) in fds_to_keep").
        resource_tracker.ensure_running()

    # ---- the controls: changed here, then the same call in the child ------------------------------
    def _mirror(self, name: str, *args: Any) -> Any:
        with self.send_lock:  # a change and its command in one piece: a feed's snapshot falls before or after
            result = getattr(super(), name)(*args)
            self._send(("call", name, args))
        return result

    def toggle_play(self) -> None:
        self._mirror("toggle_play")

    def pause(self) -> None:
        self._mirror("pause")

    def step(self) -> None:
        self._mirror("step")

    def faster(self) -> None:
        self._mirror("faster")

    def slower(self) -> None:
        self._mirror("slower")

    def start_recording(self, path: Path) -> None:
        self._mirror("start_recording", path)

    def stop_recording(self) -> Path | None:
        return self._mirror("stop_recording")

    def _send(self, command: tuple) -> None:
        """Send to the child, if there is one (the next feed's snapshot carries the controls anyway)."""
        if self.commands is not None:
            try:
                self.commands.send(command)
            except OSError:  # the child is gone: the reader reports it
                pass

    # ---- the feed ---------------------------------------------------------------------------------
    def stream(self, feed: LiveFeed | ReplayFeed, generation: int, post: Callable[[Message], object]) -> None:
        """Stream a live feed in the model process (started if it is not running) and return; its frames
        arrive through the reader thread. A replay streams here, in the thread worker."""
        if not isinstance(feed, LiveFeed):
            return super().stream(feed, generation, post)
        self.post = post
        try:
            request = FeedRequest.of(feed)
            with self.send_lock:
                self._start_child()
                self._send(("feed", generation, request, replace(self.controls)))
        except Exception as exc:  # noqa: BLE001 - shown in the app, never a crash
            self.controls.playing = False
            post(FeedFailed(f"the model process could not start: {one_line(exc)}"))

    def _start_child(self) -> None:
        if self.process is not None and self.process.is_alive():
            return
        self._reap()
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used after fork
        commands_out, commands_in = context.Pipe(duplex=False)  # (reader, writer)
        events_out, events_in = context.Pipe(duplex=False)
        process = context.Process(target=self.target, args=(commands_out, events_in, self.worker_threads),
                                  name="mclstudio-models", daemon=True)  # daemon: ended at the app's exit too
        process.start()
        commands_out.close()  # the child's ends: closed here, so that either side sees the other's end
        events_in.close()
        self.process, self.commands, self.closing = process, commands_in, False
        self.reader = threading.Thread(target=self._read, args=(events_out, process), name="mclstudio-events",
                                       daemon=True)
        self.reader.start()

    def _read(self, events: Connection, process: multiprocessing.process.BaseProcess) -> None:
        """The reader thread: the child's events, as the thread worker's messages, until the child ends.
        An event that cannot be read or handled ends the child: the app says so rather than wait on it."""
        problem = ""
        try:
            while True:
                try:
                    event = events.recv()
                except (EOFError, OSError):
                    break
                self._handle(event)
        except Exception as exc:  # noqa: BLE001 - shown in the app, never a silent reader
            problem = f": {one_line(exc)}"
            process.terminate()
        finally:
            events.close()
        if not self.closing and self.process is process:  # it died under a running app: say so
            process.join(1.0)
            self.controls.playing = False
            self._post(FeedFailed(f"the model process stopped (exit code {process.exitcode}){problem}; "
                                  "open an episode to start it again"))

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "frame":
            _, generation, frame, recording_to, recorded = event
            if recording_to is not None and recording_to == self.controls.recording_to:
                self.recorded_episodes = recorded
            if generation == self.generation:
                self._post(FrameReady(frame))
        elif kind == "failed":
            _, generation, error = event
            if generation == self.generation:
                self.controls.playing = False  # before the message: the status line must not say "playing"
                self._post(FeedFailed(error))
        elif kind == "recording_failed":
            _, path, error = event
            if self.controls.recording_to == path:
                self.controls.recording_to = None
            self._post(RecordingFailed(path, error))

    def _post(self, message: Message) -> None:
        if self.post is not None:
            self.post(message)

    # ---- the end ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Ask the child to stop (it finishes the step, and the episode write, it is in), wait for it, end
        it if it does not stop, and reap it."""
        self.closing = True
        with self.send_lock:
            self._send(("quit",))
            if self.commands is not None:
                self.commands.close()
                self.commands = None
        self._reap()

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.join(CLOSE_TIMEOUT_S)
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        if self.reader is not None and self.reader is not threading.current_thread():
            self.reader.join(2.0)  # the child's end of the events pipe is closed: it stops
        self.reader = None


def make_player(worker: str) -> Player:
    """The player of ``open --worker``: "thread" (the loop in a thread of the app) or "process"."""
    return ProcessPlayer() if worker == "process" else Player()


# ---- the child --------------------------------------------------------------------------------------
def child_main(commands: Connection, events: Connection, worker_threads: int) -> None:
    """The model process: apply the app's commands (a reader thread) and stream each requested feed with
    the thread worker's loop, sending its messages to the app as events."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the app, which quits and closes us
    _silence()
    player = Player(worker_threads)
    requests: queue.Queue[tuple[int, FeedRequest] | None] = queue.Queue()
    threading.Thread(target=_apply_commands, args=(commands, player, requests), daemon=True).start()
    loaded: tuple[FeedRequest, list[Checkpoint]] | None = None
    while (item := requests.get()) is not None:
        generation, request = item
        if generation != player.generation:  # a newer feed was asked for meanwhile
            continue
        post = _event_sender(events, player, generation)
        try:
            same = loaded is not None and (loaded[0].paths, loaded[0].adapters, loaded[0].device) == (
                request.paths, request.adapters, request.device)
            checkpoints = loaded[1] if same and loaded is not None else request.load()
            loaded = (request, checkpoints)
            feed = LiveFeed(checkpoints, request.spec, request.precision, request.fused_step)
        except Exception as exc:  # noqa: BLE001 - reported to the app, one line
            player.controls.playing = False
            post(FeedFailed(one_line(exc)))
            continue
        player.run(feed, generation, post, lambda: player.generation != generation)


def _apply_commands(commands: Connection, player: Player, requests: queue.Queue) -> None:
    """The child's reader thread. On "quit", or when the app is gone (the end of the pipe), the loop stops
    after its step (an episode being written is finished) and the process ends; a child that the app
    cannot close any more is ended by a watchdog."""
    while True:
        try:
            command = commands.recv()
        except (EOFError, OSError):
            command = ("quit",)
            watchdog = threading.Timer(CLOSE_TIMEOUT_S, os._exit, args=(0,))
            watchdog.daemon = True
            watchdog.start()
        if command[0] == "feed":
            _, generation, request, controls = command
            player.generation = generation  # the running loop stops at its next check
            player.controls = controls
            player.recorded_episodes = 0
            requests.put((generation, request))
        elif command[0] == "call" and command[1] in MIRRORED:
            getattr(player, command[1])(*command[2])
        elif command[0] == "quit":
            player.generation = -1
            requests.put(None)
            player.wake.set()
            return
        player.wake.set()


def _event_sender(events: Connection, player: Player, generation: int) -> Callable[[Message], None]:
    """The loop's ``post`` in the child: its messages to the app as events (plain tuples)."""

    def post(message: Message) -> None:
        if isinstance(message, FrameReady):
            c = player.controls
            events.send(("frame", generation, message.frame, c.recording_to, player.recorded_episodes))
        elif isinstance(message, FeedFailed):
            events.send(("failed", generation, message.error))
        elif isinstance(message, RecordingFailed):
            events.send(("recording_failed", message.path, message.error))

    return post


def _silence() -> None:
    """The child shares the app's terminal: anything it printed (a library's warning) would tear the
    screen. Its errors reach the app as events instead."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
