"""The training loop that meta-training (trainer.py) and adaptation (adapt.py) share.

Each of them is a recipe in three parts, after torchtune's recipes: *setup* builds the data, the learner,
the optimizer and schedule (and resumes them) into a ``LoopSetup``; *loop* (``run_loop``, here) runs the
steps: sample a batch, one ``meta_train_step``, the log window, periodic checkpoints, the time limit and
Ctrl-C; *save* writes the recipe's file. Reading order: precision, the step (``meta_train_step`` and the
optimizer pieces), the log window, then ``run_loop``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from mclstudio.data import Episode, ImageSource
from mclstudio.learners.base import Learner
from mclstudio.metrics import episode_accuracy, episode_mse
from mclstudio.choices import TRAIN_PRECISIONS
from mclstudio.precision import autocast, check_precision
from mclstudio.transfer import to_device
from mclstudio.training.interrupt import stop_requested
from mclstudio.training.losses import selectivity_kl, task_loss
from mclstudio.training.rotation import rotate

# fp16's loss scaler skips the optimizer step when a gradient overflowed (the first steps, while it finds
# its scale); torch then warns that the schedule stepped without the optimizer. Expected: not the user's concern.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")

# ---- precision ---------------------------------------------------------------------------------------

def training_precision(precision: str, device: torch.device) -> str:
    """The precision a run trains at, one of fp32, bf16, fp16. "auto" is bf16 on CUDA and fp32 on the
    CPU (what the former ``--amp`` did); the others must run on ``device`` (ValueError, one line)."""
    check_train_precision(precision)
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return check_precision(precision, device)


def check_train_precision(precision: str) -> None:
    """ValueError (one line) unless ``precision`` is one of TRAIN_PRECISIONS."""
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, not {precision!r}")


def precision_from_config(config: dict[str, Any]) -> str:
    """The ``precision`` of a stored train or adapt config. Files written before the option existed
    have ``amp`` instead: True meant bf16 autocast on CUDA only, so it reads as fp32 for a CPU run, bf16
    for a CUDA run and "auto" (the same rule) where the device was "auto"; False reads as fp32."""
    if "precision" in config:
        return str(config["precision"])
    if not config.get("amp", True):
        return "fp32"
    device = str(config.get("device", "auto"))
    return "auto" if device == "auto" else "bf16" if device.startswith("cuda") else "fp32"


# ---- the step ----------------------------------------------------------------------------------------


@dataclass
class StepStats:
    """One optimisation step's losses and its mean query score (accuracy, or -MSE for regression).
    Zero-dim tensors on the training device: reading them waits for the GPU, so the loop only reads
    them when it logs (a step then never stalls the host on the device)."""

    loss: Tensor | float
    task_loss: Tensor | float
    slct_loss: Tensor | float
    score: Tensor | float


def meta_train_step(
    model: torch.nn.Module,
    ep: Episode,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    slct_lambda: float,
    grad_clip: float,
    precision: str = "fp32",
    table: torch.Tensor | None = None,
    step: int = 0,
    query_end: torch.Tensor | None = None,
    scaler: torch.amp.GradScaler | None = None,
    rotation: torch.Tensor | None = None,
) -> StepStats:
    """One step on a batch of episodes: CE (or MSE) on the queries + slct_lambda * l_slct, backward, clip
    ``params``' gradient norm, optimizer and schedule step. ``precision``: fp32, or bf16 / fp16 autocast
    (mclstudio.precision) on the episode's device. ``table`` (P, d_model): look the inputs up as
    already-embedded samples (a frozen encoder's pool) instead of running the encoder. ``query_end`` (Q,):
    the pairs each query sees (the anytime objective, ``anytime.sample_query_end``); None: all.
    ``scaler``: fp16's loss scaling (an fp16 gradient would underflow without it). ``rotation`` (B, D, D):
    with a table, each episode's looked-up embeddings are multiplied by its rotation (``rotation.py``)."""
    if table is not None:
        stream_x, query_x = table[ep.stream_sample_ids()], table[ep.test_sample_ids.flatten(1)]
        if rotation is not None:
            stream_x, query_x = rotate(stream_x, rotation), rotate(query_x, rotation)
    else:
        stream_x, query_x = ep.stream_x, ep.query_x
    with autocast(precision, stream_x.device):
        logits, rows = model(
            stream_x, ep.stream_y, query_x, with_rows=slct_lambda > 0, embedded=table is not None, query_end=query_end
        )
        loss_task = task_loss(logits, ep.query_y)
        loss_slct = (
            selectivity_kl(rows, ep.stream_task, ep.query_task, None if query_end is None else to_device(query_end, stream_x.device))
            if rows is not None else loss_task.new_zeros(())
        )
        loss = loss_task + slct_lambda * loss_slct
    optimizer.zero_grad(set_to_none=True)
    if not (scaler is not None and scaler.is_enabled() and loss.requires_grad):
        scaler = None
    if loss.requires_grad:  # else nothing is left to train (ProtoNet on a frozen encoder): the step only reports
        (loss if scaler is None else scaler.scale(loss)).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # skipped when a gradient overflowed; the scale then halves
        scaler.update()
    schedule.step()
    with torch.no_grad():
        score = -episode_mse(logits, ep.query_y) if ep.query_y.is_floating_point() else episode_accuracy(logits, ep.query_y)
    return StepStats(loss.detach(), loss_task.detach(), loss_slct.detach(), score.mean())


def build_optimizer(learner: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam over the learner's parameters; on CUDA the fused kernel (one launch for every parameter
    instead of a few per parameter tensor)."""
    return torch.optim.Adam(learner.parameters(), lr=lr, fused=device.type == "cuda")


def warmup_halving_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, halve_every: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then Lee et al.'s schedule: halve the learning rate every ``halve_every`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 ** (s // halve_every)
    )


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaler; a disabled one (which does nothing) at fp32 and bf16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def episode_seed(base_seed: int, step: int, rank: int, world: int, index: int, batch: int) -> int:
    """A distinct seed for every training episode of every rank and step."""
    return base_seed * 1_000_003_000 + (step * world + rank) * batch + index


@torch.no_grad()
def embed_pool(learner: Learner, source: ImageSource, chunk: int = 4096) -> torch.Tensor:
    """(P, d_model): the encoder's embedding of every sample of the source's image pool (a frozen
    encoder's look-up table)."""
    out = []
    for first in range(0, source.pool_size, chunk):
        ids = torch.arange(first, min(first + chunk, source.pool_size), device=source.device)
        out.append(learner.embedding.embed_x(source.inputs(ids)))
    return torch.cat(out)


# ---- the log window ----------------------------------------------------------------------------------


@dataclass
class TrainLog:
    """What the loop reports every log_every steps (running means over that window)."""

    step: int
    steps: int
    loss: float
    task_loss: float
    slct_loss: float
    accuracy: float  # query accuracy, or -MSE for regression
    episodes_per_s: float
    lr: float


class LogWindow:
    """Sums StepStats over the steps since the last log and turns them into a TrainLog."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sums = StepStats(0.0, 0.0, 0.0, 0.0)
        self.count = 0
        self.tick = time.perf_counter()

    def add(self, stats: StepStats) -> None:
        for name in ("loss", "task_loss", "slct_loss", "score"):
            setattr(self.sums, name, getattr(self.sums, name) + getattr(stats, name))
        self.count += 1

    def average_over_ranks(self, device: torch.device) -> None:
        """Under DDP: replace this rank's sums by the mean over all ranks (every rank must call it at the
        same step), so a log reports the global batch, as one process with that batch would."""
        sums = [self.sums.loss, self.sums.task_loss, self.sums.slct_loss, self.sums.score]
        buffer = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in sums])
        dist.all_reduce(buffer)
        buffer /= dist.get_world_size()
        self.sums = StepStats(*buffer.tolist())

    def check_finite(self, step: int) -> None:
        """Raise FloatingPointError if a loss of this window was NaN or infinite (the run has diverged)."""
        if self.count and not math.isfinite(float(self.sums.loss)):
            raise FloatingPointError(f"the loss became {float(self.sums.loss)} by step {step}; try a lower --lr")

    def flush(self, step: int, steps: int, episodes_per_step: int, lr: float) -> TrainLog:
        """The means since the last flush (or creation), then start a new window."""
        self.check_finite(step)
        self.sums = StepStats(*(float(v) for v in (self.sums.loss, self.sums.task_loss, self.sums.slct_loss, self.sums.score)))
        n = max(self.count, 1)
        elapsed = time.perf_counter() - self.tick
        log = TrainLog(
            step=step, steps=steps, loss=self.sums.loss / n, task_loss=self.sums.task_loss / n,
            slct_loss=self.sums.slct_loss / n, accuracy=self.sums.score / n,
            episodes_per_s=self.count * episodes_per_step / max(elapsed, 1e-9), lr=lr,
        )
        self._reset()
        return log


# ---- the loop ----------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One step's input: the episodes, the frozen encoder's table (or None), the anytime query ends
    (or None) and the episodes' embedding rotations (or None); what ``meta_train_step`` takes besides the
    optimizer."""

    episodes: Episode
    table: Tensor | None = None
    query_end: Tensor | None = None
    rotation: Tensor | None = None


@dataclass
class LoopSetup:
    """What a recipe's setup hands the loop. ``model``: what the step calls (the learner, or its DDP
    wrapper); ``params``: those whose gradient norm is clipped; ``batch_size``: episodes per step and
    process; ``checkpoint_every``: 0 for no periodic saves; ``max_minutes``: 0 for no time limit."""

    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    start_step: int
    steps: int
    batch_size: int
    log_every: int
    grad_clip: float
    slct_lambda: float
    checkpoint_every: int = 0
    max_minutes: float = 0.0
    rank: int = 0
    world: int = 1

    def training_state(self, step: int) -> dict[str, Any]:
        """What resuming after ``step`` steps needs (``training_state``)."""
        return training_state(self.optimizer, self.schedule, self.scaler, step)


def training_state(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
                   scaler: torch.amp.GradScaler, step: int) -> dict[str, Any]:
    """What resuming needs: optimizer, schedule, the step reached (and fp16's loss scale)."""
    state: dict[str, Any] = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "step": step}
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def load_training_state(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                        schedule: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler) -> int:
    """Load a saved ``training_state`` into the optimizer, schedule (and scaler); the step to go on from."""
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    if scaler.is_enabled() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return int(state["step"])


