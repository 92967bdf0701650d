"""Episode sources: where the classes, images and sine curves of an episode come from.

A source turns an :class:`EpisodeSpec` into an :class:`Episode`. Everything an episode holds is a
pure function of its spec:

* class ids, label codes and sample ids are drawn on the CPU with
  ``np.random.default_rng([seed mod 2**64, split id])`` (the split is part of the seed, so the
  train and test draws of one seed differ); image sources draw the classes, then the codes, then
  the samples, then the noise seed (sine: task and sample parameters, then the noise seed);
* input noise (``spec.noise_std``) comes from a CPU ``torch.Generator`` seeded with the last draw
  of that rng, and is moved to the device afterwards, so CPU and GPU give the same episode.

Image sources keep their whole pool as one uint8 tensor ``(P, C, 32, 32)`` (on the device after
``to(device)``); a batch of episodes is one index-gather into it. Pixels are scaled to [-1, 1] as
``x * (2/255) - 1`` (a multiply, not a divide, so CPU and CUDA round alike); noise is added after.
"""

from __future__ import annotations

import copy
import importlib.resources
import inspect
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mclstudio.data import augmentation
from mclstudio.data.episodes import DataError, Episode, EpisodeSpec

SPLITS = ("train", "test")
_SPLIT_SALT = {"train": 0, "test": 1}
IMAGE_SIZE = 32

# Omniglot-mini: meta-train and meta-test alphabets (disjoint; alphabet folder names of the zips).
OMNIGLOT_MINI_SPLITS: dict[str, list[str]] = {
    "train": ["Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit"],
    "test": ["Balinese", "Early_Aramaic", "Tagalog"],
}
ROTATIONS = 4  # 0, 90, 180, 270 degrees; each is its own class


def episode_rng(spec: EpisodeSpec) -> np.random.Generator:
    """The numpy generator every draw of ``spec``'s episode comes from (seed and split mixed)."""
    return np.random.default_rng([spec.seed % 2**64, _SPLIT_SALT[spec.split]])


def _noise(rng: np.random.Generator, spec: EpisodeSpec, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    """CPU Gaussian noise of std ``spec.noise_std`` for each shape, seeded by one draw of ``rng``."""
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63)))
    return [torch.randn(shape, generator=gen) * spec.noise_std for shape in shapes]


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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

    @staticmethod
    def _layout(spec: EpisodeSpec, device: torch.device) -> tuple[Tensor, Tensor]:
        """Task-major task index of each stream example (N,) and query (Q,)."""
        tasks = torch.arange(spec.tasks, device=device)
        shots = torch.tensor(spec.task_shots, device=device)
        return tasks.repeat_interleave(shots), tasks.repeat_interleave(spec.test_shots)


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
            noises.append(_noise(rng, spec, noise_shapes) if spec.noise_std > 0 else None)
            if spec.augment:
                variants.append(augmentation.draw_class_transforms(spec, self.new_class_rotations))

        # One gather for the whole batch, on the device that holds the images.
        dev = self.device
        class_t = torch.from_numpy(np.stack(class_ids)).to(dev)
        codes_t = torch.from_numpy(np.stack(codes)).to(dev)
        train_t = torch.from_numpy(np.stack(train_ids)).to(dev)  # (B, T, S_max)
        test_t = torch.from_numpy(np.stack(test_ids)).to(dev)  # (B, T, S_test)
        batch_size = len(specs)
        stream_task, query_task = self._layout(first, dev)
        stream_ids = torch.from_numpy(np.stack(train_ids)[:, ~padding]).to(dev)  # (B, N), task-major
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


def _convert_channels(images: Tensor, channels: int | None) -> Tensor:
    """(P, C, H, W) uint8 -> (P, channels, H, W): RGB -> luma (ITU-R 601), grey -> repeated."""
    if channels is None or channels == images.shape[1]:
        return images
    if channels == 1 and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    if channels == 3 and images.shape[1] == 1:
        return images.repeat(1, 3, 1, 1)
    raise DataError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")


