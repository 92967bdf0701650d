"""Checkpoints: one .pt file with the learner's config, state_dict and metadata.

The file holds only tensors and plain Python values, so it loads with torch.load(weights_only=True);
a file that would need arbitrary unpickling is refused. Writes are atomic (temporary file, then rename),
so a crash mid-save never leaves a half-written checkpoint where the last good one was.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import mclstudio
from mclstudio.errors import CheckpointError
from mclstudio.files import atomic_target
from mclstudio.formatting import clip, error_line
from mclstudio.learners.base import Learner
from mclstudio.learners.registry import build_learner, config_from_dict

FORMAT = "mclstudio-checkpoint"
FORMAT_VERSION = 1
ADAPTER_FORMAT = "mclstudio-adapter"  # adapter files (mclstudio.store.adapters)


@dataclass
class Checkpoint:
    """A loaded checkpoint. adapter_path / adapter_sha256: the adapter file applied on top of it, if any
    (mclstudio.store.adapters.load_learners); its learner then holds the adapted weights."""

    learner: Learner
    metadata: dict[str, Any]
    path: Path
    sha256: str
    training_state: dict[str, Any] | None = None
    adapter_path: Path | None = None
    adapter_sha256: str | None = None

    @property
    def name(self) -> str:
        """The file stem, e.g. "mamba", or "mamba+<adapter stem>" with an adapter applied."""
        return self.path.stem if self.adapter_path is None else f"{self.path.stem}+{self.adapter_path.stem}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_cpu(obj: Any) -> Any:
    """Tensors anywhere in nested dicts/lists moved to the CPU, so a GPU run's file opens anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(
    path: str | Path,
    learner: Learner,
    metadata: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> None:
    """Write learner + metadata (+ optimizer/scheduler/step for resuming) atomically to path."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": learner.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in learner.state_dict().items()},
        "metadata": {**metadata, "mclstudio_version": mclstudio.__version__},
    }
    write_payload(path, payload, training_state)


def write_payload(path: Path, payload: dict[str, Any], training_state: dict[str, Any] | None = None) -> None:
    """torch.save ``payload`` (plus ``training_state``, moved to the CPU, under "training_state") to
    ``path`` atomically, making its folder: the one writer of checkpoints and adapter files. The temporary
    file is removed on any failure (a full disk, Ctrl-C), leaving what was at ``path`` unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if training_state is not None:
        payload = {**payload, "training_state": _to_cpu(training_state)}
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)


def read_safely(path: str | Path, what: str, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict in a torch.save file, loaded with weights_only (no arbitrary unpickling). ``what`` names the
    kind of file in the one-line CheckpointError: "checkpoint" or "adapter"."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{what} path is a folder, not a file: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"{path} is not a readable PyTorch {what} (not a torch.save archive)")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = error_line(exc)
        raise CheckpointError(
            f"{path} needs arbitrary unpickling, which mclstudio refuses for safety ({clip(first, 120)})"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch {what} ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not an mclstudio {what} (it holds a {type(raw).__name__})")
    return raw


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", with_training_state: bool = False
) -> Checkpoint:
    """Load a checkpoint safely (weights_only). Raises CheckpointError with a one-line reason."""
    path = Path(path)
    raw = read_safely(path, "checkpoint", device)
    if raw.get("format") == ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is an adapter, not a checkpoint; apply it to its base with --adapter")
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mclstudio checkpoint (no '{FORMAT}' format tag)")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {raw.get('format_version')}; this mclstudio reads {FORMAT_VERSION}"
        )
    try:
        learner = build_learner(config_from_dict(raw["config"]))
        learner.load_state_dict(raw["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = error_line(exc)
        raise CheckpointError(f"{path} does not match its learner config: {clip(first)}") from None
    learner.to(device).eval()
    return Checkpoint(
        learner=learner,
        metadata=dict(raw.get("metadata", {})),
        path=path,
        sha256=file_sha256(path),
        training_state=raw.get("training_state") if with_training_state else None,
    )
