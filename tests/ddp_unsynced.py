"""``mclstudio train`` with DDP's gradient averaging taken out, for tests/test_ddp.py: run under torchrun,
every rank trains on its own episodes alone (the process group still exists, so the ranks' logs are still
averaged). What training would do if the DDP wrapper were lost."""

from __future__ import annotations

import sys

import torch

import mclstudio.training.trainer as trainer
from mclstudio.cli.main import main


def no_ddp(module: torch.nn.Module, **_: object) -> torch.nn.Module:
    return module


if __name__ == "__main__":
    trainer.DistributedDataParallel = no_ddp  # type: ignore[assignment]
    main(sys.argv[1:])