class OmniglotMini(ImageSource):
    """The shipped Omniglot subset: 8 alphabets, 242 characters, 20 drawers each, 32x32.

    Class id = character index * 4 + rotation (rotation r = torch.rot90 by r*90 degrees,
    counter-clockwise). Sample id = class id * 20 + drawer index (drawer index 0..19 in drawer
    order), which is also the row of the flattened pool ``images``.
    Meta-train/meta-test split by alphabet: OMNIGLOT_MINI_SPLITS.
    """

    name = "omniglot-mini"
    drawers = 20
    new_class_rotations = False  # the pool already holds every rotation as a class of its own

    def __init__(self, channels: int | None = None) -> None:
        asset = importlib.resources.files("mclstudio.data") / "assets" / "omniglot_mini.npz"
        try:
            with asset.open("rb") as f, np.load(f, allow_pickle=False) as npz:
                base = npz["images"]  # (242, 20, 32, 32) uint8 ink
                self.alphabets = [str(a) for a in npz["alphabets"]]
                self.char_alphabet = npz["char_alphabet"].astype(np.int64)
                self.char_names = [str(n) for n in npz["char_names"]]
        except FileNotFoundError:
            raise DataError(
                "omniglot_mini.npz is missing from mclstudio/data/assets; "
                "rebuild it with python -m mclstudio.data.build_omniglot_mini SRC_DIR"
            ) from None
        n_chars, self.drawers = base.shape[:2]

        # Rotations precomputed once: (chars, 4, drawers, 32, 32), flattened so that the pool row
        # of (class c*4+r, drawer d) is (c*4+r)*drawers + d = the sample id.
        base_t = torch.from_numpy(base)
        rotated = torch.stack([torch.rot90(base_t, r, dims=(-2, -1)) for r in range(ROTATIONS)], dim=1)
        pool = rotated.reshape(n_chars * ROTATIONS * self.drawers, 1, IMAGE_SIZE, IMAGE_SIZE)
        self.images = _convert_channels(pool.contiguous(), channels)
        self.x_shape = (self.images.shape[1], IMAGE_SIZE, IMAGE_SIZE)

        n_classes = n_chars * ROTATIONS
        self.class_index = np.arange(n_classes * self.drawers, dtype=np.int64).reshape(n_classes, self.drawers)
        self.class_counts = np.full(n_classes, self.drawers, dtype=np.int64)
        self.split_chars: dict[str, np.ndarray] = {}
        self.split_classes = {}
        for split, names in OMNIGLOT_MINI_SPLITS.items():
            wanted = [self.alphabets.index(a) for a in names]
            chars = np.flatnonzero(np.isin(self.char_alphabet, wanted))
            self.split_chars[split] = chars
            self.split_classes[split] = (chars[:, None] * ROTATIONS + np.arange(ROTATIONS)).reshape(-1)
        self._finish()

    def describe(self) -> str:
        parts = [
            f"{split} {len(self.split_classes[split])} classes "
            f"({len(self.split_chars[split])} characters x {ROTATIONS} rotations, "
            f"{len(OMNIGLOT_MINI_SPLITS[split])} alphabets)"
            for split in SPLITS
        ]
        return f"{self.name}: {self.drawers} samples per class; " + ", ".join(parts)


def default_root() -> str:
    """Where torchvision datasets live when no root is given: $MCLSTUDIO_DATA or ~/.cache/mclstudio/data."""
    return os.environ.get("MCLSTUDIO_DATA") or str(Path("~/.cache/mclstudio/data").expanduser())


