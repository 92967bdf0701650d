"""What every episode source is: the ``EpisodeSource`` interface, its shared checks, and the draws
(the episode's numpy generator and the input noise) that every source makes the same way."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from mclstudio.data.episodes import DataError, Episode, EpisodeSpec

SPLITS = ("train", "test")
_SPLIT_SALT = {"train": 0, "test": 1}


def episode_rng(spec: EpisodeSpec) -> np.random.Generator:
    """The numpy generator every draw of ``spec``'s episode comes from (seed and split mixed)."""
    return np.random.default_rng([spec.seed % 2**64, _SPLIT_SALT[spec.split]])


def input_noise(rng: np.random.Generator, spec: EpisodeSpec, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    """CPU Gaussian noise of std ``spec.noise_std`` for each shape, seeded by one draw of ``rng``."""
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63)))
    return [torch.randn(shape, generator=gen) * spec.noise_std for shape in shapes]


class EpisodeSource(ABC):
    """Makes episodes of one dataset.

    name:    the spec's ``dataset`` string ("omniglot-mini", "sine", "torchvision:MNIST", ...)
    kind:    "classification" or "regression"
    x_shape: shape of one input, (C, H, W) for images, (50,) for sine
    y_dim:   0 for classification (y is an int64 code), else the size of a float target
    device:  where episodes (and the image pool) live
    """

    name: str
    kind: str
    x_shape: tuple[int, ...]
    y_dim: int
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def num_classes(self, split: str) -> int:
        """Number of classes in ``split`` (regression: a huge number; tasks are unlimited)."""

    @abstractmethod
    def batch(self, specs: list[EpisodeSpec]) -> Episode:
        """B episodes of one shape; equal to ``Episode.concat([self.episode(s) for s in specs])``."""

    @abstractmethod
    def describe(self) -> str:
        """One line: the name and the split sizes."""

    def episode(self, spec: EpisodeSpec) -> Episode:
        """One episode (batch of 1) on ``self.device``."""
        return self.batch([spec])

    def to(self, device: torch.device | str) -> EpisodeSource:
        """A copy of this source whose data and episodes live on ``device`` (self is unchanged)."""
        moved = copy.copy(self)
        moved.device = torch.device(device)
        moved._move_data(moved.device)
        return moved

    def _move_data(self, device: torch.device) -> None:
        """Move any tensors the source samples from (nothing by default)."""

    # ---- checks shared by all sources ----

    def _split_check(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"split must be 'train' or 'test', not {split!r}")

    def check(self, spec: EpisodeSpec) -> None:
        """Raise DataError (one line) if this source cannot make ``spec``'s episode."""
        spec.validate()
        if spec.dataset != self.name:
            raise DataError(f"the spec asks for dataset {spec.dataset!r} but this source is {self.name!r}")
        have = self.num_classes(spec.split)
        if spec.tasks > have:
            raise DataError(
                f"{self.name} {spec.split} split has {have} classes; {spec.tasks} tasks need {spec.tasks}"
            )

    def _check_batch(self, specs: list[EpisodeSpec]) -> None:
        if not specs:
            raise DataError("cannot batch zero episodes")
        for spec in specs:
            self.check(spec)
        shapes = {(s.tasks, s.task_shots, s.test_shots, s.augment) for s in specs}
        if len(shapes) > 1:
            raise DataError("episodes of one batch must share tasks, train shots, test shots and augmentation")
