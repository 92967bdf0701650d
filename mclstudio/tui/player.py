"""The player: the stream's controls (play, pause, step, speed, recording) and the loop the worker
thread runs.

Threading. The worker thread does all model work (``feed.frames()``) and hands each frame to the UI with
a thread-safe ``post`` (the live screen's ``post_message``). The UI thread only changes the controls,
plain attributes the worker reads, and wakes the worker through a threading.Event; the step counter,
changed on both sides, is guarded by a lock. ``open --worker process`` runs the same loop (``run``) in a
child process instead (process_player.py), so that the models and the UI do not share one interpreter
lock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from textual.message import Message
from textual.worker import get_current_worker

from mclstudio.recording.hdf5 import RecordingWriter
from mclstudio.recording.playback import Frame, LiveFeed, ReplayFeed
from mclstudio.tui.exports import one_line
from mclstudio.tui.messages import FeedFailed, FrameReady, RecordingFailed

# Steps per second at each speed level; None = as fast as the models go.
SPEEDS: list[float | None] = [0.5, 1, 2, 5, 10, 20, None]
# torch threads of the model worker: the cores less one, which the UI thread needs.
WORKER_THREADS = max(1, (os.cpu_count() or 1) - 1)


@dataclass
class Controls:
    """What the UI asks of the worker. Plain attributes set by the UI thread and read by the worker;
    the Event wakes the worker when it sleeps paused."""

    playing: bool = False
    steps: int = 0  # single steps requested while paused
    speed: int = 4  # an index into SPEEDS
    recording_to: Path | None = None


class Player:
    """The controls of one studio and the worker's streaming/recording loop (``stream``)."""

    def __init__(self, worker_threads: int = WORKER_THREADS) -> None:
        self.controls = Controls()
        self.worker_threads = worker_threads
        self.wake = threading.Event()
        self.step_lock = threading.Lock()
        self.recorded_episodes = 0  # episodes written since the recording started
        self.generation = 0  # bumped per new feed, so a stale worker's frames are dropped

    # ---- the UI side ------------------------------------------------------------------------------
    @property
    def speed(self) -> float | None:
        """Steps per second; None: as fast as the models go."""
        return SPEEDS[self.controls.speed]

    def new_feed(self) -> int:
        """A new feed replaces the current one: recording stops and the old worker's frames are dropped
        from now on. The new feed's generation (``stream`` takes it)."""
        self.controls.recording_to = None
        self.wake.set()
        self.generation += 1
        return self.generation

    def toggle_play(self) -> None:
        self.controls.playing = not self.controls.playing
        with self.step_lock:  # pending single steps do not outlive a play
            self.controls.steps = 0
        self.wake.set()

    def pause(self) -> None:
        self.controls.playing = False

    def step(self) -> None:
        self.controls.playing = False
        with self.step_lock:  # the worker decrements it: a read-modify-write on both sides
            self.controls.steps += 1
        self.wake.set()

    def faster(self) -> None:
        self.controls.speed = min(self.controls.speed + 1, len(SPEEDS) - 1)
        self.wake.set()

    def slower(self) -> None:
        self.controls.speed = max(self.controls.speed - 1, 0)

    def start_recording(self, path: Path) -> None:
        """Record each episode that finishes from now on to ``path`` (the schema of ``mclstudio record``)."""
        self.controls.recording_to = path
        self.recorded_episodes = 0

    def stop_recording(self) -> Path | None:
        """Stop recording (an episode still running is not written); the path that was recorded to."""
        path, self.controls.recording_to = self.controls.recording_to, None
        return path

    # ---- the worker (model side) ------------------------------------------------------------------
    def stream(self, feed: LiveFeed | ReplayFeed, generation: int, post: Callable[[Message], object]) -> None:
        """Pull frames at the requested pace and ``post`` them; write finished episodes when recording.
        Runs in a Textual thread worker, until it is cancelled or the feed ends or fails."""
        worker = get_current_worker()
        self.run(feed, generation, post, lambda: worker.is_cancelled)

    def close(self) -> None:
        """Stop the model work for good (the app quits): nothing to do for a thread, whose loop stops
        when its worker is cancelled."""

    def run(self, feed: LiveFeed | ReplayFeed, generation: int, post: Callable[[Message], object],
            cancelled: Callable[[], bool]) -> None:
        """The streaming/recording loop of ``stream``, until ``cancelled()`` or the feed ends or fails; the
        model process of ``open --worker process`` runs it too."""
        # Leave a core to the UI thread: torch's thread count is per thread (OpenMP), so this limits only
        # the model work. On 2 cores, a second torch thread fought the UI for its core and was slower.
        torch.set_num_threads(self.worker_threads)
        c = self.controls
        writer: RecordingWriter | None = None
        try:
            frames = feed.frames()
            while not cancelled():
                if not c.playing and c.steps <= 0:
                    self.wake.wait(0.05)
                    self.wake.clear()
                    continue
                t0 = time.perf_counter()
                frame = next(frames, None)
                if frame is None:  # a replay ran out
                    c.playing = False
                    post(FeedFailed("end of the recording"))
                    return
                if not c.playing:
                    with self.step_lock:
                        c.steps = max(c.steps - 1, 0)
                if isinstance(feed, LiveFeed):
                    writer = self._record(feed, frame, writer, post)
                if generation == self.generation:  # a newer feed replaced this one: drop the frame
                    post(FrameReady(frame))
                rate = self.speed
                if c.playing and rate is not None:  # pace the stream, waking early on a key
                    left = 1 / rate - (time.perf_counter() - t0)
                    if left > 0:
                        self.wake.wait(left)
                        self.wake.clear()
        except Exception as exc:  # noqa: BLE001 - shown in the app, never a crash
            c.playing = False  # the stream stopped: the status line must not say "playing"
            post(FeedFailed(f"{type(exc).__name__}: {str(exc).strip()[:160]}"))

    def _record(self, feed: LiveFeed, frame: Frame, writer: RecordingWriter | None,
                post: Callable[[Message], object]) -> RecordingWriter | None:
        """Open a writer when recording starts; append each episode that finishes while it records."""
        path = self.controls.recording_to
        feed.recording = path is not None  # while recording, every learner's rows as the stream goes
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
            post(RecordingFailed(path, one_line(exc)))
            return None
        return writer
