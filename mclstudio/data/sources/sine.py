"""Sine regression (Lee et al.): every task a sine curve, every sample one amplitude of it."""

from __future__ import annotations

import math

import numpy as np
import torch

from mclstudio.data.episodes import DataError, Episode, EpisodeSpec
from mclstudio.data.layout import example_tasks
from mclstudio.data.sources.base import EpisodeSource, episode_rng, input_noise


class SineSource(EpisodeSource):
    """Lee et al.'s sine regression; train and test differ only by their seed streams.

    Per task: frequency ~ U(0.1, 1.1), x-phase and y-phase ~ U(0, 2 pi). Per sample: amplitude
    ~ U(0.5, 1.5). With t = linspace(0, 10, 50):
        x = amp * sin(freq * t + phase_x) + N(0, 0.1)    (50,)
        y = amp * sin(freq * t + phase_y)                 (50,)
    spec.noise_std adds further Gaussian noise to x. class_ids and sample ids are -1; a task's code
    is its index 0..T-1 (there are no labels to hide).
    """

    name = "sine"
    kind = "regression"
    points = 50
    x_shape = (50,)
    y_dim = 50
    x_noise = 0.1
    unlimited = 2**31 - 1

    def num_classes(self, split: str) -> int:
        self._split_check(split)
        return self.unlimited

    def check(self, spec: EpisodeSpec) -> None:
        super().check(spec)
        if spec.augment:
            raise DataError("sine has no images to augment; leave augmentation off")

    def draw(self, spec: EpisodeSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
        """(T, S_train, 50) stream x and y, (T, S_test, 50) query x and y (float64), and the rng."""
        rng = episode_rng(spec)
        t = np.linspace(0.0, 10.0, self.points)
        freq = rng.uniform(0.1, 1.1, spec.tasks)[:, None, None]
        phase_x = rng.uniform(0.0, 2 * math.pi, spec.tasks)[:, None, None]
        phase_y = rng.uniform(0.0, 2 * math.pi, spec.tasks)[:, None, None]
        curves = []
        for shots in (spec.max_shots, spec.test_shots):  # uneven shots: task t streams its first S_t
            amp = rng.uniform(0.5, 1.5, (spec.tasks, shots))[:, :, None]
            x = amp * np.sin(freq * t + phase_x) + rng.normal(0.0, self.x_noise, (spec.tasks, shots, self.points))
            y = amp * np.sin(freq * t + phase_y)
            curves += [x, y]
        return curves[0], curves[1], curves[2], curves[3], rng

    def batch(self, specs: list[EpisodeSpec]) -> Episode:
        self._check_batch(specs)
        first = specs[0]
        sx, sy, qx, qy = [], [], [], []
        keep = np.arange(first.max_shots)[None, :] < np.asarray(first.task_shots)[:, None]  # (T, S_max)
        for spec in specs:
            stream_x, stream_y, query_x, query_y, rng = self.draw(spec)
            stream_x, stream_y = stream_x[keep], stream_y[keep]  # (N, 50), task-major
            stream_x = torch.from_numpy(stream_x.reshape(-1, self.points)).float()
            query_x = torch.from_numpy(query_x.reshape(-1, self.points)).float()
            if spec.noise_std > 0:
                n, q = input_noise(rng, spec, [tuple(stream_x.shape), tuple(query_x.shape)])
                stream_x, query_x = stream_x + n, query_x + q
            sx.append(stream_x)
            qx.append(query_x)
            sy.append(torch.from_numpy(stream_y.reshape(-1, self.points)).float())
            qy.append(torch.from_numpy(query_y.reshape(-1, self.points)).float())

        dev = self.device
        batch_size, tasks = len(specs), first.tasks
        stream_task, query_task = example_tasks(first, dev)
        return Episode(
            stream_x=torch.stack(sx).to(dev),
            stream_y=torch.stack(sy).to(dev),
            query_x=torch.stack(qx).to(dev),
            query_y=torch.stack(qy).to(dev),
            stream_task=stream_task,
            query_task=query_task,
            class_ids=torch.full((batch_size, tasks), -1, dtype=torch.int64, device=dev),
            codes=torch.arange(tasks, device=dev).expand(batch_size, tasks).clone(),
            train_sample_ids=torch.full((batch_size, tasks, first.max_shots), -1, dtype=torch.int64, device=dev),
            test_sample_ids=torch.full((batch_size, tasks, first.test_shots), -1, dtype=torch.int64, device=dev),
            specs=list(specs),
        )

    def describe(self) -> str:
        return (
            f"{self.name}: regression on {self.points}-point curves, unlimited tasks; "
            "train and test differ only by seed stream"
        )
