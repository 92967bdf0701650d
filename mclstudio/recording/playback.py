"""Playback: frames of a stream, from live learners (LiveFeed) or from a recording (ReplayFeed).

A replay is the inverse of the recorder's trace: ReplayFeed rebuilds, step by step, the Snapshots that
``EpisodeTrace`` stored. A feed is plain Python, no UI: the studio's worker thread pulls :class:`Frame`
objects from ``feed.frames()`` and posts them to the screen, and tests can drive a feed on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mclstudio.data.episodes import Episode, EpisodeSpec
from mclstudio.data.layout import task_ends, task_starts
from mclstudio.data.sources import get_source
from mclstudio.engine.stream import EngineConfig, EpisodeTrace, Snapshot, StreamEngine
from mclstudio.recording.hdf5 import RecordedEpisode, Recording, RecordingError, RecordingWriter
from mclstudio.recording.session import default_rows_queries, identity, learner_names, rebuild_episode
from mclstudio.store.checkpoint import Checkpoint


@dataclass
class Frame:
    """Everything the UI draws after one stream example: one Snapshot per learner plus the example.

    image: (H, W) float in [-1, 1] of the example just read, or None when it cannot be rebuilt.
    rows_query_task: (R,) task of each association-map query; task_starts: first step of each task.
    """

    episode: int
    step: int
    num_examples: int
    tasks: int
    task: int
    label: int
    snapshots: list[Snapshot]
    image: np.ndarray | None = None
    rows_query_task: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    task_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    episode_done: bool = False


def map_learners(names: list[str], models: dict[str, str]) -> list[str]:
    """The learners whose association rows the studio's map shows: Mamba's hidden attention next to the
    Transformer's attention when both are loaded, else the first two learners."""
    preferred = [n for n in names if models.get(n) in ("mamba", "transformer")]
    return preferred[:2] if len(preferred) >= 2 else names[:2]


