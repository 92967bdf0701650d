"""Omniglot-mini, shipped with the package (``data/assets/omniglot_mini.npz``): every character in
four rotations, each rotation a class of its own; meta-train and meta-test split by alphabet."""

from __future__ import annotations

import importlib.resources

import numpy as np
import torch

from mclstudio.data.episodes import DataError
from mclstudio.data.sources.base import SPLITS
from mclstudio.data.sources.images import IMAGE_SIZE, ImageSource, convert_channels

# Omniglot-mini: meta-train and meta-test alphabets (disjoint; alphabet folder names of the zips).
OMNIGLOT_MINI_SPLITS: dict[str, list[str]] = {
    "train": ["Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit"],
    "test": ["Balinese", "Early_Aramaic", "Tagalog"],
}
ROTATIONS = 4  # 0, 90, 180, 270 degrees; each is its own class


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
        self.images = convert_channels(pool.contiguous(), channels)
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
