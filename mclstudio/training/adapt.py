"""Parameter-efficient adaptation (`mclstudio adapt`): meta-train low-rank adapters on a frozen learner's
projections for a new domain, and save them as a small adapter file (mclstudio.store.adapters).

The objective is the base's: cross-entropy on the queries of meta-train episodes of the new domain (its
meta-train classes only) plus the selectivity loss, with the base's weight unless overridden. Only the
adapters train; every base weight stays frozen and the base checkpoint file is only read. With the encoder
frozen (the default), the new domain's image pool is embedded once and looked up, so a step costs the
sequence model alone, as in `train --frozen-encoder-steps`. A recipe like meta-training's: setup here, the
loop both share (training/loop.py), then the adapter file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from mclstudio.data import DataError, EpisodeSpec, ImageSource, get_source
from mclstudio.learners.lora import add_lora, find_targets, load_lora_tensors
from mclstudio.store.adapters import load_adapter, save_adapter
from mclstudio.store.checkpoint import load_checkpoint, read_safely
from mclstudio.store.device import resolve_device
from mclstudio.training.interrupt import TrainingInterrupted
from mclstudio.training.loop import (
    Batch,
    LoopSetup,
    TrainLog,
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

@dataclass
class AdaptConfig:
    """An adaptation run. tasks / train_shots / test_shots 0 mean the base's trained setting;
    out "" means default_adapter_path(). slct_lambda is 0 by default: the base has already learned where to
    look, and on the CPU the association rows double the cost of a Mamba step."""

    checkpoint: str
    dataset: str
    rank: int = 4
    alpha: float = 8.0
    ssm: bool = False  # also adapt dt_proj (Mamba-like learners)
    encoder: bool = False  # also adapt the encoder's final projection (runs the CNN every step)
    tasks: int = 0
    train_shots: int = 0
    test_shots: int = 0
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    lr_halve_every: int = 10000
    grad_clip: float = 1.0
    slct_lambda: float = 0.0
    seed: int = 1
    device: str = "auto"
    precision: str = "auto"  # fp32, bf16 or fp16 (autocast); auto: bf16 on CUDA, fp32 on the CPU
    log_every: int = 25
    root: str | None = None
    download: bool = False
    out: str = ""
    resume: bool = False  # continue from the (interrupted) adapter file at out, optimizer and step included

    def validate(self) -> None:
        check_train_precision(self.precision)
        for name in ("rank", "steps", "batch_size", "log_every", "lr_halve_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, not {getattr(self, name)}")
        for name in ("tasks", "train_shots", "test_shots", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', ' ')} must be >= 0, not {getattr(self, name)}")
        if self.alpha <= 0 or self.lr <= 0:
            raise ValueError(f"alpha and learning rate must be positive, not {self.alpha} and {self.lr}")
        if self.slct_lambda < 0:
            raise ValueError(f"selectivity lambda must be >= 0, not {self.slct_lambda}")

    @staticmethod
    def from_dict(d: dict[str, Any]) -> AdaptConfig:
        """A stored adapt_config (an adapter's metadata); an older one's ``amp`` read as its precision."""
        known = {f.name for f in fields(AdaptConfig)}
        return AdaptConfig(**{**{k: v for k, v in d.items() if k in known}, "precision": precision_from_config(d)})


def default_adapter_path(checkpoint: str | Path, dataset: str, rank: int) -> Path:
    """<checkpoint folder>/adapters/<stem>-<dataset>-r<rank>.pt, with ':' in the dataset name as '-'."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / "adapters" / f"{checkpoint.stem}-{dataset.replace(':', '-')}-r{rank}.pt"


def adapt(cfg: AdaptConfig, on_log: Callable[[TrainLog], None] | None = None) -> dict[str, Any]:
    """Run the adaptation ``cfg`` describes and write the adapter file. Returns the final training
    metrics with the file's path and size, and the trainable and base parameter counts.

    Setup: the frozen base, the new domain's episodes, adapters on the targets, their optimizer (and an
    interrupted run's state); then the loop shared with meta-training; then the adapter file (with what
    resuming needs when the run was stopped early)."""
    cfg.validate()
    device = resolve_device(cfg.device)
    precision = training_precision(cfg.precision, device)
    base = load_checkpoint(cfg.checkpoint, device=device)
    learner = base.learner
    x_shape = tuple(learner.config.x_shape)
    source = get_source(cfg.dataset, cfg.root, cfg.download, channels=x_shape[0] if len(x_shape) == 3 else None)
    source = source.to(device)
    if tuple(source.x_shape) != x_shape:
        raise DataError(f"{cfg.dataset} gives inputs of shape {source.x_shape}; the learner takes {x_shape}")
    trained = EpisodeSpec.from_dict(base.metadata.get("episode_spec", {}))
    spec = replace(
        trained, dataset=cfg.dataset, split="train", seed=0, noise_std=0.0, augment=False,
        tasks=cfg.tasks or trained.tasks, train_shots=cfg.train_shots or trained.train_shots,
        test_shots=cfg.test_shots or trained.test_shots,
        num_codes=None if learner.config.is_regression else learner.config.y_vocab,
    )
    source.episode(spec)  # fail early (too many tasks, too few samples) before any training

    base_parameters = learner.num_parameters()
    targets = find_targets(learner, ssm=cfg.ssm, encoder=cfg.encoder)
    learner.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the adapters' A are drawn here: a run is a function of its config
    params = add_lora(learner, targets, cfg.rank, cfg.alpha)
    trainable = sum(p.numel() for p in params)
    table = embed_pool(learner, source) if not cfg.encoder and isinstance(source, ImageSource) else None

    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    schedule = warmup_halving_schedule(optimizer, cfg.warmup_steps, cfg.lr_halve_every)
    scaler = grad_scaler(precision, device)
    out = Path(cfg.out) if cfg.out else default_adapter_path(cfg.checkpoint, cfg.dataset, cfg.rank)
    start_step = 0
    if cfg.resume:
        start_step = _resume(out, learner, base.sha256, targets, cfg, optimizer, schedule, scaler)
    loop = LoopSetup(
        model=learner, params=params, optimizer=optimizer, schedule=schedule, scaler=scaler, device=device,
        precision=precision, start_step=start_step, steps=cfg.steps, batch_size=cfg.batch_size,
        log_every=cfg.log_every, grad_clip=cfg.grad_clip, slct_lambda=cfg.slct_lambda,
    )

    def next_batch(step: int) -> Batch:
        specs = [spec.with_seed(episode_seed(cfg.seed, step, 0, 1, i, cfg.batch_size)) for i in range(cfg.batch_size)]
        return Batch(source.batch(specs), table)

    learner.train()
    result = run_loop(loop, next_batch, on_log=on_log)
    learner.eval()

    done = result.done
    final = asdict(result.last_log) if result.last_log else {}
    metadata = {
        "dataset": cfg.dataset, "split": "train", "steps": done, "episode_spec": spec.to_dict(),
        "adapt_config": {**asdict(cfg), "precision": precision}, "trainable_parameters": trainable,
        "base_parameters": base_parameters, "final_metrics": final,
    }
    state = loop.training_state(done) if done < cfg.steps else None
    save_adapter(out, learner, base, cfg.rank, cfg.alpha, targets, metadata, state)
    if done < cfg.steps:
        raise TrainingInterrupted(str(out), done)
    return {**final, "out": str(out), "bytes": out.stat().st_size, "trainable_parameters": trainable,
            "base_parameters": base_parameters, "targets": len(targets)}


def _resume(out: Path, learner: torch.nn.Module, base_sha256: str, targets: list[str], cfg: AdaptConfig,
            optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
            scaler: torch.amp.GradScaler) -> int:
    """Load an interrupted run's adapters, optimizer and schedule from ``out``; the step to continue from."""
    adapter = load_adapter(out)
    if adapter.base_sha256 != base_sha256 or adapter.targets != targets or adapter.rank != cfg.rank:
        raise ValueError(f"cannot resume from {out}: it adapts another base or other targets, or has another rank")
    state = read_safely(out, "adapter").get("training_state")
    if not state:
        raise ValueError(f"cannot resume from {out}: it is a finished adapter (no training state)")
    load_lora_tensors(learner, adapter.tensors)
    return load_training_state(state, optimizer, schedule, scaler)
