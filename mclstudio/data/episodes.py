"""Episodes: the unit a meta-continual learner learns from.

An episode has T tasks, each one new class. The training stream shows S_1 examples of task 1, then
S_2 of task 2, and so on (task-major order; S_t = train_shots for every task unless ``shots`` gives
uneven counts); the queries are S_test further examples of every task.
Each task gets a label code: T distinct codes drawn at random from 0..V-1 (V = ``num_codes``; with
V == T the code is a plain permutation). Everything is a pure function of the spec, its seed included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mclstudio.errors import DataError


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything needed to rebuild one episode exactly.

    dataset: "omniglot-mini", "sine" or "torchvision:<Name>" (e.g. "torchvision:MNIST").
    split: "train" (meta-train classes) or "test" (meta-test classes); the two are disjoint.
    num_codes: size V of the label-code vocabulary (>= tasks); None means V = tasks.
    noise_std: std of Gaussian noise added to every input x (after scaling to [-1, 1]).
    shots: stream shots of each task (length = tasks, uneven allowed); None means train_shots for
        every task. When set, it replaces train_shots (which becomes their maximum).
    augment: class-level augmentation (image sources, meta-train split only): every image of one
        task's class gets the same random transform, drawn from the seed (docs/data.md).
    """

    dataset: str = "omniglot-mini"
    split: str = "test"
    tasks: int = 20
    train_shots: int = 5
    test_shots: int = 5
    seed: int = 0
    noise_std: float = 0.0
    num_codes: int | None = None
    shots: tuple[int, ...] | None = None
    augment: bool = False

    def __post_init__(self) -> None:
        # Canonical form: a tuple of ints (lists come from JSON and HDF5); even shots are stored as
        # train_shots alone, uneven ones with train_shots = their maximum.
        if self.shots is not None:
            shots = tuple(int(s) for s in self.shots)
            valid = len(shots) == self.tasks and min(shots, default=0) >= 1
            object.__setattr__(self, "shots", None if valid and len(set(shots)) == 1 else shots)
            if valid:
                object.__setattr__(self, "train_shots", max(shots))

    @property
    def codes(self) -> int:
        return self.tasks if self.num_codes is None else self.num_codes

    @property
    def task_shots(self) -> tuple[int, ...]:
        """Stream shots of each task, (T,)."""
        return self.shots if self.shots is not None else (self.train_shots,) * self.tasks

    @property
    def max_shots(self) -> int:
        return max(self.task_shots)

    @property
    def stream_length(self) -> int:
        """N, the number of stream examples."""
        return sum(self.task_shots)

    def with_seed(self, seed: int) -> EpisodeSpec:
        return replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EpisodeSpec:
        return EpisodeSpec(**{k: d[k] for k in EpisodeSpec.__dataclass_fields__ if k in d})

    def validate(self) -> None:
        """Raise DataError for requests no source can satisfy."""
        if self.split not in ("train", "test"):
            raise DataError(f"split must be 'train' or 'test', not {self.split!r}")
        if self.tasks < 1:
            raise DataError(f"tasks must be at least 1, not {self.tasks}")
        if self.train_shots < 1:
            raise DataError(f"train shots must be at least 1, not {self.train_shots}")
        if self.shots is not None:
            if len(self.shots) != self.tasks:
                raise DataError(f"{self.tasks} tasks need {self.tasks} per-task shots, not {len(self.shots)}")
            if min(self.shots) < 1:
                raise DataError(f"shots of every task must be at least 1, not {min(self.shots)}")
        if self.augment and self.split != "train":
            raise DataError("augmentation is for the meta-train split only; the meta-test split stays untouched")
        if self.test_shots < 1:
            raise DataError(f"test shots must be at least 1, not {self.test_shots}")
        if self.noise_std < 0:
            raise DataError(f"noise std must be >= 0, not {self.noise_std}")
        if self.codes < self.tasks:
            raise DataError(f"{self.tasks} tasks need at least {self.tasks} label codes, not {self.codes}")


