"""Click options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from mclstudio.precision import PRECISIONS

F = TypeVar("F", bound=Callable[..., Any])


def _precision_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # A ValueError, which the CLI prints as one `error:` line (click.Choice would print a usage block).
    # Whether the device can run it is checked where the device is known (mclstudio.precision).
    if value.lower() not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return value.lower()


def precision_option(f: F) -> F:
    """--precision fp32|bf16|fp16: mixed precision through torch.autocast (docs/precision.md)."""
    return click.option(
        "--precision", default="fp32", show_default=True, metavar="|".join(PRECISIONS), callback=_precision_name,
        help="fp32, or bf16/fp16 mixed precision (torch.autocast: weights and accumulating states stay fp32).",
    )(f)


adapter_option = click.option(
    "--adapter", "adapters", multiple=True, metavar="FILE",
    help="An adapter file (from `mclstudio adapt`) to apply on top of the checkpoint it was trained on "
         "(repeatable; each goes to the first matching checkpoint without one).",
)
