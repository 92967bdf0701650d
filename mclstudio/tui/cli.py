"""What `mclstudio open` and `mclstudio replay --tui` run. Everything that can fail on bad input (a
checkpoint or recording path, an episode request) is checked here, before the app starts, and raises
one of the CLI's one-line error types (CheckpointError, RecordingError, DataError, ValueError)."""

from __future__ import annotations

from pathlib import Path

from mclstudio.choices import STUDIO_WORKERS
from mclstudio.data.episodes import EpisodeSpec, parse_shots
from mclstudio.precision import check_precision
from mclstudio.recording.hdf5 import read_recording
from mclstudio.store.adapters import load_learners
from mclstudio.store.device import resolve_device
from mclstudio.tui.app import StudioApp
from mclstudio.recording.playback import LiveFeed, ReplayFeed


def build_open_app(checkpoints: tuple[str, ...] | list[str], dataset: str = "omniglot-mini", split: str = "test",
                   tasks: int = 20, shots: int | str = 5, seed: int = 0, noise: float = 0.0, device: str = "auto",
                   record_dir: str | Path = ".", play: bool = False, show_timing: bool = True,
                   precision: str = "fp32", adapters: tuple[str, ...] | list[str] = (),
                   fused_step: str = "auto", worker: str = "thread") -> StudioApp:
    """Load the checkpoints (on the GPU when there is one), apply any adapters and check the default
    episode; the app. fused_step: "auto" (each learner's step a CUDA graph on a GPU) or "off" (op by op;
    ``EngineConfig.fused_step``). worker: "process" (the models in a child process: `open`'s default,
    choices.STUDIO_DEFAULT_WORKER) or "thread"; the default here is "thread", which the tests, whose
    monkeypatches a child process would not see, and the screenshots use."""
    if worker not in STUDIO_WORKERS:
        raise ValueError(f"worker must be one of {', '.join(STUDIO_WORKERS)}, not {worker!r}")
    dev = resolve_device(device)
    check_precision(precision, dev)
    loaded = load_learners(checkpoints, adapters, device=dev)
    train_shots, per_task = parse_shots(str(shots), tasks)  # "5", or one per task: "1,3,5"
    spec = EpisodeSpec(dataset=dataset, split=split, tasks=tasks, train_shots=train_shots, shots=per_task, seed=seed,
                       noise_std=noise)
    LiveFeed(loaded, spec, precision, fused_step)  # raises on a spec the learners or the dataset cannot serve
    if not Path(record_dir).is_dir():
        raise ValueError(f"record folder not found: {record_dir}")
    return StudioApp(loaded, spec=spec, record_dir=record_dir, autostart=play, show_timing=show_timing,
                     precision=precision, fused_step=fused_step, worker=worker)


def build_replay_app(recording: str | Path, show_timing: bool = True) -> StudioApp:
    return StudioApp(replay=ReplayFeed(read_recording(recording)), show_timing=show_timing)


def run_studio(app: StudioApp) -> None:
    """Run the app; exit non-zero only when it really failed (Textual's return code: 1 after an
    unexpected error, which Textual has already printed; 2 when --play could not start)."""
    app.run()
    if app.return_code:
        raise SystemExit(app.return_code)


def open_studio(checkpoints: tuple[str, ...] | list[str], **kw: object) -> None:
    run_studio(build_open_app(checkpoints, **kw))  # type: ignore[arg-type]


def replay_studio(recording: str | Path) -> None:
    run_studio(build_replay_app(recording))
