"""Mamba's hidden attention (Ali, Zimerman & Wolf, 2024), in one place.

Unrolling the selective scan, the output of channel d at token i is a weighted sum of past inputs:

    alpha[i, j][d] = sum_n C_i[n] * B_j[n] * delta_j[d] * exp(sum_{k=j+1..i} delta_k[d] * A[d, n])

We need it for a query read right after a stream of L tokens (i = L, j < L). The sum in the exponent
splits into the query's own decay, delta_q[d] * A[d, n], and the stream's tail sum R_j = sum_{k>j} of
delta_k * A, which does not depend on the query. So

    alpha[q, j][d] = sum_n  (C_q[n] exp(delta_q[d] A[d, n]))  *  (B_j[n] delta_j[d] exp(R_j[d, n]))
                   =        G[q, d, n]                        .  H[j, d, n]

and the channel average is one contraction over (d, n). Our association row is
|mean_d alpha[q, j][d]| normalised to sum 1 over the stream (the choice is documented in docs/learners.md:
the channel mean keeps the computation linear, the absolute value makes a distribution of it).
"""

from __future__ import annotations

import torch
from torch import Tensor

ROW_EPS = 1e-12


def stream_keys(delta: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """The stream's side H of the hidden attention, relative to the end of the stream.

    delta: (batch, d_inner, L) after softplus; A: (d_inner, N); B: (batch, N, L).
    Returns H: (batch, L, d_inner, N) float32 with H[j] = B_j * delta_j * exp(R_j).
    """
    delta_t = delta.transpose(1, 2)  # (batch, L, d_inner)
    # R_j = sum over k > j of delta_k * A = (sum over k > j of delta_k) * A: A does not depend on the
    # token, so the sum runs over (L, d_inner), N times less than over (L, d_inner, N). A reverse
    # cumulative sum adds up only the tail, so tokens near the end (the ones that matter most) keep full
    # float32 precision even in long streams.
    tail = torch.flip(torch.cumsum(torch.flip(delta_t, [1]), dim=1), [1]) - delta_t  # (batch, L, d_inner)
    return torch.exp(tail.unsqueeze(-1) * A) * delta_t.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)


def query_rows(C_q: Tensor, delta_q: Tensor, A: Tensor, H: Tensor) -> Tensor:
    """Association rows of queries read right after the stream whose keys are H.

    C_q: (batch, Q, N); delta_q: (batch, Q, d_inner) after softplus; A: (d_inner, N);
    H: (batch, L, d_inner, N) from ``stream_keys``.
    Returns (batch, Q, L): non-negative, summing to 1 over the L stream tokens.
    """
    d_inner = A.shape[0]
    G = C_q.unsqueeze(2) * torch.exp(delta_q.unsqueeze(-1) * A)
    alpha = torch.einsum("bqdn,bldn->bql", G, H) / d_inner
    weight = alpha.abs()
    return weight / (weight.sum(-1, keepdim=True) + ROW_EPS)


def hidden_attention_matrix(delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The full channel-averaged hidden attention of a sequence, for pictures and for checking.

    delta: (batch, d_inner, L) after softplus; A: (d_inner, N); B, C: (batch, N, L).
    Returns (batch, L, L): mean_d alpha[i, j][d] for j <= i, zero above the diagonal (signed, not
    normalised). Memory is O(L^2 * d_inner * N): meant for short sequences.
    """
    dA = delta.transpose(1, 2).unsqueeze(-1) * A  # (batch, L, d, N)
    S = torch.cumsum(dA, dim=1)
    L = delta.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=delta.device).tril()
    # exp(S_i - S_j) for j <= i; masked before exp so the upper triangle cannot overflow.
    diff = S.unsqueeze(2) - S.unsqueeze(1)  # (batch, i, j, d, N)
    diff = diff.masked_fill(~causal[None, :, :, None, None], float("-inf"))
    kernel = torch.exp(diff)
    Bd = B.transpose(1, 2).unsqueeze(2) * delta.transpose(1, 2).unsqueeze(-1)  # (b, j, d, N)
    Ct = C.transpose(1, 2)  # (batch, i, N)
    alpha = torch.einsum("bin,bijdn,bjdn->bij", Ct, kernel, Bd) / A.shape[0]
    return alpha
