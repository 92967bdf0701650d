"""`mclstudio open`: the live studio (a Textual app) on one or more checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from mclstudio.cli.options import AMOUNT, COUNT, NON_NEGATIVE, adapter_option, precision_option


@click.command(name="open")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--dataset", default="omniglot-mini", show_default=True, help="The picker's default dataset (domain).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--tasks", type=COUNT, default=20, show_default=True)
@click.option("--shots", default="5", show_default=True, help="Training shots per task, or one per task: 1,3,5,...")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True)
@click.option("--noise", type=AMOUNT, default=0.0, show_default=True, help="Gaussian input-noise std.")
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when there is one), cpu or cuda[:N].")
@click.option("--record-dir", default=".", show_default=True, help="Where r (record) and exports write.")
@click.option("--play", is_flag=True, help="Skip the picker and start playing the default episode.")
@precision_option
@adapter_option
def open_command(checkpoints: tuple[str, ...], dataset: str, split: str, tasks: int, shots: str, seed: int,
                 noise: float, device: str, record_dir: str, play: bool, precision: str, adapters: tuple[str, ...]) -> None:
    """Open the live studio (a Textual app) on one or more checkpoints."""
    from mclstudio.files import check_output

    # r (record) and exports write new files there: the folder must exist and be writable.
    if not Path(record_dir).is_dir():
        raise ValueError(f"--record-dir {record_dir} is not a folder")
    check_output(Path(record_dir) / ".mclstudio-write-check", replace=True, what="recording")

    from mclstudio.tui.cli import open_studio

    open_studio(checkpoints, dataset=dataset, split=split, tasks=tasks, shots=shots, seed=seed, noise=noise,
                device=device, record_dir=record_dir, play=play, precision=precision, adapters=adapters)

