"""The Transformer (Lee et al.'s strongest baseline): the stack with softmax attention."""

from __future__ import annotations

from typing import ClassVar

from mclstudio.learners.attention.multihead import Attention
from mclstudio.learners.attention.softmax import SoftmaxAttention
from mclstudio.learners.attention.stack import AttentionLearner, TransformerConfig
from mclstudio.learners.base import LearnerConfig


class TransformerLearner(AttentionLearner):
    """Softmax Transformer (Lee et al.'s strongest baseline); its state grows with the stream (a KV cache,
    preallocated for the whole stream where its length is known: ``init_state(..., max_tokens)``)."""

    config_class: ClassVar[type[LearnerConfig]] = TransformerConfig
    fixed_shape_state: ClassVar[bool] = True  # with max_tokens: the cache's buffers and a device position

    def _make_attention(self, config: TransformerConfig) -> Attention:
        return SoftmaxAttention(config.d_model, config.n_heads)
