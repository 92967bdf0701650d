"""Fused GPU kernels (Triton) for inference hot spots, each checked against the PyTorch code it
replaces (tests run them on the CPU through Triton's interpreter). Triton ships with Linux torch
wheels; where it does not import, the PyTorch code runs everywhere.
"""

from __future__ import annotations

try:
    import triton

    TRITON_IMPORT_ERROR = ""
except ImportError as exc:  # CPU-only installs (macOS wheels) have no Triton
    triton = None
    TRITON_IMPORT_ERROR = str(exc)

__all__ = ["TRITON_IMPORT_ERROR", "triton"]
