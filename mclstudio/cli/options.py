"""Click options shared by several commands."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mclstudio.choices import PRECISIONS

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


class Number(click.ParamType):
    """An int (``integer``) or a finite float in a range; a refusal says the range in words
    ("must be at least 1, not 0"). click's FloatRange would let nan and inf through."""

    def __init__(self, integer: bool, minimum: float | None = None, above: bool = False,
                 below: float | None = None) -> None:
        self.integer, self.minimum, self.above, self.below = integer, minimum, above, below
        self.name = "integer" if integer else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            number = int(value) if self.integer else float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not {'a whole number' if self.integer else 'a number'}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.minimum is not None and (number <= self.minimum if self.above else number < self.minimum):
            bound = "positive" if self.above and self.minimum == 0 else (
                f"above {self.minimum:g}" if self.above else f"at least {self.minimum:g}")
            self.fail(f"must be {bound}, not {value}", param, ctx)
        if self.below is not None and number >= self.below:
            self.fail(f"must be below {self.below:g}, not {value}", param, ctx)
        return number


COUNT = Number(integer=True, minimum=1)  # steps, episodes, tasks, sizes
NON_NEGATIVE = Number(integer=True, minimum=0)  # seeds, warm-up steps, "0 = off / the default" counts
RATE = Number(integer=False, minimum=0, above=True)  # learning rates, scales
AMOUNT = Number(integer=False, minimum=0)  # noise stds, loss weights, minutes
PROBABILITY = Number(integer=False, minimum=0, below=1)  # dropout

force_option = click.option("--force", is_flag=True, help="Replace the output file if it exists.")
