"""The stream's layout (data/layout.py), against answers worked out by hand: the task of each example,
query and token, which tokens share a query's task, and where tasks end and start."""

from __future__ import annotations

import torch

from mclstudio.data import EpisodeSpec
from mclstudio.data.layout import example_tasks, same_task_tokens, task_boundaries, task_ends, task_starts, token_tasks

UNEVEN = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # shots (2, 3, 1, 2)


def test_example_tasks_are_task_major_with_uneven_shots():
    stream_task, query_task = example_tasks(EpisodeSpec(tasks=3, shots=(1, 3, 2), test_shots=2))
    assert stream_task.tolist() == [0, 1, 1, 1, 2, 2]
    assert query_task.tolist() == [0, 0, 1, 1, 2, 2]
    assert stream_task.dtype == query_task.dtype == torch.int64


def test_tokens_repeat_their_examples_task_x_then_y():
    assert token_tasks(torch.tensor([0, 1, 1, 2])).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    same = same_task_tokens(torch.tensor([0, 1, 1, 2]), torch.tensor([1, 2, 0]))
    assert same.tolist() == [
        [False, False, True, True, True, True, False, False],
        [False, False, False, False, False, False, True, True],
        [True, True, False, False, False, False, False, False],
    ]


def test_task_ends_boundaries_and_starts():
    assert task_ends(UNEVEN).tolist() == [False, True, False, False, True, True, False, True]
    assert task_boundaries(UNEVEN).tolist() == [2, 5, 6, 8]
    assert task_starts(UNEVEN).tolist() == [0, 2, 5, 6]
    one_task = torch.tensor([4, 4, 4])
    assert task_ends(one_task).tolist() == [False, False, True]
    assert task_boundaries(one_task).tolist() == [3] and task_starts(one_task).tolist() == [0]
    assert task_ends(torch.tensor([7])).tolist() == [True] and task_starts(torch.tensor([7])).tolist() == [0]
