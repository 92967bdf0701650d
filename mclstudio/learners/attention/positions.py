"""Positions: token t of the stream gets the sinusoid of position t added to its embedding; a query is
read at position ``state.length`` (right after the stream), or at its own boundary. Positions are
computed from the state's length, so scan, step and read agree."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_positions(positions: Tensor, d_model: int, dtype: torch.dtype) -> Tensor:
    """Vaswani et al.'s sinusoids: positions (T,) -> (T, d_model), channel 2i = sin(p / 10000^(2i/d)),
    channel 2i+1 = cos(same). Computed in at least float32, returned in dtype."""
    ct = torch.promote_types(dtype, torch.float32)
    half = (d_model + 1) // 2
    inv_freq = torch.exp(
        torch.arange(half, dtype=ct, device=positions.device) * (-2.0 * math.log(10000.0) / d_model)
    )
    angles = positions.to(ct)[:, None] * inv_freq  # (T, half)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[:, :d_model]
    return pe.to(dtype)
