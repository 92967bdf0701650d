"""Recording sessions and working with recordings: record, summarise, verify, re-run with another learner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mclstudio.data.episodes import Episode, EpisodeSpec
from mclstudio.data.sources import get_source
from mclstudio.engine.stream import EngineConfig, EpisodeTrace, Snapshot, run_episode
from mclstudio.learners.base import Learner
from mclstudio.metrics import mean_ci95, mean_forgetting, seen_task_accuracy
from mclstudio.recording.hdf5 import LearnerIdentity, RecordedEpisode, Recording, RecordingError, RecordingWriter
from mclstudio.store.adapters import load_learners
from mclstudio.store.checkpoint import Checkpoint, CheckpointError, file_sha256


def learner_names(checkpoints: list[Checkpoint]) -> list[str]:
    """A unique name per checkpoint: its file stem, with -2, -3... for repeats."""
    names: list[str] = []
    for ckpt in checkpoints:
        name, n = ckpt.name, 2
        while name in names:
            name, n = f"{ckpt.name}-{n}", n + 1
        names.append(name)
    return names


def identity(name: str, ckpt: Checkpoint) -> LearnerIdentity:
    return LearnerIdentity(name, str(ckpt.path), ckpt.sha256, ckpt.learner.config.to_dict(),
                           ckpt.learner.num_parameters(), str(ckpt.adapter_path or ""), ckpt.adapter_sha256 or "")


def default_rows_queries(spec: EpisodeSpec) -> tuple[int, ...]:
    """The first query of every task (queries are task-major): one association map per task."""
    return tuple(range(0, spec.tasks * spec.test_shots, spec.test_shots))


def record_session(
    checkpoints: list[Checkpoint],
    spec: EpisodeSpec,
    episodes: int,
    out: str | Path,
    engine_config: EngineConfig | None = None,
    on_step: Callable[[int, list[Snapshot]], None] | None = None,
    append: bool = False,
) -> Path:
    """Stream ``episodes`` episodes (seeds spec.seed, spec.seed + 1, ...) through every checkpoint in
    lock-step and record them to ``out``, one complete episode at a time. on_step(episode, snapshots)
    is called after every stream example (for progress). ``append``: add the episodes to the recording
    already at ``out`` (same schema) instead of creating it."""
    if not checkpoints:
        raise ValueError("record needs at least one checkpoint")
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, not {episodes}")
    vocab = min(c.learner.config.y_vocab for c in checkpoints)
    if spec.num_codes is None:
        spec = EpisodeSpec.from_dict({**spec.to_dict(), "num_codes": vocab})
    spec.validate()
    config = engine_config or EngineConfig(rows_queries=default_rows_queries(spec))
    source = get_source(spec.dataset)
    names = learner_names(checkpoints)
    writer = RecordingWriter(out, [identity(n, c) for n, c in zip(names, checkpoints)], config, append, spec)
    learners = list(zip(names, (c.learner for c in checkpoints)))
    for e in range(episodes):
        episode = source.episode(spec.with_seed(spec.seed + e))
        step = (lambda snaps, e=e: on_step(e, snaps)) if on_step else None
        traces = run_episode(learners, episode, config, step)
        writer.write_episode(episode, traces)
    return writer.path


# ---- rebuilding and re-running ---------------------------------------------------------------------
def rebuild_episode(rec: RecordedEpisode) -> Episode:
    """The recorded episode's inputs, rebuilt from its spec; checked against the recorded ids."""
    episode = get_source(rec.spec.dataset).episode(rec.spec)
    for key in ("class_ids", "codes", "train_sample_ids", "test_sample_ids"):
        if not np.array_equal(getattr(episode, key)[0].cpu().numpy(), getattr(rec, key)):
            raise RecordingError(
                f"episode {rec.index}: the rebuilt {key} differ from the recorded ones (has the dataset changed?)"
            )
    return episode


def rerun(recording: Recording, learners: list[tuple[str, Learner]]) -> list[dict[str, EpisodeTrace]]:
    """Stream every recorded episode through ``learners`` with the recording's engine settings."""
    return [run_episode(learners, rebuild_episode(ep), recording.engine_config) for ep in recording.episodes]


def rerun_with(recording: Recording, checkpoints: list[Checkpoint],
               taken: list[str]) -> list[tuple[str, list[EpisodeTrace], str]]:
    """``mclstudio replay --with``: stream the recorded episodes through each other checkpoint, with the
    recording's engine settings. A name already taken (a recorded learner's, or an earlier one's here)
    gets " (with)" appended until it is free. Returns (name, traces per episode, source) per checkpoint;
    source names the checkpoint file, and its adapter when one is applied."""
    names, out = list(taken), []
    for ckpt in checkpoints:
        name = ckpt.name
        while name in names:
            name = f"{name} (with)"
        names.append(name)
        traces = [t[name] for t in rerun(recording, [(name, ckpt.learner)])]
        source = ckpt.path.name if ckpt.adapter_path is None else f"{ckpt.path.name} + {ckpt.adapter_path.name}"
        out.append((name, traces, f"with {source}"))
    return out