def _image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) -> (H, W) grey: the mean over channels."""
    return x.mean(axis=0) if x.ndim == 3 else x


class LiveFeed:
    """Streams episodes (seeds spec.seed, spec.seed + 1, ...) through the loaded checkpoints in lock-step,
    with the same engine settings as ``mclstudio record``, so that a recording made here matches one
    made there. precision: "fp32", "bf16" or "fp16" (``mclstudio.precision``); fused_step: the engine's
    (``EngineConfig.fused_step``: "auto" captures each learner's step as a CUDA graph on a GPU).

    Association rows cost a parallel pass over the stream read so far, per learner, at every task end
    (Mamba's and Longhorn's hidden attention most): they are computed as the stream goes only for the
    learners the map shows (``map_learners``), and for every learner while ``recording`` is set; the
    rows a recorded episode lacks are computed when it is written, so that a recording holds what
    ``mclstudio record`` writes."""

    live = True

    def __init__(
        self, checkpoints: list[Checkpoint], spec: EpisodeSpec, precision: str = "fp32", fused_step: str = "auto"
    ) -> None:
        if not checkpoints:
            raise ValueError("open needs at least one checkpoint")
        for ckpt in checkpoints:
            if ckpt.learner.config.is_regression:
                raise ValueError(f"{ckpt.path} is a regression learner; the studio shows classification learners")
        vocab = min(c.learner.config.y_vocab for c in checkpoints)
        if spec.num_codes is None:
            spec = EpisodeSpec.from_dict({**spec.to_dict(), "num_codes": vocab})
        spec.validate()
        self.checkpoints = checkpoints
        self.spec = spec
        self.names = learner_names(checkpoints)
        self.models = {n: c.learner.config.model for n, c in zip(self.names, checkpoints)}  # name -> "mamba", ...
        self.config = EngineConfig(rows_queries=default_rows_queries(spec), precision=precision, fused_step=fused_step)
        self.config.validate(spec.tasks * spec.test_shots)
        self.source = get_source(spec.dataset)
        self.source.check(spec)  # a bad request fails here, in the picker, not in the worker
        self.episode_index = 0
        self.traces: dict[str, EpisodeTrace] = {}
        self.episode: Episode | None = None
        self.engine: StreamEngine | None = None
        self.shown_rows = set(map_learners(self.names, self.models))
        self.recording = False  # set by the studio's player while it records: every learner's rows

    def frames(self) -> Iterator[Frame]:
        """Endless: one episode after another, each with the next seed."""
        learners = list(zip(self.names, (c.learner for c in self.checkpoints)))
        while True:
            spec = self.spec.with_seed(self.spec.seed + self.episode_index)
            episode = self.source.episode(spec)
            engine = StreamEngine(learners, episode, self.config)
            self.episode, self.engine = episode, engine
            self.traces = {n: EpisodeTrace.empty(n, engine, l.config.n_layers) for n, l in learners}
            images = episode.stream_x[0].cpu().numpy()
            labels = episode.stream_y[0].cpu().numpy()
            stream_task = episode.stream_task.cpu().numpy()
            rows_task = episode.query_task.cpu().numpy()[list(self.config.rows_queries)]
            starts = task_starts(episode.stream_task).cpu().numpy()
            engine.rows_for = None if self.recording else self.shown_rows
            for snaps in engine:
                for s in snaps:
                    self.traces[s.learner].add(s)
                i = snaps[0].step
                yield Frame(self.episode_index, i, engine.num_examples, engine.tasks, int(stream_task[i]),
                            int(labels[i]), snaps, _image(images[i]), rows_task, starts,
                            episode_done=i == engine.num_examples - 1)
                engine.rows_for = None if self.recording else self.shown_rows  # (for the next step)
            self.episode_index += 1

    def start_recording(self, path: str | Path) -> RecordingWriter:
        """A writer with the schema of ``mclstudio record`` (the recording module's own writer)."""
        idents = [identity(n, c) for n, c in zip(self.names, self.checkpoints)]
        return RecordingWriter(path, idents, self.config)

    def write_episode(self, writer: RecordingWriter) -> None:
        """Append the episode just finished (every step of it is in self.traces), with every learner's
        association rows."""
        assert self.episode is not None and self.engine is not None
        engine = self.engine
        for k, (name, _) in enumerate(engine.learners):  # the rows the stream left out (rows_for)
            trace = self.traces[name]
            for i in range(engine.num_examples):
                if engine.rows_due(i) and i not in trace.rows_steps:
                    trace.add_rows(i, engine.rows(k, i + 1)[0])
        writer.write_episode(self.episode, self.traces)


class ReplayFeed:
    """Plays a recording's episodes back as frames, without any model: Snapshots rebuilt from the traces."""

    live = False

    def __init__(self, recording: Recording) -> None:
        if not recording.episodes:
            raise RecordingError(f"{recording.path} holds no complete episode")
        self.recording = recording
        self.names = [ident.name for ident in recording.learners]
        self.models = {ident.name: str(ident.config.get("model", "")) for ident in recording.learners}
        self.spec = recording.episodes[0].spec
        self.episode_index = 0

    def frames(self) -> Iterator[Frame]:
        for rec in self.recording.episodes:
            self.episode_index = rec.index
            yield from self._episode(rec)

    def _episode(self, rec: RecordedEpisode) -> Iterator[Frame]:
        images = labels = None
        try:  # the inputs are not recorded, only their ids: rebuild them when the dataset is at hand
            episode = rebuild_episode(rec)
            images = episode.stream_x[0].cpu().numpy()
            labels = episode.stream_y[0].cpu().numpy()
        except Exception:  # noqa: BLE001 - any failure just means no picture
            pass
        n = len(rec.stream_task)
        starts = task_starts(torch.as_tensor(rec.stream_task)).numpy()
        ends = task_ends(torch.as_tensor(rec.stream_task)).tolist()
        rows_task = rec.query_task[rec.rows_query_index]
        # the label code of each stream example: the code of its task
        codes = rec.codes[rec.stream_task] if labels is None else labels
        for i in range(n):
            snaps = [self._snapshot(name, rec, i, ends[i]) for name in self.names]
            yield Frame(rec.index, i, n, len(rec.codes), int(rec.stream_task[i]), int(codes[i]), snaps,
                        None if images is None else _image(images[i]), rows_task, starts, episode_done=i == n - 1)

    @staticmethod
    def _snapshot(name: str, rec: RecordedEpisode, i: int, task_end: bool) -> Snapshot:
        """Learner ``name``'s snapshot after stream example i (task_end: i is the last of its task)."""
        tr = rec.traces[name]
        task = int(rec.stream_task[i])
        # the accuracy matrix as it stood after step i: rows of the tasks finished so far
        done = task + 1 if task_end else task
        matrix = np.full_like(tr.accuracy_matrix, np.nan, dtype=np.float64)
        matrix[:done] = tr.accuracy_matrix[:done]
        snap = Snapshot(name, i, 2 * (i + 1), task, task_end, int(tr.state_bytes[i]), tr.layer_norms[i],
                        float(tr.latency_s[i]), accuracy_matrix=matrix)
        if not np.isnan(tr.accuracy[i]):
            snap.accuracy = float(tr.accuracy[i])
        if done:
            from mclstudio.metrics import forgetting

            snap.forgetting = forgetting(matrix[:done, :done])
        if i in tr.rows_steps:
            rows = tr.rows[tr.rows_steps.index(i)]
            snap.rows = rows[..., : 2 * (i + 1)].astype(np.float32)
            snap.same_class = rec.same_class[:, : 2 * (i + 1)].astype(np.float32)
        return snap
