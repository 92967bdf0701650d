"""Meta-test evaluation as the papers report it.

Accuracy over the queries of many meta-test episodes (default 512), with a 95% confidence interval
over episodes, in the trained setting and in the settings MambaCL uses to probe generalisation:
longer streams (2x and 5x more tasks), more shots, Gaussian input noise, and another domain.
Evaluation episodes use seeds EVAL_SEED_BASE + i, so every checkpoint sees the same episodes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from mclstudio.data import DataError, EpisodeSource, EpisodeSpec, get_source
from mclstudio.learners.base import Learner
from mclstudio.metrics import episode_accuracy, episode_mse, mean_ci95
from mclstudio.precision import autocast
from mclstudio.store.device import learner_device

EVAL_SEED_BASE = 10_000_000


@dataclass
class Setting:
    """One evaluation row: a name and the episode spec (its seed is replaced per episode)."""

    name: str
    spec: EpisodeSpec


@dataclass
class SettingResult:
    name: str
    dataset: str
    tasks: int
    train_shots: int
    noise_std: float
    episodes: int
    metric: str  # "accuracy" or "mse"
    mean: float
    ci95: float
    episodes_per_s: float
    skipped: str = ""  # why the setting could not run (e.g. too few classes), else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trained_spec(metadata: dict[str, Any], num_codes: int | None) -> EpisodeSpec:
    """The meta-test counterpart of the spec a checkpoint was trained on."""
    spec = EpisodeSpec.from_dict(metadata.get("episode_spec", {}))
    return replace(spec, split="test", seed=0, noise_std=0.0, num_codes=num_codes, augment=False)


def paper_settings(base: EpisodeSpec, noise_levels: tuple[float, ...] = (0.5, 1.0)) -> list[Setting]:
    """Trained setting, 2x and 5x more tasks, 2x more shots, and input noise."""
    settings = [
        Setting("trained", base),
        Setting("2x tasks", replace(base, tasks=2 * base.tasks)),
        Setting("5x tasks", replace(base, tasks=5 * base.tasks)),
        Setting("2x shots", replace(base, train_shots=2 * base.train_shots)),
    ]
    settings += [Setting(f"noise {s:g}", replace(base, noise_std=s)) for s in noise_levels]
    return settings


@torch.no_grad()
def evaluate_setting(
    learner: Learner,
    source: EpisodeSource,
    setting: Setting,
    episodes: int = 512,
    batch_size: int = 64,
    precision: str = "fp32",
) -> SettingResult:
    """Evaluate one setting at ``precision`` (fp32, or bf16/fp16 autocast: ``mclstudio.precision``).
    A setting the data cannot supply comes back with ``skipped`` set."""
    spec = setting.spec
    metric = "mse" if learner.config.is_regression else "accuracy"
    row = SettingResult(
        setting.name, spec.dataset, spec.tasks, spec.train_shots, spec.noise_std, 0, metric, float("nan"),
        float("nan"), 0.0,
    )
    if metric == "accuracy" and spec.codes > learner.config.y_vocab:
        return replace(row, skipped=f"{spec.tasks} tasks exceed the learner's {learner.config.y_vocab} label codes")
    try:
        source.episode(spec)
    except DataError as exc:
        return replace(row, skipped=str(exc))
    device = learner_device(learner)
    learner.eval()
    scores: list[np.ndarray] = []
    start = time.perf_counter()
    for first in range(0, episodes, batch_size):
        specs = [spec.with_seed(EVAL_SEED_BASE + i) for i in range(first, min(first + batch_size, episodes))]
        ep = source.batch(specs).to(device)
        with autocast(precision, device):
            logits = learner(ep.stream_x, ep.stream_y, ep.query_x).logits.float()  # scored in float32
        score = episode_mse(logits, ep.query_y) if metric == "mse" else episode_accuracy(logits, ep.query_y)
        scores.append(score.cpu().numpy())
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    mean, ci = mean_ci95(np.concatenate(scores))
    return replace(row, episodes=episodes, mean=mean, ci95=ci, episodes_per_s=episodes / max(elapsed, 1e-9))


def evaluate_checkpoint(
    learner: Learner,
    metadata: dict[str, Any],
    episodes: int = 512,
    batch_size: int = 64,
    noise_levels: tuple[float, ...] = (0.5, 1.0),
    domains: tuple[str, ...] = (),
    root: str | None = None,
    download: bool = False,
    precision: str = "fp32",
) -> list[SettingResult]:
    """All paper settings on the checkpoint's own meta-test split, then the trained setting on each
    other domain (another dataset's meta-test classes)."""
    num_codes = None if learner.config.is_regression else learner.config.y_vocab
    base = trained_spec(metadata, num_codes)
    device = learner_device(learner)
    results = []
    source = get_source(base.dataset, root=root, download=download).to(device)
    for setting in paper_settings(base, noise_levels):
        results.append(evaluate_setting(learner, source, setting, episodes, batch_size, precision))
    channels = learner.config.x_shape[0] if len(learner.config.x_shape) == 3 else None
    for domain in domains:
        other = get_source(domain, root=root, download=download, channels=channels).to(device)
        if tuple(other.x_shape) != tuple(learner.config.x_shape):
            raise DataError(f"{domain} gives inputs of shape {other.x_shape}; the learner takes {learner.config.x_shape}")
        results.append(
            evaluate_setting(learner, other, Setting(f"domain {domain}", replace(base, dataset=domain)), episodes, batch_size,
                             precision)
        )
    return results


# ---- the shape grid and the anytime curve (`mclstudio eval --grid`) ----

GRID_TASKS = (5, 10, 20, 40, 100)
GRID_SHOTS = (1, 2, 5, 10)
ANYTIME_SHAPE = (20, 5)  # tasks x shots of the stream the anytime curve follows


@dataclass
class AnytimeCurve:
    """Accuracy on the tasks seen after each task of one stream shape: mean[k] and ci95[k] after k + 1
    tasks, over ``episodes`` episodes (the grid's seeds). ``skipped`` says why it could not run."""

    tasks: int
    shots: int
    episodes: int
    mean: list[float]
    ci95: list[float]
    skipped: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid_settings(base: EpisodeSpec, tasks: tuple[int, ...], shots: tuple[int, ...]) -> list[Setting]:
    """One setting per (tasks, shots) cell, tasks-major, named "TxS"."""
    return [Setting(f"{t}x{s}", replace(base, tasks=t, train_shots=s, shots=None)) for t in tasks for s in shots]


@torch.no_grad()
def anytime_curve(
    learner: Learner,
    source: EpisodeSource,
    spec: EpisodeSpec,
    episodes: int = 512,
    batch_size: int = 64,
    precision: str = "fp32",
) -> AnytimeCurve:
    """After each task k of ``spec``'s stream, the accuracy on the queries of tasks 0..k, computed exactly
    by running the learner on the stream's prefix of the first k + 1 tasks (any learner, no state
    access). Same episodes (seeds) as ``evaluate_setting``, so the last point is its accuracy."""
    curve = AnytimeCurve(spec.tasks, spec.train_shots, 0, [], [])
    if learner.config.is_regression:
        return replace(curve, skipped="the anytime curve is for classification")
    if spec.codes > learner.config.y_vocab:
        return replace(curve, skipped=f"{spec.tasks} tasks exceed the learner's {learner.config.y_vocab} label codes")
    try:
        source.episode(spec)
    except DataError as exc:
        return replace(curve, skipped=str(exc))
    device = learner_device(learner)
    learner.eval()
    scores = np.zeros((episodes, spec.tasks))
    stream_end = np.cumsum(spec.task_shots)  # stream examples of the first k + 1 tasks
    for first in range(0, episodes, batch_size):
        specs = [spec.with_seed(EVAL_SEED_BASE + i) for i in range(first, min(first + batch_size, episodes))]
        ep = source.batch(specs).to(device)
        for k in range(spec.tasks):
            n, q = int(stream_end[k]), (k + 1) * spec.test_shots
            with autocast(precision, device):
                logits = learner(ep.stream_x[:, :n], ep.stream_y[:, :n], ep.query_x[:, :q]).logits.float()
            scores[first : first + len(specs), k] = episode_accuracy(logits, ep.query_y[:, :q]).cpu().numpy()
    stats = [mean_ci95(scores[:, k]) for k in range(spec.tasks)]
    return replace(curve, episodes=episodes, mean=[m for m, _ in stats], ci95=[c for _, c in stats])


def evaluate_grid(
    learner: Learner,
    metadata: dict[str, Any],
    tasks: tuple[int, ...] = GRID_TASKS,
    shots: tuple[int, ...] = GRID_SHOTS,
    anytime: tuple[int, int] = ANYTIME_SHAPE,
    episodes: int = 512,
    batch_size: int = 64,
    precision: str = "fp32",
    root: str | None = None,
    download: bool = False,
) -> tuple[list[SettingResult], AnytimeCurve]:
    """Accuracy over the tasks x shots grid on the checkpoint's meta-test split (cells the data or the
    label vocabulary cannot serve come back skipped), and the anytime curve of the ``anytime`` shape."""
    num_codes = None if learner.config.is_regression else learner.config.y_vocab
    base = trained_spec(metadata, num_codes)
    device = learner_device(learner)
    source = get_source(base.dataset, root=root, download=download).to(device)
    cells = [evaluate_setting(learner, source, s, episodes, batch_size, precision) for s in grid_settings(base, tasks, shots)]
    curve_spec = replace(base, tasks=anytime[0], train_shots=anytime[1], shots=None)
    return cells, anytime_curve(learner, source, curve_spec, episodes, batch_size, precision)
