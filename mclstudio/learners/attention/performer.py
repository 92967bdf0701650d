"""The Performer (FAVOR+, Choromanski et al. 2021): the stack with kernel attention and positive
orthogonal random features, drawn once per layer at init and never redrawn."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from mclstudio.learners.attention.kernel import KernelAttention
from mclstudio.learners.attention.multihead import Attention
from mclstudio.learners.attention.stack import AttentionLearner, TransformerConfig
from mclstudio.learners.base import LearnerConfig


@dataclass
class PerformerConfig(TransformerConfig):
    """Performer: FAVOR+ positive orthogonal random features (n_features per layer, shared by heads)."""

    model: ClassVar[str] = "performer"
    n_features: int = 64


def orthogonal_gaussian_features(n_features: int, dim: int) -> Tensor:
    """(n_features, dim) random features: blocks of dim orthonormal rows (Haar, from QR of a Gaussian
    matrix), each row rescaled by the norm of an independent dim-dimensional Gaussian so that rows are
    marginally N(0, I) (Choromanski et al.'s orthogonal random features). Uses torch's global RNG."""
    blocks = []
    for _ in range(math.ceil(n_features / dim)):
        q, r = torch.linalg.qr(torch.randn(dim, dim))
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # sign fix makes q Haar-distributed
        blocks.append(q.T)
    w = torch.cat(blocks, dim=0)[:n_features]
    return w * torch.randn(n_features, dim).norm(dim=1, keepdim=True)


class FavorFeatureMap(nn.Module):
    """FAVOR+ positive random features: phi(x) = exp(w^T x' - |x'|^2 / 2) / sqrt(m), x' = x / d_head^(1/4),
    so that E[phi(q) . phi(k)] = exp(q . k / sqrt(d_head)). (..., d_head) -> (..., m).

    ``omega`` (m, d_head) is drawn once at init and saved in the state dict; it is never redrawn.

    Numerical safety (float32): a query's features are divided by their own maximum (exp of the exponent
    minus its max over the m features). Queries enter numerator and denominator of attention linearly,
    so this cancels (up to eps), and it depends on that token alone, so every path computes the same.
    Keys cannot be treated so (their scale must be shared by all keys), so their exponent is clamped at
    the constant ``key_exp_max``; note that w.x' - |x'|^2/2 <= |w|^2/2, so the clamp can only act when
    d_head is large (|w|^2 ~ d_head) and a key nearly aligns with a feature.
    """

    key_exp_max: float = 30.0

    def __init__(self, d_head: int, n_features: int) -> None:
        super().__init__()
        self.n_features = n_features
        self.d_head = d_head
        self.register_buffer("omega", orthogonal_gaussian_features(n_features, d_head), persistent=True)

    def forward(self, x: Tensor, is_query: bool) -> Tensor:
        x = x * self.d_head**-0.25
        e = x @ self.omega.to(x.dtype).T - 0.5 * x.pow(2).sum(-1, keepdim=True)
        if is_query:
            e = e - e.amax(dim=-1, keepdim=True).detach()
        else:
            e = e.clamp(max=self.key_exp_max)
        return torch.exp(e) * self.n_features**-0.5


class PerformerLearner(AttentionLearner):
    """Performer (FAVOR+, features drawn once per layer at init and never redrawn); fixed-size state."""

    config_class: ClassVar[type[LearnerConfig]] = PerformerConfig
    fixed_shape_state: ClassVar[bool] = True  # S and z per layer, updated in place; the position on the device
    config: PerformerConfig

    def _make_attention(self, config: TransformerConfig) -> Attention:
        assert isinstance(config, PerformerConfig)
        d_head = config.d_model // config.n_heads
        return KernelAttention(config.d_model, config.n_heads, FavorFeatureMap(d_head, config.n_features))
