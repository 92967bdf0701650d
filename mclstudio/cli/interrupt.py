"""Ctrl-C (or SIGTERM) in `train` and `adapt`: the message while the step finishes, and the command
that continues the run from the resumable file."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

COMMAND_LINE: list[str] = []  # the arguments this process was run with (set by cli.main.main)


def stopping_message() -> None:
    click.echo("\nstopping after this step to save a resumable file (Ctrl-C again to stop at once)", err=True)


def exit_interrupted(stop: Any, what: str) -> None:
    """Say where the resumable file is and how to continue; exit 130 (as for Ctrl-C)."""
    args, skip = [], False
    for arg in COMMAND_LINE:
        if skip:
            skip = False
        elif arg in ("-o", "--out"):
            skip = True
        elif not (arg.startswith("--out=") or arg in ("--force", "--resume")):
            args.append(arg)
    resume = shlex.join(["mclstudio", *args, "--resume", "-o", stop.path])
    click.echo(f"interrupted after step {stop.step}: saved a resumable {what} to {stop.path}; "
               f"continue with: {resume}", err=True)
    sys.exit(130)
