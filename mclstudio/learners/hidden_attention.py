"""Hidden attention of a diagonal selective SSM (Ali, Zimerman & Wolf, 2024), in one place.

Unrolling the recurrence of ``scan.py`` (h_t = exp(log_decay_t) h_{t-1} + rate_t u_t key_t, y = C . h),
the output of channel d at token i is a weighted sum of past inputs:

    alpha[i, j][d] = sum_n C_i[n] * key_j[n] * rate_j[d] * exp(sum_{k=j+1..i} log_decay_k[d, n])

(for Mamba: key = B, rate = delta, log_decay = delta * A, the paper's formula). We need it for a query
read right after a stream of L tokens (i = L, j < L). The sum in the exponent splits into the query's
own log_decay_q and the stream's tail sum R_j = sum_{k>j} log_decay_k, which does not depend on the
query. So

    alpha[q, j][d] = sum_n  (C_q[n] exp(log_decay_q[d, n]))  *  (key_j[n] rate_j[d] exp(R_j[d, n]))
                   =        G[q, d, n]                       .  H[j, d, n]

G is ``scan.query_weights``, what the query reads of the state, and the channel average is one
contraction over (d, n). Our association row is |mean_d alpha[q, j][d]| normalised to sum 1 over the
stream (the choice is documented in docs/learners.md: the channel mean keeps the computation linear,
the absolute value makes a distribution of it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.scan import Transition, decay_to_end

ROW_EPS = 1e-12


def stream_keys(move: Transition) -> Tensor:
    """The stream's side H of the hidden attention, relative to the end of the stream.

    move: the stream's Transition with time second: log_decay (batch, L, d_inner, N), rate
    (batch, L, d_inner), key (batch, L, N). Returns H: (batch, L, d_inner, N) float32.
    """
    return decay_to_end(move.log_decay) * move.rate.unsqueeze(-1) * move.key.unsqueeze(-2)


def query_rows(G: Tensor, H: Tensor) -> Tensor:
    """Association rows of queries read right after the stream whose keys are H.

    G: (batch, Q, d_inner, N) the queries' weights (``scan.query_weights``); H: (batch, L, d_inner, N)
    from ``stream_keys``. Returns (batch, Q, L): non-negative, summing to 1 over the L stream tokens.
    """
    return normalised_rows(torch.einsum("bqdn,bldn->bql", G, H) / G.shape[-2])


def normalised_rows(alpha: Tensor) -> Tensor:
    """Association rows from the channel-averaged hidden attention alpha (batch, Q, L): |alpha| summing
    to 1 over the stream."""
    weight = alpha.abs()
    return weight / (weight.sum(-1, keepdim=True) + ROW_EPS)
