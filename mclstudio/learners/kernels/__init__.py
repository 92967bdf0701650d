"""Fused GPU kernels (Triton) for inference hot spots, each checked against the PyTorch code it
replaces (tests run them on the CPU through Triton's interpreter). Triton ships with Linux torch
wheels; where it does not import, the PyTorch code runs everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

try:
    import triton

    TRITON_IMPORT_ERROR = ""
except ImportError as exc:  # CPU-only installs (macOS wheels) have no Triton
    triton = None
    TRITON_IMPORT_ERROR = str(exc)

_enabled = True


def power_of_2(k: int) -> bool:
    """Whether k is a positive power of 2 (Triton's tile sides must be)."""
    return k > 0 and k & (k - 1) == 0


# The training kernels (hidden_rows, query_recall) hold a (rows x channels x N) tile of state entries.
MAX_STATES = 64


def fused_states_supported(N: int) -> bool:
    """Whether the training kernels take N state entries per channel: kernels on, N a power of 2 of at
    most MAX_STATES."""
    return fused_kernels_enabled() and power_of_2(N) and N <= MAX_STATES


def fused_kernels_enabled() -> bool:
    """Whether the learners may use the fused kernels (Triton imports and ``fused_kernels`` allows it)."""
    return triton is not None and _enabled


@contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Turn the fused kernels off (or back on) inside a block: for comparisons with the modules, and for
    counting FLOPs, which torch's counter cannot see inside a kernel."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


__all__ = ["MAX_STATES", "TRITON_IMPORT_ERROR", "fused_kernels", "fused_kernels_enabled", "fused_states_supported",
           "power_of_2", "triton"]