@dataclass
class LoopResult:
    """How the loop ended: ``done`` steps taken in all, the last log (None if none was made), and whether
    a stop (Ctrl-C, SIGTERM) was asked for."""

    done: int
    last_log: TrainLog | None
    stopped: bool


def run_loop(
    setup: LoopSetup,
    next_batch: Callable[[int], Batch],
    save: Callable[[int, TrainLog | None], None] | None = None,
    on_log: Callable[[TrainLog], None] | None = None,
) -> LoopResult:
    """Steps setup.start_step .. setup.steps - 1: ``next_batch(step)``, one meta_train_step, a log every
    log_every steps and at the last (averaged over ranks under DDP; ``on_log`` on rank 0), ``save(done, last log)``
    every checkpoint_every steps before the last (never for a diverged run). Stops early after
    max_minutes or on a stop request (``interrupt.stop_requested``). The recipe saves its final file: the
    loop raises FloatingPointError first if the last steps' loss was not finite."""
    s = setup
    window = LogWindow()
    last_log: TrainLog | None = None
    started = time.perf_counter()
    done, stopped = s.start_step, False
    for step in range(s.start_step, s.steps):
        batch = next_batch(step)
        stats = meta_train_step(
            s.model, batch.episodes, s.optimizer, s.schedule, s.params, s.slct_lambda, s.grad_clip, s.precision,
            batch.table, step, batch.query_end, s.scaler, batch.rotation,
        )
        window.add(stats)
        done = step + 1
        if done % s.log_every == 0 or done == s.steps:
            if s.world > 1:
                window.average_over_ranks(s.device)
            last_log = window.flush(done, s.steps, s.batch_size * s.world, s.schedule.get_last_lr()[0])
            if on_log is not None and s.rank == 0:
                on_log(last_log)
        if save is not None and s.checkpoint_every and done % s.checkpoint_every == 0 and done != s.steps:
            window.check_finite(done)  # never save a diverged run over a good checkpoint
            save(done, last_log)
        if s.max_minutes > 0 and _out_of_time(started, s.max_minutes, s.world, s.device):
            break
        if stop_requested(s.world, s.device):  # Ctrl-C / SIGTERM (training.interrupt): the recipe saves, then stops
            stopped = True
            break
    window.check_finite(done)
    return LoopResult(done, last_log, stopped)


def _out_of_time(started: float, max_minutes: float, world: int, device: torch.device) -> bool:
    """True once max_minutes have passed; under DDP every rank follows rank 0's clock."""
    over = torch.tensor([float(time.perf_counter() - started > 60 * max_minutes)], device=device)
    if world > 1:
        dist.broadcast(over, src=0)
    return bool(over.item())
