"""`mclstudio info`: a checkpoint's config and metadata as JSON."""

from __future__ import annotations

import click

from mclstudio.formatting import strict_json


@click.command(name="info")
@click.argument("checkpoint")
def info_command(checkpoint: str) -> None:
    """Show a checkpoint's learner config and metadata."""
    from mclstudio.store.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    click.echo(strict_json({"checkpoint": str(ckpt.path), "sha256": ckpt.sha256,
                            "parameters": ckpt.learner.num_parameters(),
                            "config": ckpt.learner.config.to_dict(), "metadata": ckpt.metadata}, indent=2, default=str))

