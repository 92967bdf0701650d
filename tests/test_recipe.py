"""Training as a recipe (training/loop.py): the step at each precision, the shared loop's logs, periodic
saves and stops, the precision option of train and adapt, and old files' ``amp`` read as a precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mclstudio.data import EpisodeSpec, get_source
from mclstudio.learners.registry import build_learner, make_config
from mclstudio.store.checkpoint import load_checkpoint, read_safely
from mclstudio.training.adapt import AdaptConfig
from mclstudio.training.interrupt import request_stop, stop_on_signals
from mclstudio.training.loop import (
    Batch,
    LoopSetup,
    grad_scaler,
    meta_train_step,
    precision_from_config,
    run_loop,
    training_precision,
    warmup_halving_schedule,
)
from mclstudio.training.losses import selectivity_kl, task_loss
from mclstudio.training.trainer import TrainConfig

from cli_helpers import run_cli


ROOT = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "16", "--layers", "1", "--encoder-channels", "4", "--y-vocab", "4", "--device", "cpu",
        "--tasks", "2", "--shots", "1", "--test-shots", "1", "--batch-size", "2", "--log-every", "1"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_mamba(seed: int = 0):
    torch.manual_seed(seed)
    return build_learner(make_config("mamba", d_model=16, n_layers=1, encoder_channels=4, y_vocab=8, x_shape=(1, 32, 32)))


def episodes(seed: int = 0):
    spec = EpisodeSpec(tasks=3, train_shots=1, test_shots=1, num_codes=8)
    return get_source("omniglot-mini").batch([spec.with_seed(seed * 10 + i) for i in range(2)])


def constant_sgd(params: list[torch.nn.Parameter]):
    optimizer = torch.optim.SGD(params, lr=1.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def test_the_step_at_bf16_computes_its_loss_under_autocast():
    ep, lam = episodes(), 0.5
    learner = tiny_mamba()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, rows = learner(ep.stream_x, ep.stream_y, ep.query_x, with_rows=True)
        expected = task_loss(logits, ep.query_y) + lam * selectivity_kl(rows, ep.stream_task, ep.query_task, None)
    with torch.no_grad():
        logits, rows = learner(ep.stream_x, ep.stream_y, ep.query_x, with_rows=True)
        fp32 = task_loss(logits, ep.query_y) + lam * selectivity_kl(rows, ep.stream_task, ep.query_task, None)
    params = list(learner.parameters())
    optimizer, schedule = constant_sgd(params)
    stats = meta_train_step(learner, ep, optimizer, schedule, params, lam, 1.0, "bf16")
    assert float(stats.loss) == float(expected)
    assert abs(float(expected) - float(fp32)) > 1e-6  # bf16 is really another computation than fp32


def test_fp16_unscales_the_gradient_before_clipping_and_stepping():
    """With loss scaling the update is the true fp16 gradient, not the scaled one; an overflowing step is
    skipped and the scale halved (the first steps at the default scale, 2**16, overflow here)."""
    ep = episodes()
    reference = tiny_mamba()  # the fp32 gradient
    logits, _ = reference(ep.stream_x, ep.stream_y, ep.query_x)
    task_loss(logits, ep.query_y).backward()
    learner = tiny_mamba()
    params = list(learner.parameters())
    before = [p.detach().clone() for p in params]
    optimizer, schedule = constant_sgd(params)

    overflowing = grad_scaler("fp16", torch.device("cpu"))
    assert overflowing.is_enabled() and overflowing.get_scale() == 2.0**16
    meta_train_step(learner, ep, optimizer, schedule, params, 0.0, 1e9, "fp16", scaler=overflowing)
    assert all(torch.equal(b, p) for b, p in zip(before, params)) and overflowing.get_scale() == 2.0**15

    true = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in reference.parameters()])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    clip = 2 * float(true.norm())  # clips the scaled gradient (256 times the true one), never the true one
    meta_train_step(learner, ep, optimizer, schedule, params, 0.0, clip, "fp16", scaler=scaler)
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params)])  # SGD at lr 1: the gradient
    assert float((moved - true).norm() / true.norm()) < 0.01  # the fp16 gradient, not 256 times it
    assert scaler.get_scale() == 2.0**8  # finite: the scale stays (it grows after 2000 steps)
    assert not grad_scaler("bf16", torch.device("cpu")).is_enabled()


def _loop(start: int = 0, steps: int = 5, checkpoint_every: int = 2) -> tuple[LoopSetup, torch.nn.Module]:
    learner = tiny_mamba()
    params = list(learner.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    schedule = warmup_halving_schedule(optimizer, 0, 10_000)
    setup = LoopSetup(
        model=learner, params=params, optimizer=optimizer, schedule=schedule,
        scaler=grad_scaler("fp32", torch.device("cpu")), device=torch.device("cpu"), precision="fp32",
        start_step=start, steps=steps, batch_size=2, log_every=2, grad_clip=1.0, slct_lambda=0.0,
        checkpoint_every=checkpoint_every,
    )
    return setup, learner


def test_the_loop_logs_saves_and_stops_where_it_says():
    setup, _ = _loop()
    batches, logs, saves = [], [], []
    result = run_loop(setup, lambda step: batches.append(step) or Batch(episodes(step)),
                      lambda step, log: saves.append((step, log.step if log else None)), lambda log: logs.append(log.step))
    assert batches == [0, 1, 2, 3, 4] and logs == [2, 4, 5]
    assert saves == [(2, 2), (4, 4)]  # every 2 steps before the last, with the latest log; the recipe saves the last
    assert (result.done, result.stopped, result.last_log.step) == (5, False, 5)
    assert setup.training_state(5)["step"] == 5 and "scaler" not in setup.training_state(5)

    resumed, _ = _loop(start=3)  # a resumed run goes on from its step
    logs.clear()
    result = run_loop(resumed, lambda step: Batch(episodes(step)), on_log=lambda log: logs.append(log.step))
    assert (result.done, logs) == (5, [4, 5])

    stopping, _ = _loop()
    with stop_on_signals():
        request_stop()  # as the first Ctrl-C does: the loop ends after the step it is in
        result = run_loop(stopping, lambda step: Batch(episodes(step)), lambda step, log: saves.append(step))
    assert (result.done, result.stopped, result.last_log) == (1, True, None) and len(saves) == 2


def test_a_diverged_loop_raises_before_the_recipe_saves():
    setup, learner = _loop(steps=1)
    with torch.no_grad():
        next(learner.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="the loss became nan by step 1; try a lower --lr"):
        run_loop(setup, lambda step: Batch(episodes(step)))


def test_training_precision_and_old_amp_keys():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training_precision("auto", cpu) == "fp32" and training_precision("auto", cuda) == "bf16"
    assert training_precision("fp16", cpu) == "fp16" and training_precision("fp32", cuda) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, not 'fp64'"):
        training_precision("fp64", cpu)
    assert precision_from_config({"amp": True, "device": "auto"}) == "auto"
    assert precision_from_config({"amp": True, "device": "cpu"}) == "fp32"  # --amp was bf16 on CUDA only
    assert precision_from_config({"amp": True, "device": "cuda:1"}) == "bf16"
    assert precision_from_config({"amp": False, "device": "cuda"}) == "fp32"
    assert precision_from_config({"precision": "fp16", "device": "cuda"}) == "fp16"
    # The previous shipped files predate --precision: Mamba was trained with --device auto, its adapter on
    # the CPU; the current ones store theirs.
    train_config = load_checkpoint(ROOT / "checkpoints" / "previous" / "mamba.pt").metadata["train_config"]
    assert train_config["amp"] is True and TrainConfig.from_dict(train_config).precision == "auto"
    current = load_checkpoint(ROOT / "checkpoints" / "mamba.pt").metadata["train_config"]
    assert "amp" not in current and TrainConfig.from_dict(current).precision == "bf16"
    adapter = read_safely(ROOT / "checkpoints" / "previous" / "adapters" / "mamba-omniglot-mini-inverted-r4.pt", "adapter")
    assert AdaptConfig.from_dict(adapter["metadata"]["adapt_config"]).precision == "fp32"


def test_train_and_adapt_take_precision(tmp_path, capsys):
    runs = {}
    for precision in ("auto", "fp32", "bf16", "fp16"):
        out = tmp_path / f"{precision}.pt"
        code, _, err = run_cli(capsys, "train", "--steps", "2", *TINY, "--precision", precision, "-o", out)
        assert code == 0, err
        runs[precision] = load_checkpoint(out, with_training_state=True)
    recorded = {p: c.metadata["train_config"]["precision"] for p, c in runs.items()}
    assert recorded == {"auto": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}  # what ran, on the CPU
    assert all("amp" not in c.metadata["train_config"] for c in runs.values())
    weights = {p: c.learner.state_dict() for p, c in runs.items()}
    assert all(torch.equal(weights["auto"][k], weights["fp32"][k]) for k in weights["fp32"])
    for low in ("bf16", "fp16"):
        assert not all(torch.equal(weights[low][k], weights["fp32"][k]) for k in weights["fp32"])
    assert "scaler" in runs["fp16"].training_state and "scaler" not in runs["bf16"].training_state
    code, _, err = run_cli(capsys, "train", "--steps", "3", *TINY, "--precision", "fp16", "--resume", "-o", tmp_path / "fp16.pt")
    assert code == 0 and load_checkpoint(tmp_path / "fp16.pt").metadata["steps"] == 3, err

    adapter = tmp_path / "adapter.pt"
    code, _, err = run_cli(capsys, "adapt", tmp_path / "fp32.pt", "--dataset", "omniglot-mini:inverted", "--steps", "1",
                           "--batch-size", "2", "--rank", "2", "--device", "cpu", "--precision", "bf16", "-o", adapter)
    assert code == 0, err
    assert read_safely(adapter, "adapter")["metadata"]["adapt_config"]["precision"] == "bf16"
    for command in (["train", *TINY], ["adapt", tmp_path / "fp32.pt", "--dataset", "omniglot-mini:inverted"]):
        code, _, err = run_cli(capsys, *command, "--precision", "fp64", "-o", tmp_path / "never.pt")
        assert (code, err.strip()) == (2, "error: --precision must be one of auto, fp32, bf16, fp16, not 'fp64'")
    assert not (tmp_path / "never.pt").exists()
