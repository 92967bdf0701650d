"""Image sources: a pool of uint8 images, classes drawn from it, one index-gather per batch.

The pool is one uint8 tensor ``(P, C, 32, 32)`` (on the device after ``to(device)``). Pixels are
scaled to [-1, 1] as ``x * (2/255) - 1`` (a multiply, not a divide, so CPU and CUDA round alike);
class-level augmentation comes next, input noise last.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mclstudio.data import augmentation
from mclstudio.data.episodes import DataError, Episode, EpisodeSpec
from mclstudio.data.layout import example_tasks
from mclstudio.data.sources.base import EpisodeSource, episode_rng, input_noise
from mclstudio.transfer import to_device

IMAGE_SIZE = 32


class ImageSource(EpisodeSource):
    """Classification over a pool of uint8 images; subclasses fill the fields below in __init__.

    images:       (P, C, 32, 32) uint8 pool, 255 = ink / full intensity; a sample id indexes it
    class_index:  (K, M) int64 numpy; row k lists the pool ids of class k, padded with -1
    class_counts: (K,) int64 numpy; number of samples of each class
    split_classes: split -> sorted int64 numpy array of the class ids of that split
    """

    kind = "classification"
    y_dim = 0
    new_class_rotations = True  # augmentation may rotate a class by 90 degrees into a new class
    images: Tensor
    class_index: np.ndarray
    class_counts: np.ndarray
    split_classes: dict[str, np.ndarray]

    def _finish(self) -> None:
        """Derived facts, computed once at the end of a subclass's __init__."""
        self._ragged = bool(self.class_counts.min() != self.class_counts.max())
        self._fewest = {split: int(self.class_counts[ids].min()) for split, ids in self.split_classes.items()}

    def num_classes(self, split: str) -> int:
        self._split_check(split)
        return len(self.split_classes[split])

    def samples_per_class(self, split: str) -> int:
        """Samples in the smallest class of ``split`` (the most train + test shots an episode may use)."""
        self._split_check(split)
        return self._fewest[split]

    def check(self, spec: EpisodeSpec) -> None:
        super().check(spec)
        have = self.samples_per_class(spec.split)
        need = spec.max_shots + spec.test_shots
        if need > have:
            counted = "in its smallest class" if self._ragged else "per class"
            raise DataError(
                f"{self.name} {spec.split} split has {have} samples {counted}; "
                f"{spec.max_shots} train + {spec.test_shots} test shots need {need}"
            )

    def _move_data(self, device: torch.device) -> None:
        self.images = self.images.to(device)

    def draw(self, spec: EpisodeSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
        """The numpy draws of one episode.

        Returns class_ids (T,), codes (T,), sample ids (T, S_max + S_test) -- the first S_t of row t
        are the stream's, the last S_test the queries', all distinct -- and the rng (for the noise seed).
        """
        rng = episode_rng(spec)
        pool = self.split_classes[spec.split]
        class_ids = pool[rng.permutation(len(pool))[: spec.tasks]]
        codes = rng.permutation(spec.codes)[: spec.tasks]
        # S distinct members per class without replacement, vectorised over tasks: one random key per
        # slot of class_index, padding slots get +inf, keep the slots of the S smallest keys in key order.
        keys = rng.random((spec.tasks, self.class_index.shape[1]))
        if self._ragged:  # classes of unequal size: mask the padding
            keys[self.class_index[class_ids] < 0] = np.inf
        pick = keys.argsort(axis=1)[:, : spec.max_shots + spec.test_shots]
        sample_ids = self.class_index[class_ids[:, None], pick]
        return class_ids, codes, sample_ids, rng

    @property
    def pool_size(self) -> int:
        return self.images.shape[0]

    def inputs(self, ids: Tensor) -> Tensor:
        """Model inputs of pool samples: ids (...) on the device -> (..., C, H, W) float32 in [-1, 1]."""
        return self.images[ids].float().mul_(2.0 / 255.0).sub_(1.0)

    def _gather(self, ids: Tensor) -> Tensor:
        """(B, n) pool ids on the device -> (B, n, C, H, W) float32 in [-1, 1]."""
        return self.inputs(ids)

    def batch(self, specs: list[EpisodeSpec]) -> Episode:
        self._check_batch(specs)
        first = specs[0]
        s_max = first.max_shots
        n_stream, n_query = first.stream_length, first.tasks * first.test_shots
        noise_shapes = [(n_stream, *self.x_shape), (n_query, *self.x_shape)]
        # Uneven shots: task t streams the first S_t of its S_max slots; the rest are padding (-1).
        padding = np.arange(s_max)[None, :] >= np.asarray(first.task_shots)[:, None]  # (T, S_max)
        class_ids, codes, train_ids, test_ids, noises, variants = [], [], [], [], [], []
        for spec in specs:  # the draws are per episode (each is a function of its own spec)
            c, k, ids, rng = self.draw(spec)
            class_ids.append(c)
            codes.append(k)
            train_ids.append(np.where(padding, -1, ids[:, :s_max]))
            test_ids.append(ids[:, s_max:])
            noises.append(input_noise(rng, spec, noise_shapes) if spec.noise_std > 0 else None)
            if spec.augment:
                variants.append(augmentation.draw_class_transforms(spec, self.new_class_rotations))

        # One gather for the whole batch, on the device that holds the images.
        dev = self.device
        class_t = to_device(torch.from_numpy(np.stack(class_ids)), dev)
        codes_t = to_device(torch.from_numpy(np.stack(codes)), dev)
        train_t = to_device(torch.from_numpy(np.stack(train_ids)), dev)  # (B, T, S_max)
        test_t = to_device(torch.from_numpy(np.stack(test_ids)), dev)  # (B, T, S_test)
        batch_size = len(specs)
        stream_task, query_task = example_tasks(first, dev)
        stream_ids = to_device(torch.from_numpy(np.stack(train_ids)[:, ~padding]), dev)  # (B, N), task-major
        stream_x = self._gather(stream_ids)  # (B, N, C, H, W)
        query_x = self._gather(test_t.reshape(batch_size, -1))  # (B, Q, C, H, W)
        if variants:  # every episode of a batch shares `augment` (it is part of the shape check)
            transforms = augmentation.ClassTransforms.stack(variants, dev)
            stream_x = augmentation.apply(stream_x, stream_task, transforms)
            query_x = augmentation.apply(query_x, query_task, transforms)
        for b, noise in enumerate(noises):
            if noise is not None:
                stream_x[b] += noise[0].to(dev)
                query_x[b] += noise[1].to(dev)

        return Episode(
            stream_x=stream_x,
            stream_y=codes_t[:, stream_task],
            query_x=query_x,
            query_y=codes_t[:, query_task],
            stream_task=stream_task,
            query_task=query_task,
            class_ids=class_t,
            codes=codes_t,
            train_sample_ids=train_t,
            test_sample_ids=test_t,
            specs=list(specs),
        )


def convert_channels(images: Tensor, channels: int | None) -> Tensor:
    """(P, C, H, W) uint8 -> (P, channels, H, W): RGB -> luma (ITU-R 601), grey -> repeated."""
    if channels is None or channels == images.shape[1]:
        return images
    if channels == 1 and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    if channels == 3 and images.shape[1] == 1:
        return images.repeat(1, 3, 1, 1)
    raise DataError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")
