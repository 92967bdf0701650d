"""The layout of an episode's stream, in one place.

Examples are task-major: S_1 examples of task 0, then S_2 of task 1, and so on; the queries are
S_test examples of every task, task-major too. A learner reads the stream as 2N tokens
x1, y1, x2, y2, ...: tokens 2i and 2i + 1 are example i's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.data.episodes import EpisodeSpec


def example_tasks(spec: EpisodeSpec, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Task index of each stream example (N,) and of each query (Q,), int64, task-major."""
    tasks = torch.arange(spec.tasks, device=device)
    shots = torch.tensor(spec.task_shots, device=device)
    return tasks.repeat_interleave(shots), tasks.repeat_interleave(spec.test_shots)
