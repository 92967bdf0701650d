"""Model-process entry points that plant a failure, for tests/test_tui_process.py. A spawned child does not
see a test's monkeypatch: ProcessPlayer(target=...) runs one of these instead of child_main, which patch
the child's own LiveFeed and then run the real child_main."""

from __future__ import annotations

import os
from multiprocessing.connection import Connection

from mclstudio.recording.playback import LiveFeed
from mclstudio.tui.process_player import child_main

REAL_FRAMES = LiveFeed.frames


def _fail_at_third_frame(fail) -> None:  # noqa: ANN001
    def frames(self: LiveFeed):
        for n, frame in enumerate(REAL_FRAMES(self)):
            if n == 2:
                fail()
            yield frame

    LiveFeed.frames = frames  # type: ignore[method-assign]


def raising_child(commands: Connection, events: Connection, worker_threads: int) -> None:
    """The model work raises at the third step of every episode."""
    def fail() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    _fail_at_third_frame(fail)
    child_main(commands, events, worker_threads)


def dying_child(commands: Connection, events: Connection, worker_threads: int) -> None:
    """The model process dies (exit code 3) at the third step, as a crash in native code would."""
    _fail_at_third_frame(lambda: os._exit(3))
    child_main(commands, events, worker_threads)


def full_disk_child(commands: Connection, events: Connection, worker_threads: int) -> None:
    """Every episode write fails as on a full disk."""
    def full_disk(self: LiveFeed, writer: object) -> None:
        raise OSError(28, "No space left on device")

    LiveFeed.write_episode = full_disk  # type: ignore[method-assign]
    child_main(commands, events, worker_threads)


def garbling_child(commands: Connection, events: Connection, worker_threads: int) -> None:
    """The first event the app gets is not one it knows how to read."""
    events.send(("frame", "not a generation"))
    child_main(commands, events, worker_threads)
