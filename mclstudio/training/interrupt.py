"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM.

While ``stop_on_signals`` is active, the first signal only sets a flag: the training loop checks it after
every step (``stop_requested``), saves a resumable checkpoint and raises TrainingInterrupted. A second
signal interrupts at once (KeyboardInterrupt), keeping only the last periodic checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

_STOP = threading.Event()


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by a signal after saving a resumable checkpoint at ``path`` after ``step`` steps."""

    def __init__(self, path: str, step: int) -> None:
        super().__init__(f"interrupted after step {step}; saved {path}")
        self.path = path
        self.step = step


def request_stop() -> None:
    """Ask the running loop to stop after its current step (what the first signal does)."""
    _STOP.set()


def stop_requested(world: int = 1, device: torch.device | None = None) -> bool:
    """Whether a stop was asked for; under DDP, whether any rank was asked (every rank must call this at
    the same step, so that all of them stop together)."""
    if world <= 1:
        return _STOP.is_set()
    flag = torch.tensor([float(_STOP.is_set())], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


@contextmanager
def stop_on_signals(on_first: Callable[[], None] | None = None) -> Iterator[None]:
    """While the block runs, the first SIGINT or SIGTERM calls ``on_first`` and asks the loop to stop
    after the current step; a second raises KeyboardInterrupt. Outside the main thread, does nothing."""
    _STOP.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.set()
        if on_first is not None:
            on_first()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _STOP.clear()
