"""Meta-training: many episodes of the meta-train split, cross-entropy on queries + lambda * l_slct.

Runs on the CPU or one GPU, or on several under torchrun (DDP; NCCL on GPUs, gloo on CPUs). Each rank
draws its own episodes (seeds never overlap), so a global batch is batch_size * world_size episodes.
Checkpoints are written every ``checkpoint_every`` steps and at the end; ``resume`` picks up from the
last one, optimizer and schedule included.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from mclstudio.data import Episode, EpisodeSpec, ImageSource, ShapeRange, get_source
from mclstudio.learners.base import Learner
from mclstudio.learners.registry import LEARNERS, build_learner, make_config
from mclstudio.metrics import episode_accuracy, episode_mse
from mclstudio.training.anytime import OBJECTIVES, anytime_generator, sample_query_end
from mclstudio.store.checkpoint import load_checkpoint, save_checkpoint
from mclstudio.store.device import resolve_device
from mclstudio.training.interrupt import TrainingInterrupted, stop_requested
from mclstudio.training.losses import selectivity_kl, task_loss
from mclstudio.training.pretrain import pretrain_encoder


@dataclass
class TrainConfig:
    """Everything a meta-training run depends on. ``learner`` overrides the model's default config
    (d_model, n_layers, d_state, n_heads, ...); x_shape and the label/target sizes come from the data."""

    model: str = "mamba"
    dataset: str = "omniglot-mini"
    root: str | None = None
    download: bool = False
    tasks: int = 20
    train_shots: int = 5
    test_shots: int = 5
    noise_std: float = 0.0
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    lr_halve_every: int = 10000
    warmup_steps: int = 100
    grad_clip: float = 1.0
    slct_lambda: float = 0.1
    objective: str = "anytime"  # "anytime": each query after a random task boundary at or after its task; "end"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    checkpoint_every: int = 500
    log_every: int = 25
    out: str = "checkpoints/model.pt"
    resume: bool = False
    pretrain_steps: int = 0  # prototypical pre-training of the encoder first (see pretrain.py)
    frozen_encoder_steps: int = 0  # then this many meta-training steps with the encoder frozen
    max_minutes: float = 0.0  # stop early (with a checkpoint) after this long; 0 = no limit
    # Episode shapes: each step samples tasks in tasks_range and each task's shots in shots_range
    # (None: the fixed tasks / train_shots above, which stay the checkpoint's nominal shape for eval).
    tasks_range: tuple[int, int] | None = None
    shots_range: tuple[int, int] | None = None
    augment: bool = False  # class-level augmentation of the meta-train images (data/augmentation.py)
    learner: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.model not in LEARNERS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(LEARNERS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.frozen_encoder_steps < 0:
            raise ValueError(f"frozen encoder steps must be >= 0, not {self.frozen_encoder_steps}")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain steps must be >= 0, not {self.pretrain_steps}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "lr_halve_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, not {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup steps must be >= 0, not {self.warmup_steps}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, not {self.lr}")
        if self.slct_lambda < 0:
            raise ValueError(f"selectivity lambda must be >= 0, not {self.slct_lambda}")
        if self.tasks_range is not None or self.shots_range is not None:
            self.shapes().validate()  # (the fixed shape is checked by its EpisodeSpec)

    def shapes(self) -> ShapeRange:
        """The distribution of training episode shapes (a single shape without the ranges)."""
        tasks = tuple(self.tasks_range) if self.tasks_range else (self.tasks, self.tasks)
        shots = tuple(self.shots_range) if self.shots_range else (self.train_shots, self.train_shots)
        return ShapeRange(tasks[0], tasks[1], shots[0], shots[1])

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in d.items() if k in known})


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


@dataclass
class StepStats:
    """One optimisation step's losses and its mean query score (accuracy, or -MSE for regression).
    Zero-dim tensors on the training device: reading them waits for the GPU, so the loop only reads
    them when it logs (a step then never stalls the host on the device)."""

    loss: Tensor | float
    task_loss: Tensor | float
    slct_loss: Tensor | float
    score: Tensor | float


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


def meta_train_step(
    model: torch.nn.Module,
    ep: Episode,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    slct_lambda: float,
    grad_clip: float,
    use_amp: bool,
    table: torch.Tensor | None = None,
    step: int = 0,
    query_end: torch.Tensor | None = None,
) -> StepStats:
    """One step on a batch of episodes: CE (or MSE) on the queries + slct_lambda * l_slct, backward, clip
    ``params``' gradient norm, optimizer and schedule step. ``table`` (P, d_model): look the inputs up as
    already-embedded samples (a frozen encoder's pool) instead of running the encoder. ``query_end`` (Q,):
    the pairs each query sees (the anytime objective, ``anytime.sample_query_end``); None: all."""
    if table is not None:
        stream_x, query_x = table[ep.stream_sample_ids()], table[ep.test_sample_ids.flatten(1)]
    else:
        stream_x, query_x = ep.stream_x, ep.query_x
    with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext():
        logits, rows = model(
            stream_x, ep.stream_y, query_x, with_rows=slct_lambda > 0, embedded=table is not None, query_end=query_end
        )
        loss_task = task_loss(logits, ep.query_y)
        loss_slct = (
            selectivity_kl(rows, ep.stream_task, ep.query_task, query_end) if rows is not None else loss_task.new_zeros(())
        )
        loss = loss_task + slct_lambda * loss_slct
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:  # else nothing is left to train (ProtoNet on a frozen encoder): the step only reports
        loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
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


def episode_seed(base_seed: int, step: int, rank: int, world: int, index: int, batch: int) -> int:
    """A distinct seed for every training episode of every rank and step."""
    return base_seed * 1_000_003_000 + (step * world + rank) * batch + index


def _distributed_context() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _out_of_time(started: float, max_minutes: float, world: int, device: torch.device) -> bool:
    """True once max_minutes have passed; under DDP every rank follows rank 0's clock."""
    over = torch.tensor([float(time.perf_counter() - started > 60 * max_minutes)], device=device)
    if world > 1:
        dist.broadcast(over, src=0)
    return bool(over.item())


@torch.no_grad()
def embed_pool(learner: Learner, source: ImageSource, chunk: int = 4096) -> torch.Tensor:
    """(P, d_model): the encoder's embedding of every sample of the source's image pool."""
    out = []
    for first in range(0, source.pool_size, chunk):
        ids = torch.arange(first, min(first + chunk, source.pool_size), device=source.device)
        out.append(learner.embedding.embed_x(source.inputs(ids)))
    return torch.cat(out)


def build_for_data(cfg: TrainConfig, source_x_shape: tuple[int, ...], y_dim: int) -> Learner:
    overrides = dict(cfg.learner)
    overrides["x_shape"] = tuple(source_x_shape)
    if y_dim > 0:
        overrides.update(y_vocab=0, y_dim=y_dim)
    else:
        most = max(cfg.tasks, cfg.shapes().max_tasks)
        overrides.setdefault("y_vocab", max(100, most))
        if overrides["y_vocab"] < most:
            raise ValueError(f"{most} tasks need at least {most} label codes (y_vocab)")
    torch.manual_seed(cfg.seed)
    return build_learner(make_config(cfg.model, **overrides))


def train(
    cfg: TrainConfig,
    on_log: Callable[[TrainLog], None] | None = None,
    on_pretrain_log: Callable[[int, float, float], None] | None = None,
) -> dict[str, Any]:
    """Meta-train a learner as ``cfg`` says; returns the final metrics. Writes cfg.out (rank 0 only).
    on_log gets a TrainLog every log_every steps; on_pretrain_log(step, loss, accuracy) reports
    encoder pre-training."""
    cfg.validate()
    rank, world, local_rank = _distributed_context()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    source = get_source(cfg.dataset, root=cfg.root, download=cfg.download).to(device)

    learner = build_for_data(cfg, source.x_shape, source.y_dim).to(device)
    num_codes = None if learner.config.is_regression else learner.config.y_vocab
    base_spec = EpisodeSpec(
        dataset=cfg.dataset, split="train", tasks=cfg.tasks, train_shots=cfg.train_shots,
        test_shots=cfg.test_shots, seed=0, noise_std=cfg.noise_std, num_codes=num_codes, augment=cfg.augment,
    )
    base_spec.validate()
    source.episode(base_spec)  # fail early (too many tasks, too few samples) before any training
    shapes = cfg.shapes()  # sampled per step when a range is given, else every step is base_spec's shape
    sampled_shapes = cfg.tasks_range is not None or cfg.shots_range is not None
    source.episode(replace(base_spec, tasks=shapes.max_tasks, train_shots=shapes.max_shots))  # the largest shape

    optimizer = build_optimizer(learner, cfg.lr, device)
    schedule = warmup_halving_schedule(optimizer, cfg.warmup_steps, cfg.lr_halve_every)
    start_step = 0
    previous_metrics: dict[str, Any] = {}
    out = Path(cfg.out)
    if cfg.resume and out.exists():
        ckpt = load_checkpoint(out, device=device, with_training_state=True)
        if ckpt.learner.config.to_dict() != learner.config.to_dict():
            raise ValueError(f"cannot resume from {out}: it holds a different learner config")
        learner.load_state_dict(ckpt.learner.state_dict())
        if ckpt.training_state:
            optimizer.load_state_dict(ckpt.training_state["optimizer"])
            schedule.load_state_dict(ckpt.training_state["scheduler"])
            start_step = int(ckpt.training_state["step"])
            previous_metrics = dict(ckpt.metadata.get("final_metrics", {}))

    pretrain_accuracy = None
    if cfg.pretrain_steps > 0 and start_step == 0:
        pretrain_accuracy = pretrain_encoder(
            learner.embedding, source, base_spec, cfg.pretrain_steps, cfg.batch_size, cfg.lr, cfg.seed + rank,
            on_pretrain_log if rank == 0 else None,
        )

    # A frozen encoder's embedding of a sample never changes: embed the image pool once and look the
    # stream and queries up, so these steps cost the sequence model alone (images only, no input noise).
    # Augmented images are new every episode: the frozen encoder runs on them (no table).
    frozen_table = None
    frozen_encoder = cfg.frozen_encoder_steps > start_step and isinstance(source, ImageSource) and cfg.noise_std == 0
    if frozen_encoder:
        frozen_table = None if cfg.augment else embed_pool(learner, source)
        learner.embedding.x_encoder.requires_grad_(False)

    model: torch.nn.Module = learner
    if world > 1:
        model = DistributedDataParallel(
            learner, device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=frozen_encoder,
        )
    use_amp = cfg.amp and device.type == "cuda"
    window = LogWindow()
    last_log: TrainLog | None = None

    def metadata(step: int) -> dict[str, Any]:
        return {
            "dataset": cfg.dataset,
            "split": "train",
            "steps": step,
            "train_config": {**asdict(cfg), "learner": dict(cfg.learner)},
            "episode_spec": base_spec.to_dict(),
            "world_size": world,
            "encoder_pretrain_accuracy": pretrain_accuracy,
            "final_metrics": asdict(last_log) if last_log else previous_metrics,
        }

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_checkpoint(
                out, learner, metadata(step),
                training_state={"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "step": step},
            )

    learner.train()
    started = time.perf_counter()
    done = start_step
    interrupted = False
    for step in range(start_step, cfg.steps):
        step_spec = shapes.apply(base_spec, cfg.seed, step) if sampled_shapes else base_spec
        specs = [
            step_spec.with_seed(episode_seed(cfg.seed, step, rank, world, i, cfg.batch_size))
            for i in range(cfg.batch_size)
        ]
        ep = source.batch(specs)
        if frozen_encoder and step >= cfg.frozen_encoder_steps:
            frozen_encoder, frozen_table = False, None
            learner.embedding.x_encoder.requires_grad_(True)
        query_end = None
        if cfg.objective == "anytime":
            generator = anytime_generator(cfg.seed, step)
            query_end = sample_query_end(ep.stream_task, ep.query_task, generator).to(device)
        stats = meta_train_step(
            model, ep, optimizer, schedule, list(learner.parameters()), cfg.slct_lambda, cfg.grad_clip, use_amp,
            frozen_table, step, query_end,
        )
        window.add(stats)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            if world > 1:
                window.average_over_ranks(device)
            last_log = window.flush(done, cfg.steps, cfg.batch_size * world, schedule.get_last_lr()[0])
            if on_log is not None and rank == 0:
                on_log(last_log)
        if done % cfg.checkpoint_every == 0 and done != cfg.steps:
            window.check_finite(done)  # never save a diverged run over a good checkpoint
            checkpoint(done)
        if cfg.max_minutes > 0 and _out_of_time(started, cfg.max_minutes, world, device):
            break
        if stop_requested(world, device):  # Ctrl-C / SIGTERM (training.interrupt): save below, then stop
            interrupted = True
            break
    window.check_finite(done)
    checkpoint(done)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if interrupted:
        raise TrainingInterrupted(str(out), done)
    return asdict(last_log) if last_log else previous_metrics

