"""Losses, checkpoints, the training loop and evaluation (DDP: tests/test_ddp.py)."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mclstudio.metrics import forgetting, mean_ci95
from mclstudio.store.checkpoint import CheckpointError, load_checkpoint
from mclstudio.training.evaluate import evaluate_checkpoint
from mclstudio.training.losses import selectivity_kl, selectivity_targets
from mclstudio.training.trainer import TrainConfig, train

TINY = {"d_model": 16, "n_layers": 1, "encoder_channels": 8, "y_vocab": 12}
TINY_ATTN = {**TINY, "n_heads": 2, "d_ff": 32}


def tiny_config(tmp_path: Path, model: str = "mamba", **kw) -> TrainConfig:
    learner = TINY if model in ("mamba", "longhorn") else TINY_ATTN
    base = dict(model=model, tasks=3, train_shots=2, test_shots=1, steps=4, batch_size=2, lr=1e-3,
                checkpoint_every=2, log_every=2, out=str(tmp_path / f"{model}.pt"), device="cpu", learner=learner)
    base.update(kw)
    return TrainConfig(**base)


def test_selectivity_targets_and_kl():
    stream_task = torch.tensor([0, 0, 1, 1])  # 2 tasks x 2 shots -> 8 tokens
    query_task = torch.tensor([0, 1])
    p = selectivity_targets(stream_task, query_task)
    assert torch.allclose(p[0], torch.tensor([0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0]))
    assert torch.allclose(p[1], torch.tensor([0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25]))
    # q == p gives zero KL; uniform q gives log 2
    assert selectivity_kl([p.unsqueeze(0)], stream_task, query_task).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 2, 8), 1 / 8)
    assert selectivity_kl([uniform], stream_task, query_task).item() == pytest.approx(math.log(2), rel=1e-5)


def test_metrics():
    mean, ci = mean_ci95([0.5, 0.7, 0.6, 0.8])
    assert mean == pytest.approx(0.65)
    assert ci == pytest.approx(1.96 * np.std([0.5, 0.7, 0.6, 0.8], ddof=1) / 2)
    A = np.array([[1.0, np.nan, np.nan], [0.8, 0.9, np.nan], [0.6, 0.95, 0.7]])
    assert forgetting(A) == pytest.approx([0.4, -0.05, 0.0])


@pytest.mark.parametrize("model", ["mamba", "transformer", "linear_transformer", "performer", "longhorn"])
def test_training_writes_a_safe_checkpoint_for_every_model(tmp_path, model):
    final = train(tiny_config(tmp_path, model))
    assert final["step"] == 4 and math.isfinite(final["loss"]) and final["slct_loss"] > 0
    path = tmp_path / f"{model}.pt"
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["metadata"]["steps"] == 4 and raw["config"]["model"] == model
    ckpt = load_checkpoint(path)
    assert ckpt.learner.config.model == model and len(ckpt.sha256) == 64


def test_training_learns_something(tmp_path):
    # 1 task, 1 shot: the answer is the one label in the stream; copying it is learnable in a few steps.
    cfg = tiny_config(tmp_path, tasks=1, train_shots=1, test_shots=1, steps=80, batch_size=8, lr=3e-3, warmup_steps=5,
                      slct_lambda=0.0, log_every=20)
    logs = []
    train(cfg, logs.append)
    assert logs[-1].task_loss < logs[0].task_loss - 0.5


def test_resume_continues_from_the_checkpoint(tmp_path):
    train(tiny_config(tmp_path, steps=2))
    first = torch.load(tmp_path / "mamba.pt", weights_only=True)
    assert first["training_state"]["step"] == 2
    final = train(tiny_config(tmp_path, steps=4, resume=True))
    assert final["step"] == 4
    resumed = torch.load(tmp_path / "mamba.pt", weights_only=True)
    assert resumed["training_state"]["step"] == 4
    assert not torch.equal(first["state_dict"]["head.weight"], resumed["state_dict"]["head.weight"])
    # resuming a finished run trains no further and keeps its final metrics
    again = train(tiny_config(tmp_path, steps=4, resume=True))
    assert again == final
    assert torch.load(tmp_path / "mamba.pt", weights_only=True)["metadata"]["final_metrics"] == final


def test_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"format": "mclstudio-checkpoint", "obj": datetime.datetime(2026, 1, 1)}, bad)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_checkpoint(bad)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an mclstudio checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_with_mismatched_weights_is_refused(tmp_path):
    train(tiny_config(tmp_path, steps=1))
    raw = torch.load(tmp_path / "mamba.pt", weights_only=True)
    raw["config"]["d_model"] = 32
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "bad.pt")


def test_evaluate_checkpoint_reports_all_settings(tmp_path):
    train(tiny_config(tmp_path, steps=1))
    ckpt = load_checkpoint(tmp_path / "mamba.pt")
    results = evaluate_checkpoint(ckpt.learner, ckpt.metadata, episodes=6, batch_size=4)
    names = [r.name for r in results]
    assert names == ["trained", "2x tasks", "5x tasks", "2x shots", "noise 0.5", "noise 1"]
    trained = results[0]
    assert trained.episodes == 6 and 0 <= trained.mean <= 1 and trained.tasks == 3
    # 5x tasks needs 15 label codes; this learner has 12: reported, not crashed
    assert results[2].tasks == 15 and "label codes" in results[2].skipped
    assert not results[1].skipped and results[1].tasks == 6
    # deterministic: the same episodes every time
    again = evaluate_checkpoint(ckpt.learner, ckpt.metadata, episodes=6, batch_size=3)
    assert again[0].mean == pytest.approx(trained.mean)


def test_sine_regression_trains(tmp_path):
    final = train(tiny_config(tmp_path, dataset="sine", tasks=2, train_shots=2, test_shots=2, steps=2))
    assert final["accuracy"] < 0  # -MSE for regression
    ckpt = load_checkpoint(tmp_path / "mamba.pt")
    assert ckpt.learner.config.is_regression and ckpt.learner.config.x_shape == (50,)