@dataclass
class Episode:
    """A batch of B episodes of one shape (B = 1 for a single episode).

    N = sum of the tasks' stream shots (tasks * train_shots when even), Q = tasks * test_shots queries,
    both task-major.
    x_shape is (C, H, W) for images and (x_dim,) for vectors.

    stream_x:   (B, N, *x_shape) float32 inputs, scaled to [-1, 1] for images
    stream_y:   (B, N) int64 label codes, or (B, N, y_dim) float32 targets for regression
    query_x:    (B, Q, *x_shape)
    query_y:    (B, Q) int64 codes, or (B, Q, y_dim) float32
    stream_task:(N,) int64 task index of each stream example (same for every episode of the batch)
    query_task: (Q,) int64 task index of each query
    class_ids:  (B, T) int64 dataset class of each task (-1 where there is none, as for sine)
    codes:      (B, T) int64 label code of each task
    train_sample_ids: (B, T, S_max) int64 dataset sample ids of the stream (-1 for sine); with uneven
                      shots, row t holds task t's S_t ids first, then -1 padding
    test_sample_ids:  (B, T, S_test) int64 dataset sample ids of the queries
    specs: the B specs, one per episode
    """

    stream_x: Tensor
    stream_y: Tensor
    query_x: Tensor
    query_y: Tensor
    stream_task: Tensor
    query_task: Tensor
    class_ids: Tensor
    codes: Tensor
    train_sample_ids: Tensor
    test_sample_ids: Tensor
    specs: list[EpisodeSpec] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.stream_x.shape[0]

    @property
    def tasks(self) -> int:
        return self.codes.shape[1]

    @property
    def is_regression(self) -> bool:
        return self.stream_y.is_floating_point()

    def stream_sample_ids(self) -> Tensor:
        """(B, N) dataset sample id of every stream example, in stream order (no padding)."""
        counts = torch.bincount(self.stream_task, minlength=self.tasks)
        starts = counts.cumsum(0) - counts
        position = torch.arange(len(self.stream_task), device=self.stream_task.device) - starts[self.stream_task]
        return self.train_sample_ids[:, self.stream_task, position]

    def to(self, device: torch.device | str) -> Episode:
        moved = {
            name: getattr(self, name).to(device)
            for name in self.__dataclass_fields__
            if isinstance(getattr(self, name), Tensor)
        }
        return replace(self, **moved)

    @staticmethod
    def concat(episodes: list[Episode]) -> Episode:
        """Stack episodes of one shape along the batch axis."""
        if not episodes:
            raise DataError("cannot batch zero episodes")
        first = episodes[0]
        batched: dict[str, Any] = {}
        for name in first.__dataclass_fields__:
            if name in ("stream_task", "query_task"):
                batched[name] = first.__dict__[name]
            elif name == "specs":
                batched[name] = [s for e in episodes for s in e.specs]
            else:
                batched[name] = torch.cat([e.__dict__[name] for e in episodes], dim=0)
        return Episode(**batched)


_SHAPE_SALT = 5  # keeps the shape draws apart from every episode's own draws


@dataclass(frozen=True)
class ShapeRange:
    """A distribution of episode shapes for meta-training: tasks ~ U{min_tasks..max_tasks}, then the
    stream shots of each task independently ~ U{min_shots..max_shots} (uneven within one stream).
    A draw is a pure function of (seed, step), so a resumed run sees the same shapes."""

    min_tasks: int
    max_tasks: int
    min_shots: int
    max_shots: int

    def validate(self) -> None:
        if not 1 <= self.min_tasks <= self.max_tasks:
            raise DataError(f"tasks range must satisfy 1 <= MIN <= MAX, not {self.min_tasks}:{self.max_tasks}")
        if not 1 <= self.min_shots <= self.max_shots:
            raise DataError(f"shots range must satisfy 1 <= MIN <= MAX, not {self.min_shots}:{self.max_shots}")

    @property
    def fixed(self) -> bool:
        return self.min_tasks == self.max_tasks and self.min_shots == self.max_shots

    def sample(self, seed: int, step: int) -> tuple[int, tuple[int, ...]]:
        """(tasks, shots of each task) for training step ``step`` of a run seeded ``seed``."""
        rng = np.random.default_rng([seed % 2**64, step, _SHAPE_SALT])
        tasks = int(rng.integers(self.min_tasks, self.max_tasks + 1))
        shots = rng.integers(self.min_shots, self.max_shots + 1, size=tasks)
        return tasks, tuple(int(s) for s in shots)

    def apply(self, spec: EpisodeSpec, seed: int, step: int) -> EpisodeSpec:
        """``spec`` with the shape of step ``step``."""
        tasks, shots = self.sample(seed, step)
        return replace(spec, tasks=tasks, shots=shots)


def parse_range(text: str, name: str) -> tuple[int, int]:
    """"MIN:MAX" (or "N" for N:N) -> (MIN, MAX); a DataError names ``name`` on bad input."""
    parts = str(text).strip().split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise DataError(f"{name} must be MIN:MAX with whole numbers (e.g. 1:20), not {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not 1 <= values[0] <= values[1]:
        raise DataError(f"{name} must be MIN:MAX with 1 <= MIN <= MAX, not {text!r}")
    return values[0], values[1]


def parse_shots(text: str, tasks: int) -> tuple[int, tuple[int, ...] | None]:
    """"5" (every task) or "1,3,5,..." (one per task) -> (train_shots, shots or None), for EpisodeSpec."""
    try:
        values = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise DataError(f"shots must be a whole number or one per task (e.g. 1,3,5), not {text!r}") from None
    if min(values) < 1:
        raise DataError(f"shots must be at least 1, not {min(values)}")
    if len(values) == 1:
        return values[0], None
    if len(values) != tasks:
        raise DataError(f"{tasks} tasks need one shot count each, not {len(values)} ({text})")
    return max(values), tuple(values)
