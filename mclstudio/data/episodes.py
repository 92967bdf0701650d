"""Episodes: the unit a meta-continual learner learns from.

An episode has T tasks, each one new class. The training stream shows S_train examples of task 1,
then of task 2, and so on (task-major order); the queries are S_test further examples of every task.
Each task gets a label code: T distinct codes drawn at random from 0..V-1 (V = ``num_codes``; with
V == T the code is a plain permutation). Everything is a pure function of the spec, its seed included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor


class DataError(ValueError):
    """Bad data request (unknown dataset, too many tasks, missing folder...). The message is one line."""


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything needed to rebuild one episode exactly.

    dataset: "omniglot-mini", "sine" or "torchvision:<Name>" (e.g. "torchvision:MNIST").
    split: "train" (meta-train classes) or "test" (meta-test classes); the two are disjoint.
    num_codes: size V of the label-code vocabulary (>= tasks); None means V = tasks.
    noise_std: std of Gaussian noise added to every input x (after scaling to [-1, 1]).
    """

    dataset: str = "omniglot-mini"
    split: str = "test"
    tasks: int = 20
    train_shots: int = 5
    test_shots: int = 5
    seed: int = 0
    noise_std: float = 0.0
    num_codes: int | None = None

    @property
    def codes(self) -> int:
        return self.tasks if self.num_codes is None else self.num_codes

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
        if self.test_shots < 1:
            raise DataError(f"test shots must be at least 1, not {self.test_shots}")
        if self.noise_std < 0:
            raise DataError(f"noise std must be >= 0, not {self.noise_std}")
        if self.codes < self.tasks:
            raise DataError(f"{self.tasks} tasks need at least {self.tasks} label codes, not {self.codes}")


@dataclass
class Episode:
    """A batch of B episodes of one shape (B = 1 for a single episode).

    N = tasks * train_shots stream examples, Q = tasks * test_shots queries, both task-major.
    x_shape is (C, H, W) for images and (x_dim,) for vectors.

    stream_x:   (B, N, *x_shape) float32 inputs, scaled to [-1, 1] for images
    stream_y:   (B, N) int64 label codes, or (B, N, y_dim) float32 targets for regression
    query_x:    (B, Q, *x_shape)
    query_y:    (B, Q) int64 codes, or (B, Q, y_dim) float32
    stream_task:(N,) int64 task index of each stream example (same for every episode of the batch)
    query_task: (Q,) int64 task index of each query
    class_ids:  (B, T) int64 dataset class of each task (-1 where there is none, as for sine)
    codes:      (B, T) int64 label code of each task
    train_sample_ids: (B, T, S_train) int64 dataset sample ids of the stream (-1 for sine)
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
