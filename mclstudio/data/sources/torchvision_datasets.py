"""Any image-classification dataset of ``torchvision.datasets``, loaded once into a 32x32 uint8 pool.

torchvision is imported inside ``TorchvisionSource`` only: it is slow to import and no other source
needs it.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mclstudio.data.episodes import DataError
from mclstudio.data.sources.base import SPLITS
from mclstudio.data.sources.images import IMAGE_SIZE, ImageSource, convert_channels


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
        self.images = convert_channels(images, channels)
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
