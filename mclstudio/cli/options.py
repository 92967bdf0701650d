"""Click options shared by several commands."""

from __future__ import annotations

import click

adapter_option = click.option(
    "--adapter", "adapters", multiple=True, metavar="FILE",
    help="An adapter file (from `mclstudio adapt`) to apply on top of the checkpoint it was trained on "
         "(repeatable; each goes to the first matching checkpoint without one).",
)
