"""Shared by the learner tests: random episode tensors and streaming them through the recurrent path."""

from __future__ import annotations

import torch

from mclstudio.learners.base import Learner, State


def inputs(B: int = 2, N: int = 6, Q: int = 4, seed: int = 1, dtype: torch.dtype = torch.float64):
    """Random stream images (B, N, 1, 8, 8), labels (B, N) in 0..9 and queries (B, Q, 1, 8, 8)."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(B, N, 1, 8, 8, generator=g, dtype=dtype)
    sy = torch.randint(0, 10, (B, N), generator=g)
    qx = torch.randn(B, Q, 1, 8, 8, generator=g, dtype=dtype)
    return sx, sy, qx


def stream_recurrently(model: Learner, sx: torch.Tensor, sy: torch.Tensor) -> State:
    """Feed x1, y1, x2, y2, ... one token at a time from the empty state."""
    state = model.empty_state(sx.shape[0])
    for t in range(sx.shape[1]):
        state = model.step_y(model.step_x(state, sx[:, t]), sy[:, t])
    return state
