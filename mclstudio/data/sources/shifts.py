"""Shifted domains: a fixed pixel transform of an image dataset, "<dataset>:<shift>". Classes, samples
and the meta-train/meta-test split stay those of the dataset; only the pixels change."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from mclstudio.data.episodes import DataError
from mclstudio.data.sources.base import EpisodeSource
from mclstudio.data.sources.images import ImageSource

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


def shifted_source(source: EpisodeSource, shift: str) -> ImageSource:
    """A copy of an image source with its pool under ``shift`` and the name "<name>:<shift>"."""
    if not isinstance(source, ImageSource):
        raise DataError(f"{source.name} is not an image dataset; the shifts {', '.join(DOMAIN_SHIFTS)} need images")
    shifted = copy.copy(source)
    shifted.name = f"{source.name}:{shift}"
    shifted.images = shifted_images(source.images.cpu(), shift).to(source.device)
    return shifted