def resolve_checkpoint(recorded: str, recording_path: Path, what: str = "checkpoint") -> Path:
    """A recorded checkpoint (or adapter) path as given, else relative to the recording's folder and its
    parent."""
    candidates = [Path(recorded)]
    if not Path(recorded).is_absolute():
        candidates += [recording_path.parent / recorded, recording_path.parent.parent / recorded]
    for c in candidates:
        if c.is_file():
            return c
    raise RecordingError(f"{what} {recorded} recorded in {recording_path.name} is missing; --verify needs it")


@dataclass
class VerifyReport:
    checked: int = 0  # predictions compared
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def verify(recording: Recording) -> VerifyReport:
    """Re-run the recorded episodes through the recorded checkpoints; compare checkpoint hashes,
    rebuilt inputs and every recorded prediction. Missing checkpoints raise RecordingError."""
    report = VerifyReport()
    learners: list[tuple[str, Learner]] = []
    for ident in recording.learners:
        files = [(resolve_checkpoint(ident.checkpoint_path, recording.path), ident.sha256, "checkpoint")]
        if ident.adapter_path:
            files.append((resolve_checkpoint(ident.adapter_path, recording.path, "adapter"), ident.adapter_sha256, "adapter"))
        for path, recorded_sha, what in files:
            sha = file_sha256(path)
            if sha != recorded_sha:
                report.mismatches.append(
                    f"{ident.name}: {what} {path} has sha256 {sha[:12]}..., recorded {recorded_sha[:12]}..."
                )
        try:
            [ckpt] = load_learners([str(files[0][0])], [str(f[0]) for f in files[1:]])
        except CheckpointError as exc:
            raise RecordingError(f"{ident.name}: {exc}") from None
        learners.append((ident.name, ckpt.learner))
    for rec, traces in zip(recording.episodes, rerun(recording, learners)):
        for name, trace in traces.items():
            old = rec.traces[name]
            new_pred, old_pred = trace.predictions_array(), np.stack(old.predictions) if old.predictions else None
            if old_pred is None or new_pred.shape != old_pred.shape or trace.eval_steps != old.eval_steps:
                report.mismatches.append(f"{name}: episode {rec.index}: evaluated steps differ from the recording")
                continue
            report.checked += int((old_pred >= 0).sum())
            diff = int((new_pred != old_pred).sum())
            if diff:
                first = int(np.argwhere(new_pred != old_pred)[0][0])
                report.mismatches.append(
                    f"{name}: episode {rec.index}: {diff} of {old_pred.size} predictions differ "
                    f"(first at step {trace.eval_steps[first]})"
                )
    return report


# ---- summaries ------------------------------------------------------------------------------------
def summarize(name: str, traces: list[EpisodeTrace], source: str = "") -> dict[str, Any]:
    """One learner over the episodes: final accuracy (mean, 95% CI), mean forgetting, final state bytes,
    median step latency, and the curve of accuracy on the tasks seen against tasks learned."""
    acc = [t.final_accuracy for t in traces]
    mean, ci = mean_ci95(acc)
    curves = np.stack([seen_task_accuracy(t.accuracy_matrix) for t in traces])
    return {
        "learner": name,
        "source": source,
        "episodes": len(traces),
        "accuracy": mean,
        "accuracy_ci95": ci,
        "forgetting": float(np.mean([mean_forgetting(t.accuracy_matrix) for t in traces])),
        "final_state_bytes": int(np.mean([t.state_bytes[-1] for t in traces])),
        "first_state_bytes": int(np.mean([t.state_bytes[0] for t in traces])),
        "step_latency_ms": float(np.median(np.concatenate([t.latency_s for t in traces])) * 1e3),
        "accuracy_by_tasks_learned": [None if np.isnan(v) else float(v) for v in np.nanmean(curves, axis=0)]
        if not np.isnan(curves).all() else [],
    }


def recording_summary(recording: Recording) -> list[dict[str, Any]]:
    if not recording.episodes:
        raise RecordingError(f"{recording.path} holds no complete episode")
    return [
        summarize(ident.name, [ep.traces[ident.name] for ep in recording.episodes], f"rec {Path(ident.checkpoint_path).name}")
        for ident in recording.learners
    ]


REPLAY_CSV_HEADER = ["learner", "episode", "tasks_learned", "accuracy", "episode_forgetting", "final_state_bytes",
                     "median_step_latency_ms"]


def replay_csv_rows(traces_by_learner: dict[str, list[EpisodeTrace]], episodes: list[int]) -> list[list[Any]]:
    """The rows of ``mclstudio replay --csv`` (columns REPLAY_CSV_HEADER): one per learner, episode and
    tasks learned: accuracy on the tasks seen (mean of the accuracy matrix row), with the episode's final
    forgetting, final state bytes and median step latency. traces_by_learner: learner -> one trace per
    episode, in the order of ``episodes`` (the recorded episode indices)."""
    rows: list[list[Any]] = []
    for name, traces in traces_by_learner.items():
        for index, tr in zip(episodes, traces):
            curve = seen_task_accuracy(tr.accuracy_matrix)
            fg = mean_forgetting(tr.accuracy_matrix)
            latency_ms = float(np.median(tr.latency_s)) * 1e3
            rows.extend([name, index, k + 1, f"{acc:.6f}", f"{fg:.6f}", int(tr.state_bytes[-1]), f"{latency_ms:.4f}"]
                        for k, acc in enumerate(curve))
    return rows
