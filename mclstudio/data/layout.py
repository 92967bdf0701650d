"""The layout of an episode's stream, in one place.

Examples are task-major: S_1 examples of task 0, then S_2 of task 1, and so on; the queries are
S_test examples of every task, task-major too. A learner reads the stream as 2N tokens
x1, y1, x2, y2, ...: tokens 2i and 2i + 1 are example i's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.transfer import to_device


def example_tasks(spec: EpisodeSpec, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Task index of each stream example (N,) and of each query (Q,), int64, task-major. Made on the host
    and copied without a wait (``transfer.to_device``): on a GPU, repeat_interleave by a tensor of shots
    would read the total back."""
    tasks = torch.arange(spec.tasks)
    stream = tasks.repeat_interleave(torch.tensor(spec.task_shots))
    return to_device(stream, device), to_device(tasks.repeat_interleave(spec.test_shots), device)


def token_tasks(stream_task: Tensor) -> Tensor:
    """(N,) task of each stream example -> (2N,) task of each token (x_i and y_i share example i's)."""
    return stream_task.repeat_interleave(2)


def same_task_tokens(stream_task: Tensor, query_task: Tensor) -> Tensor:
    """(Q, 2N) bool: whether token t of the stream belongs to an example of query q's task.
    stream_task (N,), query_task (Q,), on one device. One task is one class, so same task = same label."""
    return query_task[:, None] == token_tasks(stream_task)[None, :]


def task_ends(stream_task: Tensor) -> Tensor:
    """(N,) bool: whether stream example i is the last of its task (tasks contiguous)."""
    ends = torch.ones_like(stream_task, dtype=torch.bool)
    ends[:-1] = stream_task[1:] != stream_task[:-1]
    return ends


def task_boundaries(stream_task: Tensor) -> Tensor:
    """(K,) int64 increasing example counts at which a task of the stream ends (the last is N)."""
    return torch.nonzero(task_ends(stream_task)).flatten() + 1


def task_starts(stream_task: Tensor) -> Tensor:
    """(K,) int64 index of the first stream example of each task: example i starts a task where
    example i - 1 ended one (example 0, where the last example ends the last task)."""
    return torch.nonzero(task_ends(stream_task).roll(1)).flatten()
