"""Click options shared by several commands, and the option groups the commands are built from:

- ``episode_options``: the episode a command streams (dataset, split, tasks, shots, seed, noise);
- ``torchvision_options``: where a torchvision dataset lives (--root, --download);
- ``device_option`` and ``precision_option`` (``device_and_precision_options`` together);
- ``output_options``: the file a command writes (-o, --force, and --resume or --append);
- the checked number types (COUNT, NON_NEGATIVE, RATE, AMOUNT, PROBABILITY).

Torch-free: the names offered come from mclstudio.choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mclstudio.choices import PRECISIONS, TRAIN_PRECISIONS

F = TypeVar("F", bound=Callable[..., Any])


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator; --help lists them in the order given."""
    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def _precision_choice(
    names: tuple[str, ...], default: str, help: str, doc: str
) -> Callable[[F], F]:
    """A --precision option taking one of ``names``. A bad value is a ValueError, which the CLI prints as one
    `error:` line (click.Choice would print a usage block); whether the device can run it is checked where
    the device is known (mclstudio.precision)."""

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        if value.lower() not in names:
            raise ValueError(f"--precision must be one of {', '.join(names)}, not {value!r}")
        return value.lower()

    option = click.option("--precision", default=default, show_default=True, metavar="|".join(names),
                          callback=check, help=help)
    option.__doc__ = doc
    return option


precision_option = _precision_choice(
    PRECISIONS, "fp32",
    "fp32, or bf16/fp16 mixed precision (torch.autocast: weights and accumulating states stay fp32).",
    "--precision fp32|bf16|fp16: mixed precision through torch.autocast (docs/precision.md).",
)
train_precision_option = _precision_choice(
    TRAIN_PRECISIONS, "auto",
    "fp32, or bf16/fp16 mixed precision (torch.autocast; fp16 with loss scaling); auto: bf16 on CUDA, "
    "fp32 on the CPU.",
    "train's and adapt's --precision auto|fp32|bf16|fp16: auto is bf16 on CUDA and fp32 on the CPU.",
)


adapter_option = click.option(
    "--adapter", "adapters", multiple=True, metavar="FILE",
    help="An adapter file (from `mclstudio adapt`) to apply on top of the checkpoint it was trained on "
         "(repeatable; each goes to the first matching checkpoint without one).",
)


class Number(click.ParamType):
    """An int (``integer``) or a finite float in a range; a refusal says the range in words
    ("must be at least 1, not 0"). click's FloatRange would let nan and inf through."""

    def __init__(self, integer: bool, minimum: float | None = None, above: bool = False,
                 below: float | None = None, maximum: float | None = None) -> None:
        self.integer, self.minimum, self.above, self.below = integer, minimum, above, below
        self.maximum = maximum
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
        if self.maximum is not None and number > self.maximum:
            self.fail(f"must be at most {self.maximum:g}, not {value}", param, ctx)
        return number


COUNT = Number(integer=True, minimum=1)  # steps, episodes, tasks, sizes
NON_NEGATIVE = Number(integer=True, minimum=0)  # seeds, warm-up steps, "0 = off / the default" counts
RATE = Number(integer=False, minimum=0, above=True)  # learning rates, scales
AMOUNT = Number(integer=False, minimum=0)  # noise stds, loss weights, minutes
PROBABILITY = Number(integer=False, minimum=0, below=1)  # dropout
SHARE = Number(integer=False, minimum=0, maximum=1)  # a share of episodes, 0 to 1 inclusive

force_option = click.option("--force", is_flag=True, help="Replace the output file if it exists.")


def episode_options(dataset_help: str | None = None, seed_help: str | None = None,
                    test_shots: bool = True) -> Callable[[F], F]:
    """The episode a command streams through its learners (record, open): --dataset, --split, --tasks,
    --shots (one count, or one per task: "1,3,5"), --test-shots (unless ``test_shots`` is False), --seed
    and --noise. The values reach the command as they are; EpisodeSpec checks them when it is built."""
    return options(
        click.option("--dataset", default="omniglot-mini", show_default=True, help=dataset_help),
        click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True),
        click.option("--tasks", type=COUNT, default=20, show_default=True, help="Tasks (classes) per episode."),
        click.option("--shots", default="5", show_default=True, help="Training shots per task, or one per task: 1,3,5,..."),
        *([click.option("--test-shots", type=COUNT, default=5, show_default=True, help="Query shots per task.")]
          if test_shots else []),
        click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help=seed_help),
        click.option("--noise", type=AMOUNT, default=0.0, show_default=True, help="Gaussian input-noise std."),
    )


torchvision_options = options(
    click.option("--root", default=None, help="Folder of a torchvision dataset."),
    click.option("--download", is_flag=True, help="Let torchvision download the dataset into --root."),
)

device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (the GPU when there is one), cpu or cuda[:N].")


def device_and_precision_options(f: F) -> F:
    """--device and --precision (whether the device can run the precision is checked when it is known)."""
    return options(device_option, precision_option)(f)


def output_options(help: str, default: str | None = None, *also: Callable[[F], F]) -> Callable[[F], F]:
    """-o/--out FILE (``help``; ``default``, or None when the command picks a new name) and --force, then
    ``also``: what else a command may do with an output that exists (``resume_option``, --append)."""
    return options(click.option("-o", "--out", default=default, show_default=default is not None, help=help),
                   force_option, *also)


def resume_option(help: str) -> Callable[[F], F]:
    """--resume: continue the interrupted run whose file -o names (train, adapt)."""
    return click.option("--resume", is_flag=True, help=help)
