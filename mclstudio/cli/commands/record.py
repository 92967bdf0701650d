"""`mclstudio record`: stream episodes through checkpoints in lock-step and record every step to HDF5."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from mclstudio.choices import EVAL_MODES, ROWS_MODES
from mclstudio.cli.options import COUNT, adapter_option, episode_options, output_options, precision_option

BYTES_PER_LEARNER_STEP = 4096  # about what a recording takes per learner and stream example (run.h5: ~3.1 KB)


@click.command(name="record")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--episodes", type=COUNT, default=4, show_default=True, help="Episodes to record (seeds --seed, --seed+1, ...).")
@episode_options(seed_help="Seed of the first episode.")
@click.option("--eval-every", type=click.Choice(EVAL_MODES[:2]), default="step", show_default=True,
              help="Evaluate the queries of the tasks seen so far after every step or at task ends only.")
@click.option("--rows-every", type=click.Choice(ROWS_MODES), default="task", show_default=True,
              help="Association maps (first query of every task) at task ends or after every step.")
@output_options("The recording (HDF5) to write.", "run.h5", click.option(
    "--append", is_flag=True, help="Add the episodes to the recording at -o (same learners and settings); "
    "without --seed, the new episodes continue after the recorded seeds."))
@precision_option
@adapter_option
def record_command(checkpoints: tuple[str, ...], episodes: int, dataset: str, split: str, tasks: int, shots: str,
                   test_shots: int, seed: int, noise: float, eval_every: str, rows_every: str, out: str, force: bool,
                   append: bool, precision: str, adapters: tuple[str, ...]) -> None:
    """Stream episodes through one or more checkpoints in lock-step and record everything to HDF5."""
    from mclstudio.data.episodes import EpisodeSpec, parse_shots
    from mclstudio.files import claim_output
    from mclstudio.precision import check_precision

    if force and append:
        raise ValueError("--force (replace the recording) and --append (add to it) exclude each other")
    train_shots, per_task = parse_shots(shots, tasks)
    existing = Path(out).stat().st_size if append and Path(out).is_file() else 0
    stream_examples = sum(per_task) if per_task else tasks * train_shots
    estimate = existing + 2 * episodes * len(checkpoints) * stream_examples * BYTES_PER_LEARNER_STEP
    claim = claim_output(out, replace=force or append, inputs=[*checkpoints, *adapters], estimate_bytes=estimate,
                         what="recording", hint="pass --append to add episodes to it or --force to replace it")
    check_precision(precision, "cpu")  # record runs on the CPU
    with claim:
        seed_given = click.get_current_context().get_parameter_source("seed") is not ParameterSource.DEFAULT
        if append and Path(out).is_file() and not seed_given:
            seed = _next_seed(out, seed)
        _record(checkpoints, adapters, episodes, EpisodeSpec(
            dataset=dataset, split=split, tasks=tasks, train_shots=train_shots, shots=per_task, test_shots=test_shots,
            seed=seed, noise_std=noise), eval_every, rows_every, precision, out, append)


def _next_seed(recording: str, seed: int) -> int:
    """The seed after the highest recorded one, so that appended episodes are new ones."""
    from mclstudio.recording.hdf5 import read_recording

    recorded = [ep.spec.seed for ep in read_recording(recording).episodes]
    return max(recorded) + 1 if recorded else seed


def _record(checkpoints: tuple[str, ...], adapters: tuple[str, ...], episodes: int, spec: Any, eval_every: str,
            rows_every: str, precision: str, out: str, append: bool) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from mclstudio.data.episodes import EpisodeSpec
    from mclstudio.engine.stream import EngineConfig
    from mclstudio.recording.session import default_rows_queries, record_session
    from mclstudio.store.adapters import load_learners

    loaded = load_learners(checkpoints, adapters)
    vocab = min(c.learner.config.y_vocab for c in loaded)
    spec = EpisodeSpec.from_dict({**spec.to_dict(), "num_codes": vocab})
    spec.validate()
    config = EngineConfig(eval_every=eval_every, rows_queries=default_rows_queries(spec), rows_every=rows_every,
                          precision=precision)
    steps = spec.stream_length
    interactive = sys.stderr.isatty()
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), disable=not interactive,
    )
    bar = progress.add_task(f"record {', '.join(c.name for c in loaded)}", total=episodes * steps, stats="")

    def on_step(episode: int, snaps: list[Any]) -> None:
        accs = " ".join(f"{s.learner} {s.accuracy:.2f}" for s in snaps if s.accuracy is not None)
        progress.update(bar, completed=episode * steps + snaps[0].step + 1, stats=f"ep {episode + 1} {accs}")
        if not interactive and snaps[0].step == steps - 1:
            click.echo(f"episode {episode + 1}/{episodes}: {accs}", err=True)

    with progress:
        path = record_session(loaded, spec, episodes, out, config, on_step, append=append)
    added = " (appended)" if append else ""
    click.echo(f"recorded {episodes} episodes of {len(loaded)} learners at {precision} to {path}{added}")

