"""Losses: the task loss on queries and MambaCL's selectivity regularisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KL_EPS = 1e-8


def task_loss(logits: Tensor, query_y: Tensor) -> Tensor:
    """Cross-entropy on label codes (B, Q, V) vs (B, Q), or MSE for regression (B, Q, y_dim)."""
    if query_y.is_floating_point():
        return F.mse_loss(logits.float(), query_y.float())
    return F.cross_entropy(logits.float().flatten(0, 1), query_y.flatten())


def selectivity_targets(stream_task: Tensor, query_task: Tensor) -> Tensor:
    """p: (Q, 2N), uniform over the stream tokens (x and y) of the pairs whose task is the query's.

    stream_task (N,), query_task (Q,) task indices; one task is one class, so same task = same label."""
    token_task = stream_task.repeat_interleave(2)  # x1, y1, x2, y2, ... share their pair's task
    same = (query_task[:, None] == token_task[None, :]).float()
    return same / same.sum(-1, keepdim=True).clamp(min=1)


def selectivity_kl(rows: list[Tensor], stream_task: Tensor, query_task: Tensor) -> Tensor:
    """l_slct = KL(p || q) averaged over layers, episodes and queries.

    rows: per layer (B, Q, 2N) association rows q (non-negative, summing to 1 over the stream)."""
    p = selectivity_targets(stream_task, query_task)  # (Q, 2N)
    entropy_term = torch.where(p > 0, p * p.clamp(min=KL_EPS).log(), torch.zeros_like(p)).sum(-1)
    losses = []
    for q in rows:
        cross = (p * (q.float() + KL_EPS).log()).sum(-1)  # (B, Q)
        losses.append((entropy_term - cross).mean())
    return torch.stack(losses).mean()