class TorchvisionSource(ImageSource):
    """Any image-classification class of ``torchvision.datasets``, resized to 32x32.

    Pool: for datasets with a ``train`` flag, the train part and then the test part; for Omniglot,
    images_background (meta-train) and then images_evaluation (meta-test), the official split.
    Sample id = position in that pool. Class id = index of the label among the sorted distinct labels
    (the label itself for MNIST, CIFAR...; Omniglot's evaluation classes come after its 964 background
    ones). Meta-train/test split (all but Omniglot): shuffle the class ids with
    np.random.default_rng(0), the first 60% are meta-train, the rest meta-test (Lee et al., CIFAR-100).
    Pixels are used as they are (dark ink on light paper stays so; a learner does not care).
    """

    def __init__(self, dataset_name: str, root: str, download: bool = False, channels: int | None = None) -> None:
        import torchvision  # imported here: it is slow to import and only these sources need it

        self.name = f"torchvision:{dataset_name}"
        self.root = root
        cls = getattr(torchvision.datasets, dataset_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, torch.utils.data.Dataset)):
            raise DataError(
                f"unknown torchvision dataset {dataset_name!r}; the name after 'torchvision:' must be a "
                "torchvision.datasets class such as MNIST, FashionMNIST, KMNIST, CIFAR100 or Omniglot"
            )
        not_found = f"torchvision dataset {dataset_name} not found under {root}; pass --download to fetch it"
        if not download and not Path(root).is_dir():
            raise DataError(not_found)

        params = inspect.signature(cls.__init__).parameters
        if dataset_name == "Omniglot":
            variants = [{"background": True}, {"background": False}]
        elif "train" in params:
            variants = [{"train": True}, {"train": False}]
        elif "split" in params:
            variants = [{"split": "train"}, {"split": "test"}]
        else:
            variants = [{}]

        parts: list[tuple[Tensor, np.ndarray]] = []
        for kwargs in variants:
            try:
                ds = cls(root, download=download, **kwargs)
            except RuntimeError as err:
                if download:
                    raise DataError(f"could not fetch torchvision dataset {dataset_name}: {_one_line(err)}") from err
                raise DataError(not_found) from err
            except (OSError, TypeError, ValueError) as err:
                raise DataError(f"could not load torchvision dataset {dataset_name}: {_one_line(err)}") from err
            parts.append(_load_pool(ds))

        images = torch.cat([p[0] for p in parts])
        self.images = _convert_channels(images, channels)
        self.x_shape = tuple(self.images.shape[1:])

        if dataset_name == "Omniglot":
            # Background and evaluation labels both start at 0: offset the evaluation ones.
            offset = int(parts[0][1].max()) + 1
            labels = np.concatenate([parts[0][1], parts[1][1] + offset])
        else:
            labels = np.concatenate([p[1] for p in parts])
        distinct, class_of = np.unique(labels, return_inverse=True)
        n_classes = len(distinct)
        self.class_counts = np.bincount(class_of, minlength=n_classes).astype(np.int64)
        self.class_index = np.full((n_classes, int(self.class_counts.max())), -1, dtype=np.int64)
        order = np.argsort(class_of, kind="stable")  # pool ids grouped by class, in pool order
        starts = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]])
        slot = np.arange(len(order)) - np.repeat(starts, self.class_counts)
        self.class_index[class_of[order], slot] = order

        if dataset_name == "Omniglot":
            n_background = len(np.unique(parts[0][1]))
            self.split_classes = {"train": np.arange(n_background), "test": np.arange(n_background, n_classes)}
            self.split_rule = "official background/evaluation split"
        else:
            shuffled = np.random.default_rng(0).permutation(n_classes)
            n_train = n_classes * 3 // 5
            self.split_classes = {"train": np.sort(shuffled[:n_train]), "test": np.sort(shuffled[n_train:])}
            self.split_rule = "60/40 class split, seed 0"
        for split in SPLITS:
            if len(self.split_classes[split]) == 0:
                raise DataError(f"{self.name} has too few classes ({n_classes}) for a meta-train/meta-test split")
        self._finish()

    def describe(self) -> str:
        c, h, w = self.x_shape
        return (
            f"{self.name}: {len(self.images)} images {c}x{h}x{w} under {self.root}; "
            f"train {self.num_classes('train')} classes, test {self.num_classes('test')} classes "
            f"({self.split_rule})"
        )


