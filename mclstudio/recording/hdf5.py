"""Session recordings in HDF5: writing them crash-safely and reading them back. Schema: docs/recording.md.

Crash safety. HDF5 updates its metadata (B-trees, heaps, the superblock) in place, so a process killed
mid-write can leave a file that no longer opens, whatever was flushed before; SWMR mode would protect
flushed data but cannot create new groups, and every episode is a new group. So the file at ``path`` is
never written in place: each episode is appended to a copy (``.<name>.tmp-<pid>``), the copy is closed
and fsync'ed, then atomically renamed over ``path``. A kill -9 at any moment leaves ``path`` as the last
complete file (at worst a stray temporary next to it). Every episode group also carries
``complete = True``, set last, and readers skip episodes without it (a second line of defence, e.g. for
files assembled by other tools). The copy costs O(file size) per episode: milliseconds for files of a
few MB, far below the time to stream an episode.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import mclstudio
from mclstudio.errors import RecordingError
from mclstudio.files import atomic_target
from mclstudio.formatting import clip, error_line
from mclstudio.data.episodes import Episode, EpisodeSpec
from mclstudio.data.layout import same_task_tokens
from mclstudio.engine.stream import EngineConfig, EpisodeTrace

FORMAT = "mclstudio-recording"
SCHEMA_VERSION = 1


@dataclass
class LearnerIdentity:
    """What a recording says about one learner: its name in the file and the checkpoint it came from."""

    name: str
    checkpoint_path: str
    sha256: str
    config: dict[str, Any]
    parameters: int = 0
    adapter_path: str = ""  # the adapter file applied on top of the checkpoint, "" for none
    adapter_sha256: str = ""

    def attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "checkpoint_path": self.checkpoint_path,
            "checkpoint_sha256": self.sha256,
            "config_json": json.dumps(self.config, sort_keys=True),
            "model": str(self.config.get("model", "")),
            "parameters": self.parameters,
        }
        if self.adapter_path:  # only when there is one, so files without adapters are as before
            attrs.update(adapter_path=self.adapter_path, adapter_sha256=self.adapter_sha256)
        return attrs

    @staticmethod
    def from_attrs(name: str, attrs: Any) -> LearnerIdentity:
        return LearnerIdentity(
            name=name,
            checkpoint_path=str(attrs["checkpoint_path"]),
            sha256=str(attrs["checkpoint_sha256"]),
            config=json.loads(str(attrs["config_json"])),
            parameters=int(attrs.get("parameters", 0)),
            adapter_path=str(attrs.get("adapter_path", "")),
            adapter_sha256=str(attrs.get("adapter_sha256", "")),
        )


@dataclass
class RecordedEpisode:
    """One complete episode read back. T tasks, N = T * S stream examples, Q queries, R row queries."""

    index: int
    spec: EpisodeSpec
    class_ids: np.ndarray  # (T,)
    codes: np.ndarray  # (T,)
    train_sample_ids: np.ndarray  # (T, S_train)
    test_sample_ids: np.ndarray  # (T, S_test)
    stream_task: np.ndarray  # (N,)
    query_task: np.ndarray  # (Q,)
    query_y: np.ndarray  # (Q,)
    rows_query_index: np.ndarray  # (R,)
    same_class: np.ndarray  # (R, 2N) uint8
    traces: dict[str, EpisodeTrace] = field(default_factory=dict)


@dataclass
class Recording:
    path: Path
    schema_version: int
    created: str
    engine_config: EngineConfig
    learners: list[LearnerIdentity]
    episodes: list[RecordedEpisode]
    incomplete: int  # episode groups skipped because they lack complete=True


class RecordingWriter:
    """Creates ``path`` and appends complete episodes to it, crash-safely. With ``append`` and a recording
    already at ``path``, adds to it instead; it must have the same schema (learners, their checkpoints'
    and adapters' sha256, engine settings, episode shape), else RecordingError. The caller decides
    whether an existing file may be replaced (mclstudio.files.claim_output)."""

    def __init__(self, path: str | Path, learners: list[LearnerIdentity], engine_config: EngineConfig,
                 append: bool = False, spec: EpisodeSpec | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.learners = learners
        self.engine_config = engine_config
        self.episodes = 0
        if append and self.path.exists():
            self.episodes = _appendable(self.path, learners, engine_config, spec)
            return
        with atomic_target(self.path, fsync=True) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["mclstudio_version"] = mclstudio.__version__
            f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs["eval_every"] = engine_config.eval_every
            f.attrs["rows_every"] = engine_config.rows_every
            f.attrs["precision"] = engine_config.precision  # added within schema 1: absent means fp32
            f.attrs["learners"] = json.dumps([ident.name for ident in learners])
            f.attrs["episodes_complete"] = 0
            group = f.create_group("learners")
            for ident in learners:
                group.create_group(ident.name).attrs.update(ident.attrs())
            f.create_group("episodes")

    def write_episode(self, episode: Episode, traces: dict[str, EpisodeTrace]) -> None:
        """Append one finished episode (batch of one) and the traces of every learner on it."""
        with atomic_target(self.path, fsync=True) as tmp:
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "a") as f:
                _write_episode(f["episodes"], self.episodes, episode, traces, self.learners, self.engine_config)
                f.attrs["episodes_complete"] = int(f.attrs.get("episodes_complete", 0)) + 1
        self.episodes += 1


def _appendable(path: Path, learners: list[LearnerIdentity], config: EngineConfig, spec: EpisodeSpec | None) -> int:
    """The index the next episode appended to ``path`` gets; RecordingError naming the first difference
    if the recording there has another schema than the one about to be written."""
    existing = read_recording(path)  # one line for a file that is not a readable recording
    where = f"cannot append to {path}"
    names = [ident.name for ident in existing.learners]
    if names != [ident.name for ident in learners]:
        raise RecordingError(f"{where}: it holds the learners {', '.join(names)}, not "
                             f"{', '.join(ident.name for ident in learners)}")
    for old, new in zip(existing.learners, learners):
        for label, a, b in (("checkpoint sha256", old.sha256, new.sha256),
                            ("adapter sha256", old.adapter_sha256, new.adapter_sha256),
                            ("learner config", old.config, new.config)):
            if a != b:
                raise RecordingError(f"{where}: {new.name} has another {label} than the recorded one")
    for label in ("precision", "eval_every", "rows_every"):
        if getattr(existing.engine_config, label) != getattr(config, label):
            raise RecordingError(f"{where}: it was recorded with {label} {getattr(existing.engine_config, label)}, "
                                 f"not {getattr(config, label)}")
    if existing.episodes and spec is not None:
        recorded = existing.episodes[0].spec
        for label in ("dataset", "split", "tasks", "train_shots", "test_shots", "noise_std"):
            if getattr(recorded, label) != getattr(spec, label):
                raise RecordingError(f"{where}: its episodes have {label} {getattr(recorded, label)}, "
                                     f"not {getattr(spec, label)}")
    if existing.episodes and tuple(config.rows_queries) != existing.engine_config.rows_queries:
        raise RecordingError(f"{where}: its association maps are of other queries")
    with h5py.File(path, "r") as f:
        return len(f["episodes"])


def _write_episode(
    parent: h5py.Group,
    index: int,
    episode: Episode,
    traces: dict[str, EpisodeTrace],
    learners: list[LearnerIdentity],
    config: EngineConfig,
) -> None:
    g = parent.create_group(f"{index:06d}")
    g.attrs["index"] = index
    spec = episode.specs[0]
    for key, value in spec.to_dict().items():
        # HDF5 has no None: num_codes None and shots None (even shots) are stored as -1; uneven shots
        # as an int64 array, one per task.
        g.attrs[key] = -1 if value is None else (np.asarray(value, dtype=np.int64) if key == "shots" else value)
    small = {
        "class_ids": episode.class_ids[0],
        "codes": episode.codes[0],
        "train_sample_ids": episode.train_sample_ids[0],
        "test_sample_ids": episode.test_sample_ids[0],
        "stream_task": episode.stream_task,
        "query_task": episode.query_task,
        "query_y": episode.query_y[0],
    }
    for key, tensor in small.items():
        g.create_dataset(key, data=tensor.cpu().numpy().astype(np.int64))
    rows_index = np.asarray(config.rows_queries, dtype=np.int64)
    g.create_dataset("rows_query_index", data=rows_index)
    same_class = same_task_tokens(episode.stream_task.cpu(), episode.query_task.cpu()[rows_index.tolist()])
    g.create_dataset("same_class", data=same_class.numpy().astype(np.uint8), compression="gzip")
    packed = dict(compression="gzip", shuffle=True)
    for ident in learners:
        tr = traces[ident.name]
        lg = g.create_group(ident.name)
        lg.attrs.update(ident.attrs())
        lg.create_dataset("accuracy", data=tr.accuracy.astype(np.float32))
        lg.create_dataset("state_bytes", data=tr.state_bytes)
        lg.create_dataset("latency_s", data=tr.latency_s.astype(np.float32))
        lg.create_dataset("layer_norms", data=tr.layer_norms.astype(np.float32))
        lg.create_dataset("eval_steps", data=np.asarray(tr.eval_steps, dtype=np.int64))
        lg.create_dataset("predictions", data=tr.predictions_array(), **packed)
        lg.create_dataset("accuracy_matrix", data=tr.accuracy_matrix.astype(np.float32))
        lg.create_dataset("forgetting", data=tr.forgetting.astype(np.float32))
        lg.create_dataset("rows_steps", data=np.asarray(tr.rows_steps, dtype=np.int64))
        n_layers = tr.layer_norms.shape[1]
        lg.create_dataset("rows", data=tr.rows_array(n_layers, len(rows_index)), **packed)
    g.attrs["complete"] = True  # last: readers skip a group without it


def read_recording(path: str | Path) -> Recording:
    """Read every complete episode of a recording. Raises RecordingError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise RecordingError(f"recording not found: {path}")
    if path.is_dir():
        raise RecordingError(f"recording path is a folder, not a file: {path}")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise RecordingError(f"{path} is not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            return _read(f, path)
    except RecordingError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        first = error_line(exc)
        raise RecordingError(f"{path} is truncated or damaged and cannot be read ({clip(first, 120)})") from None


def _read(f: h5py.File, path: Path) -> Recording:
    if f.attrs.get("format") != FORMAT:
        raise RecordingError(f"{path} is not an mclstudio recording (no '{FORMAT}' format tag)")
    version = f.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordingError(f"{path} has recording schema version {version}; this mclstudio reads {SCHEMA_VERSION}")
    names = json.loads(str(f.attrs["learners"]))
    learners = [LearnerIdentity.from_attrs(name, f["learners"][name].attrs) for name in names]
    episodes: list[RecordedEpisode] = []
    incomplete = 0
    rows_queries: tuple[int, ...] = ()
    for key in sorted(f["episodes"]):
        g = f["episodes"][key]
        if not g.attrs.get("complete", False):
            incomplete += 1
            continue
        stored = {k: _plain(g.attrs[k]) for k in EpisodeSpec.__dataclass_fields__ if k in g.attrs}
        spec = EpisodeSpec.from_dict({k: None if k in ("num_codes", "shots") and v == -1 else v for k, v in stored.items()})
        ep = RecordedEpisode(
            index=int(g.attrs["index"]),
            spec=spec,
            **{k: g[k][()] for k in ("class_ids", "codes", "train_sample_ids", "test_sample_ids", "stream_task",
                                     "query_task", "query_y", "rows_query_index", "same_class")},
        )
        rows_queries = tuple(int(q) for q in ep.rows_query_index)
        for name in names:
            lg = g[name]
            acc = lg["accuracy"][()].astype(np.float64)
            preds = lg["predictions"][()]
            rows = lg["rows"][()]
            ep.traces[name] = EpisodeTrace(
                learner=name,
                num_examples=len(acc),
                num_queries=len(ep.query_y),
                tasks=len(ep.codes),
                accuracy=acc,
                state_bytes=lg["state_bytes"][()],
                latency_s=lg["latency_s"][()].astype(np.float64),
                layer_norms=lg["layer_norms"][()],
                eval_steps=[int(s) for s in lg["eval_steps"][()]],
                predictions=list(preds),
                accuracy_matrix=lg["accuracy_matrix"][()].astype(np.float64),
                rows_steps=[int(s) for s in lg["rows_steps"][()]],
                rows=list(rows),
            )
        episodes.append(ep)
    config = EngineConfig(
        eval_every=str(f.attrs["eval_every"]), rows_queries=rows_queries, rows_every=str(f.attrs["rows_every"]),
        precision=str(_plain(f.attrs.get("precision", "fp32"))),
    )
    return Recording(
        path=path,
        schema_version=int(version),
        created=str(f.attrs.get("created", "")),
        engine_config=config,
        learners=learners,
        episodes=episodes,
        incomplete=incomplete,
    )


def _plain(value: Any) -> Any:
    """numpy scalars from HDF5 attributes -> Python values (EpisodeSpec wants int/float/str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # uneven shots
        return [int(v) for v in value]
    return value
