"""Meta-training: many episodes of the meta-train split, cross-entropy on queries + lambda * l_slct.

Runs on the CPU or one GPU, or on several under torchrun (DDP; NCCL on GPUs, gloo on CPUs). Each rank
draws its own episodes (seeds never overlap), so a global batch is batch_size * world_size episodes.
Checkpoints are written every ``checkpoint_every`` steps and at the end; ``resume`` picks up from the
last one, optimizer and schedule included. A recipe (``MetaTraining``): setup here, the loop shared with
adaptation (training/loop.py), then the final checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mclstudio.choices import OBJECTIVES
from mclstudio.data import EpisodeSpec, ImageSource, ShapeRange, get_source
from mclstudio.data.layout import example_tasks
from mclstudio.learners.base import Learner
from mclstudio.learners.registry import LEARNERS, build_learner, make_config
from mclstudio.store.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mclstudio.store.device import resolve_device
from mclstudio.training.anytime import anytime_generator, sample_query_end
from mclstudio.training.interrupt import TrainingInterrupted
from mclstudio.training.loop import (
    Batch,
    LoopSetup,
    TrainLog,
    build_optimizer,
    check_train_precision,
    embed_pool,
    episode_seed,
    grad_scaler,
    load_training_state,
    precision_from_config,
    run_loop,
    training_precision,
    warmup_halving_schedule,
)
from mclstudio.training.pretrain import pretrain_encoder
from mclstudio.training.rotation import RotationBank

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
    precision: str = "auto"  # fp32, bf16 or fp16 (autocast); auto: bf16 on CUDA, fp32 on the CPU
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
    # the share of episodes whose frozen embeddings get a random rotation (training/rotation.py)
    rotate_embeddings: float = 0.0
    init_from: str | None = None  # start from this checkpoint's weights (fresh optimizer, no pre-training)
    compile: bool = True  # on CUDA, the training pass's elementwise hot spots through torch.compile
    learner: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_train_precision(self.precision)
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
        if not 0.0 <= self.rotate_embeddings <= 1.0:
            raise ValueError(f"the rotated share of episodes must be in [0, 1], not {self.rotate_embeddings}")
        if self.rotate_embeddings > 0 and (self.frozen_encoder_steps < self.steps or self.augment or self.noise_std > 0):
            raise ValueError(
                "rotated embeddings need a frozen encoder's table for the whole run: "
                "--frozen-encoder-steps at least --steps, and no --augment or --noise"
            )
        if self.init_from and not Path(self.init_from).is_file():
            raise ValueError(f"checkpoint not found: {self.init_from} (--init-from)")
        if self.tasks_range is not None or self.shots_range is not None:
            self.shapes().validate()  # (the fixed shape is checked by its EpisodeSpec)

    def shapes(self) -> ShapeRange:
        """The distribution of training episode shapes (a single shape without the ranges)."""
        tasks = tuple(self.tasks_range) if self.tasks_range else (self.tasks, self.tasks)
        shots = tuple(self.shots_range) if self.shots_range else (self.train_shots, self.train_shots)
        return ShapeRange(tasks[0], tasks[1], shots[0], shots[1])

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainConfig:
        """A stored train_config (a checkpoint's metadata); an older one's ``amp`` read as its precision."""
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{**{k: v for k, v in d.items() if k in known}, "precision": precision_from_config(d)})


def _load_weights_into(learner: Learner, path: str | Path, device: torch.device, verb: str,
                       with_training_state: bool = False) -> Checkpoint:
    """Load ``path``'s weights into ``learner`` (resuming a run, or starting one from a checkpoint);
    ValueError when it holds another learner config. The loaded checkpoint."""
    ckpt = load_checkpoint(path, device=device, with_training_state=with_training_state)
    if ckpt.learner.config.to_dict() != learner.config.to_dict():
        raise ValueError(f"cannot {verb} from {path}: it holds a different learner config")
    learner.load_state_dict(ckpt.learner.state_dict())
    return ckpt


def _distributed_context() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def build_for_data(cfg: TrainConfig, source_x_shape: tuple[int, ...], y_dim: int) -> Learner:
    """A new learner of cfg's model for data of this input shape and label (or target) size."""
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
    return MetaTraining(cfg, on_pretrain_log).run(on_log)


class MetaTraining:
    """Meta-training as a recipe: ``__init__`` sets up (process group, data, learner, optimizer, resume,
    encoder pre-training, frozen encoder, DDP), ``run`` runs the shared loop and ``save`` writes the
    checkpoint (periodically from the loop, and at the end)."""

    def __init__(self, cfg: TrainConfig, on_pretrain_log: Callable[[int, float, float], None] | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        rank, world, local_rank = _distributed_context()
        device = resolve_device(cfg.device)
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        precision = training_precision(cfg.precision, device)
        self.source = source = get_source(cfg.dataset, root=cfg.root, download=cfg.download).to(device)

        self.learner = learner = build_for_data(cfg, source.x_shape, source.y_dim).to(device)
        num_codes = None if learner.config.is_regression else learner.config.y_vocab
        self.base_spec = EpisodeSpec(
            dataset=cfg.dataset, split="train", tasks=cfg.tasks, train_shots=cfg.train_shots,
            test_shots=cfg.test_shots, seed=0, noise_std=cfg.noise_std, num_codes=num_codes, augment=cfg.augment,
        )
        self.base_spec.validate()
        source.episode(self.base_spec)  # fail early (too many tasks, too few samples) before any training
        self.shapes = cfg.shapes()  # sampled per step when a range is given, else every step is base_spec's shape
        self.sampled_shapes = cfg.tasks_range is not None or cfg.shots_range is not None
        source.episode(replace(self.base_spec, tasks=self.shapes.max_tasks, train_shots=self.shapes.max_shots))

        optimizer = build_optimizer(learner, cfg.lr, device)
        schedule = warmup_halving_schedule(optimizer, cfg.warmup_steps, cfg.lr_halve_every)
        scaler = grad_scaler(precision, device)
        start_step = 0
        self.previous_metrics: dict[str, Any] = {}
        self.out = Path(cfg.out)
        resuming = cfg.resume and self.out.exists()
        if resuming:
            ckpt = _load_weights_into(learner, self.out, device, "resume", with_training_state=True)
            if ckpt.training_state:
                start_step = load_training_state(ckpt.training_state, optimizer, schedule, scaler)
                self.previous_metrics = dict(ckpt.metadata.get("final_metrics", {}))
        elif cfg.init_from:
            _load_weights_into(learner, cfg.init_from, device, "start")
        self.pretrain_accuracy = None
        if cfg.pretrain_steps > 0 and start_step == 0 and not cfg.init_from:
            self.pretrain_accuracy = pretrain_encoder(
                learner.embedding, source, self.base_spec, cfg.pretrain_steps, cfg.batch_size, cfg.lr, cfg.seed + rank,
                on_pretrain_log if rank == 0 else None,
            )

        # A frozen encoder's embedding of a sample never changes: embed the image pool once and look the
        # stream and queries up, so these steps cost the sequence model alone (images only, no input noise).
        # Augmented images are new every episode: the frozen encoder runs on them (no table).
        self.frozen_table = None
        self.frozen_encoder = (
            cfg.frozen_encoder_steps > start_step and isinstance(source, ImageSource) and cfg.noise_std == 0
        )
        if self.frozen_encoder:
            self.frozen_table = None if cfg.augment else embed_pool(learner, source)  # type: ignore[arg-type]
            learner.embedding.x_encoder.requires_grad_(False)
        self.rotations = None
        if cfg.rotate_embeddings > 0:
            if self.frozen_table is None:
                raise ValueError(f"rotated embeddings need an image dataset's frozen encoder; {cfg.dataset} has none")
            self.rotations = RotationBank(self.frozen_table.shape[1], cfg.rotate_embeddings, cfg.seed, device)

        if cfg.compile and device.type == "cuda":
            learner.compile_training()

        model: torch.nn.Module = learner
        if world > 1:
            model = DistributedDataParallel(
                learner, device_ids=[local_rank] if device.type == "cuda" else None,
                find_unused_parameters=self.frozen_encoder,
            )
        self.loop = LoopSetup(
            model=model, params=list(learner.parameters()), optimizer=optimizer, schedule=schedule, scaler=scaler,
            device=device, precision=precision, start_step=start_step, steps=cfg.steps, batch_size=cfg.batch_size,
            log_every=cfg.log_every, grad_clip=cfg.grad_clip, slct_lambda=cfg.slct_lambda,
            checkpoint_every=cfg.checkpoint_every, max_minutes=cfg.max_minutes, rank=rank, world=world,
        )

    def next_batch(self, step: int) -> Batch:
        """This rank's episodes of ``step`` (their shape sampled when ranges are given), the frozen
        encoder's table until its last frozen step, and the anytime objective's query ends."""
        cfg, loop = self.cfg, self.loop
        step_spec = self.shapes.apply(self.base_spec, cfg.seed, step) if self.sampled_shapes else self.base_spec
        specs = [
            step_spec.with_seed(episode_seed(cfg.seed, step, loop.rank, loop.world, i, cfg.batch_size))
            for i in range(cfg.batch_size)
        ]
        episodes = self.source.batch(specs)
        if self.frozen_encoder and step >= cfg.frozen_encoder_steps:
            self.frozen_encoder, self.frozen_table = False, None
            self.learner.embedding.x_encoder.requires_grad_(True)
        query_end = None
        if cfg.objective == "anytime":
            generator = anytime_generator(cfg.seed, step)
            # from the spec's tasks on the host: the episodes' copies on a GPU would be read back
            query_end = sample_query_end(*example_tasks(step_spec), generator)
        # (validate keeps the frozen table for the whole run when rotating)
        rotation = None if self.rotations is None else self.rotations.draw(step, loop.rank, cfg.batch_size)
        return Batch(episodes, self.frozen_table, query_end, rotation)

    def save(self, step: int, last_log: TrainLog | None) -> None:
        """Write the checkpoint after ``step`` steps, with what resuming needs (rank 0 only)."""
        if self.loop.rank != 0:
            return
        cfg = self.cfg
        metadata = {
            "dataset": cfg.dataset,
            "split": "train",
            "steps": step,
            "train_config": {**asdict(cfg), "learner": dict(cfg.learner), "precision": self.loop.precision},
            "episode_spec": self.base_spec.to_dict(),
            "world_size": self.loop.world,
            "encoder_pretrain_accuracy": self.pretrain_accuracy,
            "final_metrics": asdict(last_log) if last_log else self.previous_metrics,
        }
        save_checkpoint(self.out, self.learner, metadata, training_state=self.loop.training_state(step))

    def run(self, on_log: Callable[[TrainLog], None] | None = None) -> dict[str, Any]:
        """The loop, then the final checkpoint; the final metrics. TrainingInterrupted after saving when
        a stop was asked for."""
        self.learner.train()
        result = run_loop(self.loop, self.next_batch, self.save, on_log)
        self.save(result.done, result.last_log)
        if self.loop.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        if result.stopped:
            raise TrainingInterrupted(str(self.out), result.done)
        return asdict(result.last_log) if result.last_log else self.previous_metrics
