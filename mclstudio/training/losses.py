"""Losses: the task loss on queries and MambaCL's selectivity regularisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mclstudio.data.layout import same_task_tokens

KL_EPS = 1e-8


def task_loss(logits: Tensor, query_y: Tensor) -> Tensor:
    """Cross-entropy on label codes (B, Q, V) vs (B, Q), or MSE for regression (B, Q, y_dim)."""
    if query_y.is_floating_point():
        return F.mse_loss(logits.float(), query_y.float())
    return F.cross_entropy(logits.float().flatten(0, 1), query_y.flatten())


def selectivity_targets(stream_task: Tensor, query_task: Tensor, query_end: Tensor | None = None) -> Tensor:
    """p: (Q, 2N), uniform over the stream tokens (x and y) of the pairs whose task is the query's.

    stream_task (N,), query_task (Q,) task indices; one task is one class, so same task = same label.
    query_end: None, or (Q,) pair counts: query q's target covers only the first query_end[q] pairs."""
    same = same_task_tokens(stream_task, query_task)  # x1, y1, x2, y2, ... share their pair's task
    if query_end is not None:
        same = same & (torch.arange(same.shape[1], device=same.device)[None, :] < 2 * query_end[:, None])
    same = same.float()
    return same / same.sum(-1, keepdim=True).clamp(min=1)


def selectivity_kl(
    rows: list[Tensor], stream_task: Tensor, query_task: Tensor, query_end: Tensor | None = None
) -> Tensor:
    """l_slct = KL(p || q) averaged over layers, episodes and queries.

    rows: per layer (B, Q, 2N) association rows q (non-negative, summing to 1 over the visible stream).
    query_end: None or (Q,) pair counts each query sees (``selectivity_targets``). Queries with no
    target (no same-task pair visible) or a zero row (a learner that gives no row at that boundary,
    see ``SSMLearner.read``) are left out of the mean."""
    p = selectivity_targets(stream_task, query_task, query_end)  # (Q, 2N)
    entropy_term = torch.where(p > 0, p * p.clamp(min=KL_EPS).log(), torch.zeros_like(p)).sum(-1)
    if query_end is None:  # every query has a full row
        losses = [(entropy_term - (p * (q.float() + KL_EPS).log()).sum(-1)).mean() for q in rows]
        return torch.stack(losses).mean()
    has_target = p.sum(-1) > 0  # (Q,)
    losses = []
    for q in rows:
        kl = entropy_term - (p * (q.float() + KL_EPS).log()).sum(-1)  # (B, Q)
        counted = (has_target & (q.sum(-1) > 0)).float()  # (B, Q)
        losses.append((kl * counted).sum() / counted.sum().clamp(min=1))
    return torch.stack(losses).mean()
