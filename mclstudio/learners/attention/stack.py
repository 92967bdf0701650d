"""The stack the three attention learners share: pre-LayerNorm residual blocks over sinusoidal
positions, and its config. A model picks the attention kernel of its blocks (``_make_attention``)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from mclstudio.learners.attention.multihead import Attention
from mclstudio.learners.attention.positions import sinusoidal_positions
from mclstudio.learners.base import Learner, LearnerConfig, State


@dataclass
class TransformerConfig(LearnerConfig):
    """The softmax Transformer's config, which the Linear Transformer's and the Performer's extend.
    max_len is the longest stream the model is meant for; sinusoids are computed on the fly, so it is
    not a hard limit (nothing is precomputed from it)."""

    model: ClassVar[str] = "transformer"
    n_heads: int = 4
    d_ff: int = 256
    dropout: float = 0.0
    max_len: int = 20000

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, not {self.n_layers}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


class Block(nn.Module):
    """Pre-LayerNorm residual block: h + Drop(Attn(LN(h))), then h + Drop(MLP(LN(h))),
    MLP = Linear(d_model, d_ff) -> GELU -> Linear(d_ff, d_model). (B, T, D) -> (B, T, D).
    The attention half is driven by the learner (it needs the state), so there is no forward()."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, attn: Attention) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = attn
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def finish(self, h: Tensor, attn_out: Tensor) -> Tensor:
        """Add the attention output attn_out to h, then the MLP half. h, attn_out: (..., D)."""
        h = h + self.drop(attn_out)
        return h + self.drop(self.mlp(self.ln_2(h)))


class AttentionLearner(Learner):
    """The shared attention learner: sinusoidal positions, ``layers`` (a list of ``Block``) and the
    base class's embedding, ``norm_f`` and head. A subclass picks the attention kernel."""

    config_class: ClassVar[type[LearnerConfig]] = TransformerConfig
    config: TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(
            Block(config.d_model, config.d_ff, config.dropout, self._make_attention(config))
            for _ in range(config.n_layers)
        )

    @abstractmethod
    def _make_attention(self, config: TransformerConfig) -> Attention:
        """One layer's attention module."""

    def _with_position(self, h: Tensor, start: int | Tensor, count: int) -> Tensor:
        """Add the sinusoids of positions start .. start + count - 1 along h's token axis (-2).
        start: an int, or a (1,) int64 tensor on h's device (a state's position counter)."""
        pos = start + torch.arange(count, device=h.device)
        return h + sinusoidal_positions(pos, self.config.d_model, h.dtype)

    @staticmethod
    def _next_position(state: State) -> int | Tensor:
        """Where the next token (or a query) sits: the state's device-side counter where it keeps one
        (the kernel attentions' fixed-size state, so that a captured step reads it), else its length."""
        counters = state.counters()
        return counters[0] if counters else state.length

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_tokens: int | None = None
    ) -> State:
        """A growing KV cache (Transformer; preallocated for max_tokens where given) or the fixed (S, z)."""
        memories = [l.attn.empty_memory(batch_size, device, dtype, max_tokens) for l in self.layers]
        return self.layers[0].attn.make_state(memories, 0, preallocated=max_tokens is not None)

    def scan(self, h: Tensor, keep_history: bool = False, ends: Tensor | None = None) -> State:
        """h: (B, L, D) -> the state after the stream (KV cache or S, z; with keep_history or ends the
        Performer/Linear state also keeps phi(K) (B, H, L, m) and V per layer). The KV cache and the
        kept features already answer queries at any boundary, so ends needs nothing more."""
        L = h.shape[1]
        h = self._with_position(h, 0, L)
        memories = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            a, mem = layer.attn.scan(layer.ln_1(h), keep_history or ends is not None)
            memories.append(mem)
            if i < last:  # the last layer's outputs are not needed for the state
                h = layer.finish(h, a)
        return self.layers[0].attn.make_state(memories, L)

    def step(self, state: State, h: Tensor) -> State:
        """h: (B, D), read at position state.length. Updates state in place and returns it."""
        x = self._with_position(h.unsqueeze(1), self._next_position(state), 1)  # (B, 1, D)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            a = layer.attn.step(state, i, layer.ln_1(x))
            if i < last:  # the last layer's output is not needed for the state
                x = layer.finish(x, a)
        state.length += 1
        for counter in state.counters():
            counter.add_(1)
        return state

    def read(
        self, state: State, hq: Tensor, with_rows: bool = False, query_end: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor] | None]:
        """hq: (B, Q, D), every query at position state.length (or at query_end[q], seeing the tokens
        before it) -> (B, Q, D) and, if with_rows, one (B, Q, state.length) row tensor per layer."""
        if query_end is None:
            x = self._with_position(hq, self._next_position(state), 1)
        else:
            x = hq + sinusoidal_positions(query_end, self.config.d_model, hq.dtype)
        rows: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            a, r = layer.attn.read(state, i, layer.ln_1(x), with_rows, query_end)
            x = layer.finish(x, a)
            if r is not None:
                rows.append(r)
        return x, (rows if with_rows else None)
