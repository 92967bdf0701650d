"""Random rotations of a frozen encoder's embeddings, one per training episode.

A sequence learner meta-trained on a frozen encoder's embeddings of a few hundred characters learns
those characters: the shipped learners scored 89-97% on the meta-train split and 65-81% on the
meta-test split, while a prototype classifier on the same embeddings lost 6 points. Classifying a
stream in context needs only how the embeddings of a stream and its queries relate (which are close),
and an orthogonal map R keeps every distance and angle between them. Meta-training on x R, with R drawn
afresh for each episode, thus keeps the task and takes away the absolute directions the learner could
memorise the training classes by.

R comes from a bank drawn once at set-up (Haar-random, by the QR decomposition of a Gaussian matrix
with the signs of R's diagonal fixed); entry 0 is the identity, which episodes left unrotated get. A
step only gathers from the bank: no decomposition and no host wait per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.transfer import to_device


def haar_orthogonal(count: int, dim: int, generator: torch.Generator) -> Tensor:
    """(count, dim, dim) float32 orthogonal matrices, uniform (Haar) over the orthogonal group."""
    gaussian = torch.randn(count, dim, dim, generator=generator)
    # One thread: small decompositions gain nothing from more, and with several trainings on one host
    # (train_shipped.sh) their thread pools spun against each other for minutes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        q, r = torch.linalg.qr(gaussian)
    finally:
        torch.set_num_threads(threads)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


class RotationBank:
    """``size`` random rotations of R^dim and the identity, on ``device``; ``draw`` picks one per episode.

    fraction: the share of episodes that get a rotation (the others the identity)."""

    def __init__(self, dim: int, fraction: float, seed: int, device: torch.device, size: int = 512) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the rotated fraction must be in [0, 1], not {fraction}")
        generator = torch.Generator().manual_seed(seed * 7_919 + 0xB0A7)
        bank = torch.cat([torch.eye(dim)[None], haar_orthogonal(size, dim, generator)])
        self.matrices = bank.to(device)  # (size + 1, dim, dim); 0 is the identity
        self.fraction = fraction
        self.size = size
        self.seed = seed

    def draw(self, step: int, rank: int, batch: int) -> Tensor:
        """(batch, dim, dim): the rotations of one step's episodes on one rank, a pure function of
        (seed, step, rank); drawn on the host, so a step waits for nothing."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1_009 + rank + 0x707)
        picks = torch.randint(1, self.size + 1, (batch,), generator=generator)
        rotated = torch.rand(batch, generator=generator) < self.fraction
        index = torch.where(rotated, picks, torch.zeros_like(picks))
        return self.matrices[to_device(index, self.matrices.device)]


def rotate(x: Tensor, rotation: Tensor) -> Tensor:
    """Embeddings (B, ..., D) times each episode's rotation (B, D, D): x R, in x's dtype."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.bmm(flat, rotation.to(flat.dtype)).reshape(x.shape)
