"""Shared by the learner tests: random episode tensors, streaming them through the recurrent path, and
references the learners do not need themselves (Mamba's one-token step, the full hidden-attention map)."""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.base import Learner, State
from mclstudio.learners.scan import Transition, diagonal_step, mamba_transition


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


def selective_step(
    state: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor
) -> tuple[Tensor, Tensor]:
    """One token of Mamba's scan (delta already softplus-ed); ``diagonal_step`` with Mamba's transition."""
    return diagonal_step(state, u, z, C, D, mamba_transition(delta, A, B))


def hidden_attention_matrix(move: Transition, C: Tensor) -> Tensor:
    """The full channel-averaged hidden attention of a sequence, by brute force: the rows are checked
    against it.

    move: the sequence's Transition with time second (see ``hidden_attention.stream_keys``); C: (batch, L, N).
    Returns (batch, L, L): mean_d alpha[i, j][d] for j <= i, zero above the diagonal (signed, not
    normalised). Memory is O(L^2 * d_inner * N): meant for short sequences.
    """
    S = torch.cumsum(move.log_decay, dim=1)  # (batch, L, d, N)
    L = S.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=S.device).tril()
    # exp(S_i - S_j) for j <= i; masked before exp so the upper triangle cannot overflow.
    diff = S.unsqueeze(2) - S.unsqueeze(1)  # (batch, i, j, d, N)
    diff = diff.masked_fill(~causal[None, :, :, None, None], float("-inf"))
    drive = move.rate.unsqueeze(-1) * move.key.unsqueeze(-2)  # (batch, j, d, N)
    return torch.einsum("bin,bijdn,bjdn->bij", C, torch.exp(diff), drive) / S.shape[2]
