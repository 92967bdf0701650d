"""The studio's messages. The worker thread posts the first three to the live screen (``post_message``
is thread-safe); the picker posts EpisodeRequested, which bubbles up to the app."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from textual.message import Message

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.recording.playback import Frame


class Refusable(Protocol):
    """What asked for an episode (the picker): it can be told why the episode cannot start."""

    def refuse(self, reason: str) -> None: ...


class FrameReady(Message):
    """A new frame: posted by the worker after every stream example."""

    def __init__(self, frame: Frame) -> None:
        super().__init__()
        self.frame = frame


class FeedFailed(Message):
    """The stream stopped: a replay ran out, or the model work raised (``error`` is one line)."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class RecordingFailed(Message):
    """Opening or writing the recording failed; the stream goes on."""

    def __init__(self, path: Path, error: str) -> None:
        super().__init__()
        self.path = path
        self.error = error


class EpisodeRequested(Message):
    """The picker asks for an episode: ``spec``, on the checkpoints at ``paths`` with ``adapters``. The
    app answers a refusal with ``picker.refuse(reason)``; on success it shows the live screen."""

    def __init__(self, picker: Refusable, spec: EpisodeSpec, paths: list[str], adapters: list[str]) -> None:
        super().__init__()
        self.picker = picker
        self.spec = spec
        self.paths = paths
        self.adapters = adapters
