"""The Linear Transformer (Katharopoulos et al. 2020): the stack with kernel attention and the
feature map elu(x) + 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from mclstudio.learners.attention.kernel import KernelAttention
from mclstudio.learners.attention.multihead import Attention
from mclstudio.learners.attention.stack import AttentionLearner, TransformerConfig
from mclstudio.learners.base import LearnerConfig


@dataclass
class LinearTransformerConfig(TransformerConfig):
    """Linear Transformer: feature map elu(x) + 1 on each head's queries and keys."""

    model: ClassVar[str] = "linear_transformer"


class EluFeatureMap(nn.Module):
    """phi(x) = elu(x) + 1 (Katharopoulos et al.): (..., d_head) -> (..., d_head), positive."""

    def __init__(self, d_head: int) -> None:
        super().__init__()
        self.n_features = d_head

    def forward(self, x: Tensor, is_query: bool) -> Tensor:
        return F.elu(x) + 1.0


class LinearTransformerLearner(AttentionLearner):
    """Linear Transformer (elu + 1 features); fixed-size state."""

    config_class: ClassVar[type[LearnerConfig]] = LinearTransformerConfig
    fixed_shape_state: ClassVar[bool] = True  # S and z per layer, updated in place; the position on the device

    def _make_attention(self, config: TransformerConfig) -> Attention:
        d_head = config.d_model // config.n_heads
        return KernelAttention(config.d_model, config.n_heads, EluFeatureMap(d_head))
