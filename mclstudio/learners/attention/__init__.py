"""Attention learners (Lee et al. 2023's baselines): Transformer, Linear Transformer and Performer.

The three share one stack of pre-LayerNorm residual blocks and sinusoidal positions; they differ only in
the attention kernel:

- ``SoftmaxAttention`` (Transformer): exact softmax attention; the memory is a KV cache that grows with
  the stream (``KVCacheState``).
- ``KernelAttention`` with ``EluFeatureMap`` (Linear Transformer, Katharopoulos et al. 2020) or
  ``FavorFeatureMap`` (Performer, FAVOR+, Choromanski et al. 2021): attention with a feature map phi,
  out = phi(q) S / (phi(q) . z), S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j); the memory (S, z) has a
  fixed size (``MatrixState``).

Positions: token t of the stream gets the sinusoid of position t added to its embedding; a query is read
at position ``state.length`` (right after the stream). Positions are computed from the state's length,
so scan, step and read agree.

Association rows (``read(..., with_rows=True)``): each layer's attention row of a query over the stream
tokens, averaged over heads, with the query's weight on itself dropped and the rest renormalised to sum 1.

Anytime queries (``read(..., query_end=e)``): query q sits at position e[q] and attends to the stream
tokens before it only: a mask for softmax; for kernel attention the masked quadratic form phi(q) phi(K)^T
over the prefix, which equals reading the prefix sums S and z at e[q].

Reading order, one idea a module (the shape of the SSM family: shared parts, then one file a model):

1. ``positions``: the sinusoids.
2. ``multihead``: the projections and the interface of an attention kernel; rows and anytime masks.
3. ``softmax``: softmax attention and its KV cache.
4. ``kernel``: kernel attention, its (S, z) memory and the chunked parallel scan.
5. ``stack``: the config, the residual block and ``AttentionLearner`` (scan, step, read).
6. ``transformer``, ``linear_transformer``, ``performer``: each model's kernel (and feature map).
"""

from mclstudio.learners.attention.kernel import KernelAttention, MatrixState
from mclstudio.learners.attention.linear_transformer import (
    EluFeatureMap,
    LinearTransformerConfig,
    LinearTransformerLearner,
)
from mclstudio.learners.attention.multihead import Attention
from mclstudio.learners.attention.performer import (
    FavorFeatureMap,
    PerformerConfig,
    PerformerLearner,
    orthogonal_gaussian_features,
)
from mclstudio.learners.attention.positions import sinusoidal_positions
from mclstudio.learners.attention.softmax import KVCacheState, SoftmaxAttention
from mclstudio.learners.attention.stack import AttentionLearner, Block, TransformerConfig
from mclstudio.learners.attention.transformer import TransformerLearner

__all__ = [
    "TransformerConfig",
    "LinearTransformerConfig",
    "PerformerConfig",
    "KVCacheState",
    "MatrixState",
    "Attention",
    "SoftmaxAttention",
    "KernelAttention",
    "EluFeatureMap",
    "FavorFeatureMap",
    "Block",
    "AttentionLearner",
    "TransformerLearner",
    "LinearTransformerLearner",
    "PerformerLearner",
    "sinusoidal_positions",
    "orthogonal_gaussian_features",
]