def _load_pool(ds: torch.utils.data.Dataset) -> tuple[Tensor, np.ndarray]:
    """All images of a torchvision dataset as (n, C, 32, 32) uint8, and their labels (n,) int64.

    Fast path: datasets holding a uint8 ``data`` array (MNIST family (n, H, W), CIFAR (n, H, W, 3),
    SVHN (n, 3, H, W)) are resized as one tensor. Otherwise every item is loaded as a PIL image.
    """
    data = getattr(ds, "data", None)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = getattr(ds, "labels", None)
    if isinstance(data, (np.ndarray, Tensor)) and labels is not None and len(data) == len(labels):
        arr = torch.as_tensor(np.asarray(data))
        if arr.dtype == torch.uint8 and arr.ndim in (3, 4):
            if arr.ndim == 3:
                arr = arr[:, None]
            elif arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
                arr = arr.permute(0, 3, 1, 2)
            return _resize(arr), np.asarray(labels, dtype=np.int64)

    from PIL import Image

    images, targets = [], []
    for i in range(len(ds)):
        img, target = ds[i]
        img = img.convert("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)  # antialiased when shrinking
        arr = np.asarray(img, dtype=np.uint8)
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        targets.append(int(target))
    return torch.from_numpy(np.stack(images)), np.asarray(targets, dtype=np.int64)


def _resize(images: Tensor, chunk: int = 4096) -> Tensor:
    """(n, C, H, W) uint8 -> (n, C, 32, 32) uint8, bilinear with antialiasing, in chunks to bound memory."""
    if images.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return images.contiguous()
    out = []
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float()
        part = torch.nn.functional.interpolate(
            part, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(part.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


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
                n, q = _noise(rng, spec, [tuple(stream_x.shape), tuple(query_x.shape)])
                stream_x, query_x = stream_x + n, query_x + q
            sx.append(stream_x)
            qx.append(query_x)
            sy.append(torch.from_numpy(stream_y.reshape(-1, self.points)).float())
            qy.append(torch.from_numpy(query_y.reshape(-1, self.points)).float())

        dev = self.device
        batch_size, tasks = len(specs), first.tasks
        stream_task, query_task = self._layout(first, dev)
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


# Shifted domains: a fixed pixel transform of an image dataset, "<dataset>:<shift>". Classes, samples
# and the meta-train/meta-test split stay those of the dataset; only the pixels change.
DOMAIN_SHIFTS = ("inverted", "noisy")
NOISY_STD = 64.0  # uint8 units (0.5 after scaling to [-1, 1])
NOISY_SEED = 0


def shifted_images(images: Tensor, shift: str) -> Tensor:
    """(P, C, H, W) uint8 -> the same pool under a domain shift (uint8 again).

    inverted: 255 - x (Omniglot-mini's light strokes on black become black strokes on white).
    noisy: x + N(0, NOISY_STD) drawn once from a CPU generator seeded NOISY_SEED, rounded and clipped
    to 0..255, so a sample always carries the same noise (unlike ``noise_std``, drawn per episode).
    """
    if shift == "inverted":
        return 255 - images
    if shift == "noisy":
        gen = torch.Generator().manual_seed(NOISY_SEED)
        noise = torch.randn(images.shape, generator=gen) * NOISY_STD
        return (images.float() + noise).round_().clamp_(0, 255).to(torch.uint8)
    raise DataError(f"unknown domain shift {shift!r}; choose one of {', '.join(DOMAIN_SHIFTS)}")


def _shifted_source(source: EpisodeSource, shift: str) -> ImageSource:
    """A copy of an image source with its pool under ``shift`` and the name "<name>:<shift>"."""
    if not isinstance(source, ImageSource):
        raise DataError(f"{source.name} is not an image dataset; the shifts {', '.join(DOMAIN_SHIFTS)} need images")
    shifted = copy.copy(source)
    shifted.name = f"{source.name}:{shift}"
    shifted.images = shifted_images(source.images.cpu(), shift).to(source.device)
    return shifted


_CACHE: dict[tuple[str, str | None, int | None], EpisodeSource] = {}


def get_source(
    dataset: str, root: str | None = None, download: bool = False, channels: int | None = None
) -> EpisodeSource:
    """The (cached, CPU) source for ``dataset``: "omniglot-mini", "sine" or "torchvision:<Name>", or an
    image dataset under a domain shift, "<dataset>:inverted" or "<dataset>:noisy" (see ``shifted_images``).

    root: folder for torchvision datasets (default $MCLSTUDIO_DATA or ~/.cache/mclstudio/data).
    download: let torchvision fetch a missing dataset. channels: 1 or 3 to convert images to
    grey / RGB (default: the dataset's own). Call ``.to(device)`` on the result for GPU sampling.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, not {channels}")
    base, _, shift = dataset.rpartition(":")
    if base and shift in DOMAIN_SHIFTS:
        key: tuple[str, str | None, int | None] = (dataset, root, channels)
        if key not in _CACHE:
            _CACHE[key] = _shifted_source(get_source(base, root, download, channels), shift)
        return _CACHE[key]
    if dataset == "omniglot-mini":
        key = (dataset, None, channels)
        make = lambda: OmniglotMini(channels)  # noqa: E731
    elif dataset == "sine":
        if channels is not None:
            raise DataError("sine has no image channels; leave channels unset")
        key = (dataset, None, None)
        make = SineSource
    elif dataset.startswith("torchvision:") and dataset.removeprefix("torchvision:"):
        name = dataset.removeprefix("torchvision:")
        root = str(Path(root or default_root()).expanduser().resolve())
        key = (dataset, root, channels)
        make = lambda: TorchvisionSource(name, root, download=download, channels=channels)  # noqa: E731
    else:
        raise DataError(
            f"unknown dataset {dataset!r}; choose omniglot-mini, sine or torchvision:<Name>, "
            f"optionally followed by :{' or :'.join(DOMAIN_SHIFTS)} for an image dataset"
        )
    if key not in _CACHE:
        _CACHE[key] = make()  # a failed load raises and caches nothing
    return _CACHE[key]
