"""Metrics, in one place: accuracy, confidence intervals, the accuracy matrix and forgetting.

Pure functions of tensors/arrays; every layer above (training, engine, recording, apps) uses these.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def episode_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """logits (B, Q, V), targets (B, Q) -> (B,) fraction of queries whose argmax is the target."""
    return (logits.argmax(-1) == targets).float().mean(-1)


def episode_mse(predictions: Tensor, targets: Tensor) -> Tensor:
    """predictions, targets (B, Q, y_dim) -> (B,) mean squared error per episode."""
    return (predictions.float() - targets.float()).pow(2).mean(dim=(1, 2))


def mean_ci95(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (normal approximation, 1.96 s / sqrt(n))."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


def per_task_accuracy(correct: Tensor, query_task: Tensor, tasks_seen: int) -> Tensor:
    """correct (Q,) bool for the queries of tasks 0..tasks_seen-1, query_task (Q,) -> (tasks_seen,)."""
    counts = torch.bincount(query_task, minlength=tasks_seen).clamp(min=1)
    hits = torch.bincount(query_task, weights=correct.float(), minlength=tasks_seen)
    return (hits / counts)[:tasks_seen]


def forgetting(accuracy_matrix: np.ndarray) -> np.ndarray:
    """Forgetting per task after the last row of an accuracy matrix.

    accuracy_matrix[k, j]: accuracy on task j after learning k+1 tasks (NaN where j > k).
    Returns (T,): for task j, the best accuracy at any earlier point minus the accuracy now
    (0 for the newest task, which has no earlier point)."""
    A = np.asarray(accuracy_matrix, dtype=np.float64)
    k = A.shape[0] - 1
    out = np.zeros(A.shape[1])
    for j in range(min(k, A.shape[1])):
        earlier = A[j:k, j]
        out[j] = np.nanmax(earlier) - A[k, j] if earlier.size else 0.0
    return out


def seen_task_accuracy(accuracy_matrix: np.ndarray) -> np.ndarray:
    """(T,): after learning k+1 tasks, the mean accuracy over tasks 0..k (row k of the matrix averaged
    over its filled entries); NaN for rows not filled yet. The curve "accuracy against tasks learned"."""
    A = np.asarray(accuracy_matrix, dtype=np.float64)
    out = np.full(A.shape[0], np.nan)
    for k in range(A.shape[0]):
        row = A[k, : k + 1]
        if np.isfinite(row).any():
            out[k] = np.nanmean(row)
    return out


def mean_forgetting(accuracy_matrix: np.ndarray) -> float:
    """Average forgetting over every task but the newest, after the last row (0 for a single task)."""
    f = forgetting(accuracy_matrix)
    return float(f[:-1].mean()) if f.size > 1 else 0.0
