"""`mclstudio open`: the live studio (a Textual app) on one or more checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from mclstudio.choices import STUDIO_DEFAULT_WORKER, STUDIO_FUSED_MODES, STUDIO_WORKERS
from mclstudio.cli.options import adapter_option, device_and_precision_options, episode_options


@click.command(name="open")
@click.argument("checkpoints", nargs=-1, required=True)
@episode_options(dataset_help="The picker's default dataset (domain).", seed_help="The picker's default seed.",
                 test_shots=False)
@device_and_precision_options
@click.option("--record-dir", default=".", show_default=True, help="Where r (record) and exports write.")
@click.option("--play", is_flag=True, help="Skip the picker and start playing the default episode.")
@adapter_option
@click.option("--fused-step", type=click.Choice(STUDIO_FUSED_MODES), default="auto", show_default=True,
              help="auto: on a GPU each learner's step and queries run as one captured CUDA graph; off: op by op.")
@click.option("--worker", type=click.Choice(STUDIO_WORKERS), default=STUDIO_DEFAULT_WORKER, show_default=True,
              help="Where the models run: a child process (the UI and the models do not share one interpreter "
                   "lock), or a thread of the app.")
def open_command(checkpoints: tuple[str, ...], dataset: str, split: str, tasks: int, shots: str, seed: int,
                 noise: float, device: str, precision: str, record_dir: str, play: bool, adapters: tuple[str, ...],
                 fused_step: str, worker: str) -> None:
    """Open the live studio (a Textual app) on one or more checkpoints."""
    from mclstudio.files import check_output

    # r (record) and exports write new files there: the folder must exist and be writable.
    if not Path(record_dir).is_dir():
        raise ValueError(f"--record-dir {record_dir} is not a folder")
    check_output(Path(record_dir) / ".mclstudio-write-check", replace=True, what="recording")

    from mclstudio.tui.cli import open_studio

    open_studio(checkpoints, dataset=dataset, split=split, tasks=tasks, shots=shots, seed=seed, noise=noise,
                device=device, record_dir=record_dir, play=play, precision=precision, adapters=adapters,
                fused_step=fused_step, worker=worker)

