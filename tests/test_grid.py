"""`mclstudio eval --grid`: the tasks x shots grid and the anytime curve (issue 16), on the shipped Mamba
(real accuracies, so equalities between independent computations mean something) with small shapes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mclstudio.data import EpisodeSpec, get_source
from mclstudio.metrics import episode_accuracy
from mclstudio.store.checkpoint import load_checkpoint
from mclstudio.training.evaluate import EVAL_SEED_BASE, Setting, anytime_curve, evaluate_grid, evaluate_setting

from cli_helpers import run_cli


MAMBA = Path(__file__).resolve().parents[1] / "checkpoints" / "mamba.pt"


@pytest.fixture(scope="module")
def mamba():
    torch.set_num_threads(1)
    return load_checkpoint(MAMBA)


def scores(report: dict) -> list[tuple]:
    """A grid report's cells without their timing."""
    return [(c["tasks"], c["train_shots"], c["mean"], c["ci95"], c["skipped"]) for c in report["cells"]]


def manual_accuracy(learner, spec: EpisodeSpec, episodes: int, tasks_seen: int | None = None) -> np.ndarray:
    """Per-episode accuracy computed by hand: episodes seeded EVAL_SEED_BASE + i, the stream of the first
    ``tasks_seen`` tasks and their queries."""
    source = get_source(spec.dataset)
    k = tasks_seen or spec.tasks
    out = []
    with torch.no_grad():
        for i in range(episodes):
            ep = source.episode(spec.with_seed(EVAL_SEED_BASE + i))
            keep_s, keep_q = ep.stream_task < k, ep.query_task < k
            logits = learner(ep.stream_x[:, keep_s], ep.stream_y[:, keep_s], ep.query_x[:, keep_q]).logits
            out.append(episode_accuracy(logits, ep.query_y[:, keep_q]).item())
    return np.array(out)


def test_grid_cells_and_anytime_curve_against_hand_computation(mamba) -> None:
    learner, meta = mamba.learner, mamba.metadata
    cells, curve = evaluate_grid(learner, meta, tasks=(3, 200), shots=(1, 2), anytime=(4, 2), episodes=6, batch_size=4)
    assert [(c.tasks, c.train_shots) for c in cells] == [(3, 1), (3, 2), (200, 1), (200, 2)]
    base = EpisodeSpec(split="test", tasks=3, train_shots=2, test_shots=5, num_codes=learner.config.y_vocab)
    by_hand = manual_accuracy(learner, base, 6)
    assert cells[1].mean == pytest.approx(by_hand.mean(), abs=1e-6) and 0 < cells[1].mean < 1
    same = evaluate_setting(learner, get_source("omniglot-mini"), Setting("3x2", base), episodes=6, batch_size=3)
    assert (same.mean, same.ci95) == pytest.approx((cells[1].mean, cells[1].ci95))
    # 200 tasks exceed the learner's label codes and the split's classes: skipped, with the reason.
    assert cells[2].skipped and cells[3].skipped and np.isnan(cells[2].mean)

    # The anytime curve: point k is the accuracy on tasks 0..k from the stream of tasks 0..k alone.
    spec4 = replace(base, tasks=4)
    assert len(curve.mean) == 4 and curve.episodes == 6
    for k in (1, 2, 4):
        assert curve.mean[k - 1] == pytest.approx(manual_accuracy(learner, spec4, 6, tasks_seen=k).mean(), abs=1e-6)
    # ... so its last point is the full-stream accuracy of that shape.
    full = evaluate_setting(learner, get_source("omniglot-mini"), Setting("4x2", spec4), episodes=6)
    assert curve.mean[-1] == pytest.approx(full.mean, abs=1e-9)
    assert curve.mean[0] > curve.mean[-1]  # one task is easier than four for this learner


def test_anytime_curve_takes_uneven_shots(mamba) -> None:
    spec = EpisodeSpec(split="test", tasks=3, shots=(1, 3, 2), test_shots=2, num_codes=mamba.learner.config.y_vocab)
    curve = anytime_curve(mamba.learner, get_source("omniglot-mini"), spec, episodes=3)
    for k in (1, 2, 3):
        assert curve.mean[k - 1] == pytest.approx(manual_accuracy(mamba.learner, spec, 3, tasks_seen=k).mean(), abs=1e-6)


def test_eval_grid_cli_json_is_strict_and_deterministic(capsys) -> None:
    args = ["eval", MAMBA, MAMBA, "--grid", "--grid-tasks", "2,300", "--grid-shots", "1", "--anytime", "3x1",
            "--episodes", 3, "--device", "cpu", "--json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    first, second = doc["checkpoints"]
    assert scores(first) == scores(second) and first["anytime"] == second["anytime"]  # same seeds, same answers
    assert first["cells"][1]["mean"] is None and "label codes" in first["cells"][1]["skipped"]
    assert len(first["anytime"]["mean"]) == 3 and first["anytime"]["mean"][-1] is not None
    code, again, _ = run_cli(capsys, *args)
    assert scores(json.loads(again)["checkpoints"][0]) == scores(first)

    code, out, err = run_cli(capsys, "eval", MAMBA, "--grid", "--grid-tasks", "2", "--grid-shots", "1", "--anytime", "2x1",
                             "--episodes", 2, "--device", "cpu")
    assert code == 0 and "tasks \\ shots" in out and "heatmap" in out and "anytime" in out, err


@pytest.mark.parametrize("bad, message", [
    (["--grid-tasks", "0,5"], "--grid-tasks must be distinct positive whole numbers"),
    (["--grid-shots", "1,x"], "--grid-shots must be positive whole numbers"),
    (["--anytime", "20"], "--anytime must be TASKSxSHOTS"),
])
def test_eval_grid_bad_options_give_one_error_line(capsys, bad, message) -> None:
    code, _, err = run_cli(capsys, "eval", MAMBA, "--grid", *bad)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {message}")


def test_several_checkpoints_need_grid(capsys) -> None:
    code, _, err = run_cli(capsys, "eval", MAMBA, MAMBA)
    assert code == 2 and err.strip() == "error: several checkpoints need --grid; give one checkpoint for the standard settings"
