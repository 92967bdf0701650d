"""Files the studio writes besides recordings: exports into --record-dir under a new name, never
replacing a file, and the one-line reasons shown when writing fails."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mclstudio.recording.playback import Frame


def one_line(exc: BaseException) -> str:
    """An exception as one short line for a notification (never a traceback)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def unwritable_folder(folder: Path) -> str | None:
    """Why the studio cannot write into ``folder`` (checked before a write), or None when it can."""
    if not folder.is_dir():
        return f"folder not found: {folder}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder not writable: {folder}"
    return None


def new_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``stem-2.suffix``, ... when that exists: an export never replaces a file."""
    path, n = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


def write_export(folder: Path, stem: str, suffix: str, text: str) -> Path:
    """Write ``text`` to a new file in ``folder`` (check it first with unwritable_folder); the path
    written. A failed write raises OSError, and a half-written file (a full disk) is removed."""
    path, created = new_path(folder, stem, suffix), False
    try:
        with open(path, "x") as f:  # "x": never replaces a file that appeared meanwhile
            created = True
            f.write(text)
    except OSError:
        if created:
            path.unlink(missing_ok=True)
        raise
    return path


def episode_json(frame: Frame, history: dict[str, list[float]], norms: dict[str, list[np.ndarray]]) -> str:
    """The episode so far as JSON: per learner the running accuracy per step (history), the accuracy
    matrix, forgetting, state bytes and the (steps, layers) state norms."""
    out = {
        "episode": frame.episode, "step": frame.step,
        "learners": {
            s.learner: {
                "running_accuracy": [None if np.isnan(v) else v for v in history[s.learner]],
                "accuracy_matrix": np.where(np.isnan(s.accuracy_matrix), None, s.accuracy_matrix).tolist(),
                "forgetting": None if s.forgetting is None else s.forgetting.tolist(),
                "mean_forgetting": s.mean_forgetting,  # what the panel shows (metrics.mean_forgetting)
                "state_bytes": s.state_bytes,
                "layer_norms": np.stack(norms[s.learner]).tolist(),
            } for s in frame.snapshots
        },
    }
    return json.dumps(out, indent=1)
