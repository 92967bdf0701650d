"""Adapter files: a learner's low-rank adapters, saved apart from its (frozen, unmodified) base checkpoint.

An adapter file is a small torch.save dict that loads with torch.load(weights_only=True):

    format "mclstudio-adapter", format_version 1, kind "lora"
    rank, alpha            the adapters' rank r and scale numerator (W' = W + alpha / r * B A)
    targets                module paths of the adapted nn.Linear weights (in model order)
    base                   {"sha256", "model", "name"}: the checkpoint it was trained on
    tensors                "<target>.lora_A" (r, in) and "<target>.lora_B" (out, r), float32
    metadata               dataset, episode spec, steps, trainable / base parameter counts, final metrics

Applying it (``apply_adapter``) checks the base's sha256, adds the adapters, loads them and merges them
into the weights: the result is a plain learner, so eval, record, replay --verify and the studio run it
like any other at no extra cost per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import mclstudio
from mclstudio.errors import AdapterError
from mclstudio.formatting import clip
from mclstudio.learners.base import Learner
from mclstudio.learners.lora import (
    add_lora,
    load_lora_tensors,
    lora_tensors,
    merge_lora,
)
from mclstudio.store.checkpoint import (
    ADAPTER_FORMAT,
    Checkpoint,
    CheckpointError,
    file_sha256,
    load_checkpoint,
    read_safely,
    write_payload,
)
from mclstudio.store.checkpoint import FORMAT as CHECKPOINT_FORMAT
from mclstudio.store.device import learner_device

ADAPTER_FORMAT_VERSION = 1


@dataclass
class Adapter:
    """A loaded adapter file."""

    path: Path
    sha256: str
    rank: int
    alpha: float
    targets: list[str]
    base_sha256: str
    base_model: str
    base_name: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def save_adapter(path: str | Path, learner: Learner, base: Checkpoint, rank: int, alpha: float,
                 targets: list[str], metadata: dict[str, Any], training_state: dict[str, Any] | None = None) -> Path:
    """Write the adapters carried by ``learner`` (parametrized, not merged) atomically to ``path``.
    ``training_state`` (optimizer, scheduler, step): what `adapt --resume` needs to continue."""
    path = Path(path)
    payload = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "kind": "lora",
        "rank": rank,
        "alpha": float(alpha),
        "targets": list(targets),
        "base": {"sha256": base.sha256, "model": base.learner.config.model, "name": base.path.name},
        "tensors": lora_tensors(learner),
        "metadata": {**metadata, "mclstudio_version": mclstudio.__version__},
    }
    write_payload(path, payload, training_state)
    return path


def load_adapter(path: str | Path) -> Adapter:
    """Read an adapter file safely (weights_only). Raises AdapterError with a one-line reason."""
    path = Path(path)
    try:
        raw = read_safely(path, "adapter")
    except CheckpointError as exc:
        raise AdapterError(str(exc)) from None
    if raw.get("format") != ADAPTER_FORMAT:
        hint = "; it is a checkpoint (give it as CHECKPOINT)" if raw.get("format") == CHECKPOINT_FORMAT else ""
        raise AdapterError(f"{path} is not an mclstudio adapter (no '{ADAPTER_FORMAT}' format tag){hint}")
    if raw.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise AdapterError(
            f"{path} has adapter format version {raw.get('format_version')}; this mclstudio reads {ADAPTER_FORMAT_VERSION}"
        )
    try:
        base = raw["base"]
        return Adapter(
            path=path, sha256=file_sha256(path), rank=int(raw["rank"]), alpha=float(raw["alpha"]),
            targets=[str(t) for t in raw["targets"]], base_sha256=str(base["sha256"]), base_model=str(base["model"]),
            base_name=str(base["name"]), tensors=dict(raw["tensors"]), metadata=dict(raw.get("metadata", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"{path} is a damaged adapter file (missing or bad {exc})") from None


def apply_adapter(ckpt: Checkpoint, adapter: Adapter) -> Checkpoint:
    """The checkpoint with the adapter merged into its learner (in place) and recorded on it. The adapter
    must have been trained on exactly this checkpoint file (same sha256)."""
    if adapter.base_sha256 != ckpt.sha256:
        raise AdapterError(_wrong_base(adapter, ckpt))
    if ckpt.adapter_path is not None:
        raise AdapterError(f"{ckpt.path} already has the adapter {ckpt.adapter_path}")
    learner = ckpt.learner
    device = learner_device(learner)
    try:
        add_lora(learner, adapter.targets, adapter.rank, adapter.alpha)
        load_lora_tensors(learner, {k: v.to(device) for k, v in adapter.tensors.items()})
    except (ValueError, AttributeError) as exc:
        raise AdapterError(f"{adapter.path} does not fit {ckpt.path}: {clip(str(exc))}") from None
    merge_lora(learner)
    learner.requires_grad_(False)
    ckpt.adapter_path, ckpt.adapter_sha256 = adapter.path, adapter.sha256
    return ckpt


def load_learners(
    checkpoints: list[str] | tuple[str, ...], adapters: list[str] | tuple[str, ...] = (),
    device: str | torch.device = "cpu",
) -> list[Checkpoint]:
    """Load checkpoints and apply adapters on top: the one loader of eval, record and open.

    Each adapter goes to the first given checkpoint it was trained on (same sha256) that has no adapter
    yet, so ``mamba.pt mamba.pt --adapter A`` shows the base and the adapted learner side by side (the
    first copy is adapted). An adapter that fits none of them is an AdapterError."""
    loaded = [load_checkpoint(c, device=device) for c in checkpoints]
    for path in adapters:
        adapter = load_adapter(path)
        free = [c for c in loaded if c.adapter_path is None]
        match = next((c for c in free if c.sha256 == adapter.base_sha256), None)
        if match is not None:
            apply_adapter(match, adapter)
        elif any(c.sha256 == adapter.base_sha256 for c in loaded):
            raise AdapterError(f"{adapter.path}: its base checkpoint already has an adapter; give the checkpoint twice")
        elif len(loaded) == 1:
            raise AdapterError(_wrong_base(adapter, loaded[0]))
        else:
            raise AdapterError(
                f"{adapter.path} adapts {adapter.base_name} (sha256 {adapter.base_sha256[:12]}), which is not among "
                "the checkpoints given"
            )
    return loaded


def _wrong_base(adapter: Adapter, ckpt: Checkpoint) -> str:
    return (
        f"{adapter.path} adapts {adapter.base_name} ({adapter.base_model}, sha256 {adapter.base_sha256[:12]}), "
        f"not {ckpt.path} ({ckpt.learner.config.model}, sha256 {ckpt.sha256[:12]})"
    )
