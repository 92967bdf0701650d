"""The anytime objective: each query gets a boundary, the number of stream pairs it may see.

Lee et al.'s "distributed loss", generalised to every learner: a query of task t is attached after a
task boundary drawn uniformly from the boundaries at or after its own task, so every row of the
accuracy matrix A[k, j] (accuracy on task j after k tasks) is trained, not only the last one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.data.layout import task_boundaries


def sample_query_end(stream_task: Tensor, query_task: Tensor, generator: torch.Generator) -> Tensor:
    """(Q,) int64: for each query a boundary drawn uniformly from the task boundaries at or after the end
    of its own task in the stream (any boundary for a task the stream lacks).

    stream_task (N,), query_task (Q,) (shared by the batch; uneven shots per task are fine).
    generator: a CPU generator (seeded per step, so runs are reproducible)."""
    stream_task, query_task = stream_task.cpu(), query_task.cpu()
    ends = task_boundaries(stream_task)  # (K,)
    positions = torch.arange(1, stream_task.shape[0] + 1)
    own_end = ((query_task[:, None] == stream_task[None, :]) * positions).amax(dim=1)  # (Q,), 0 if absent
    first = torch.searchsorted(ends, own_end)  # index of the first boundary at or after it
    choices = ends.shape[0] - first
    pick = first + (torch.rand(query_task.shape[0], generator=generator) * choices).long().clamp(max=choices - 1)
    return ends[pick]


def anytime_generator(seed: int, step: int) -> torch.Generator:
    """The boundary sampler's generator for one step: a pure function of (seed, step). Every DDP rank
    draws the same boundaries, so a step is the same whatever the number of processes sharing its batch."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 0x5EED)
