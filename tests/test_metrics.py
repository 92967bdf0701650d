"""Known answers for every metric in mclstudio/metrics.py.

Each input is built by hand so that the plausible wrong definitions give a different number: the best
earlier accuracy of a task is not in its first row, an earlier entry is NaN, forgetting can be negative,
the newest task is excluded from the mean, errors of 2 tell squares from absolute values, and so on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mclstudio.metrics import (
    episode_accuracy,
    episode_mse,
    forgetting,
    mean_ci95,
    mean_forgetting,
    per_task_accuracy,
    seen_task_accuracy,
)

NAN = np.nan

# A[k, j]: accuracy on task j after learning k + 1 tasks. Task 0's best earlier accuracy (0.9) is in
# row 1, not its first row; task 2 is better now (0.7) than at any earlier point (0.4): negative forgetting.
A = np.array([
    [0.5, NAN, NAN, NAN],
    [0.9, 0.6, NAN, NAN],
    [0.7, 0.8, 0.4, NAN],
    [0.6, 0.5, 0.7, 0.3],
])


def test_episode_accuracy_counts_argmax_hits_per_episode():
    # episode 0: queries answered 2, 0, 1, 1 against targets 2, 0, 1, 0 -> 3 of 4
    # episode 1: answered 0, 0, 2, 1 against 1, 0, 0, 0 -> 1 of 4
    logits = torch.tensor([
        [[0.1, 0.2, 0.9], [3.0, -1.0, 0.0], [0.0, 0.5, 0.4], [-2.0, 1.0, -3.0]],
        [[0.9, 0.1, 0.2], [0.3, 0.2, 0.1], [0.0, 0.1, 5.0], [0.0, 7.0, 0.0]],
    ])
    targets = torch.tensor([[2, 0, 1, 0], [1, 0, 0, 0]])
    assert episode_accuracy(logits, targets).tolist() == [0.75, 0.25]


def test_episode_mse_is_the_mean_square_over_queries_and_outputs_per_episode():
    targets = torch.zeros(2, 2, 3)
    predictions = torch.tensor([
        [[1.0, 2.0, 0.0], [0.0, 0.0, -3.0]],  # squares 1 + 4 + 9 = 14 over 6 entries
        [[0.5, 0.5, 0.5], [-0.5, 0.5, -0.5]],  # 0.25 each
    ])
    assert episode_mse(predictions, targets).tolist() == pytest.approx([14 / 6, 0.25])
    # half precision in, float32 out (the sum is not done in half)
    assert episode_mse(predictions.half(), targets).dtype == torch.float32


def test_mean_ci95_uses_the_sample_standard_deviation():
    mean, half_width = mean_ci95([0.5, 0.7, 0.6, 0.8])
    assert mean == pytest.approx(0.65)
    # squared deviations 0.0225 + 0.0025 + 0.0025 + 0.0225 = 0.05, over n - 1 = 3; sqrt(n) = 2
    assert half_width == pytest.approx(1.96 * math.sqrt(0.05 / 3) / 2)
    one = mean_ci95([0.4])
    assert one[0] == 0.4 and math.isnan(one[1])
    assert all(math.isnan(v) for v in mean_ci95([]))


def test_per_task_accuracy_divides_by_each_tasks_own_queries():
    correct = torch.tensor([True, False, True, True, False, True])
    query_task = torch.tensor([1, 0, 1, 1, 0, 0])  # task 0: 1 of 3; task 1: 3 of 3; task 2: no queries
    assert per_task_accuracy(correct, query_task, 3).tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    assert per_task_accuracy(correct, query_task, 2).tolist() == pytest.approx([1 / 3, 1.0])


def test_forgetting_is_best_earlier_accuracy_minus_accuracy_now():
    # task 0: max(0.5, 0.9, 0.7) - 0.6; task 1: max(0.6, 0.8) - 0.5; task 2: 0.4 - 0.7; the newest: 0
    assert forgetting(A) == pytest.approx([0.3, 0.3, -0.3, 0.0])
    # after fewer rows (what the engine passes while the stream runs): the top-left block
    assert forgetting(A[:2, :2]) == pytest.approx([-0.4, 0.0])
    assert forgetting(A[:3, :3]) == pytest.approx([0.2, -0.2, 0.0])
    assert forgetting(A[:1, :1]) == pytest.approx([0.0])


def test_forgetting_skips_unevaluated_earlier_entries():
    B = A.copy()
    B[1, 0] = NAN  # not evaluated then: the best earlier value is max(0.5, 0.7)
    assert forgetting(B) == pytest.approx([0.1, 0.3, -0.3, 0.0])


def test_mean_forgetting_leaves_out_the_newest_task():
    assert mean_forgetting(A) == pytest.approx((0.3 + 0.3 - 0.3) / 3)
    assert mean_forgetting(A[:2, :2]) == pytest.approx(-0.4)
    assert mean_forgetting(A[:1, :1]) == 0.0


def test_seen_task_accuracy_averages_the_filled_part_of_each_row():
    assert seen_task_accuracy(A) == pytest.approx([0.5, 0.75, 1.9 / 3, 0.525])
    partial = A.copy()
    partial[3] = NAN  # the last row not filled yet
    partial[2, 1] = NAN  # one entry of row 2 not evaluated: the mean of the other two
    out = seen_task_accuracy(partial)
    assert out[:3] == pytest.approx([0.5, 0.75, 0.55]) and math.isnan(out[3])
