"""Multi-head attention's projections and the interface every attention kernel implements, with the
two helpers the kernels share: association rows and the anytime queries' visibility mask.

Association rows (``read(..., with_rows=True)``): each layer's attention row of a query over the stream
tokens, averaged over heads, with the query's weight on itself dropped and the rest renormalised to sum 1.

Anytime queries (``read(..., query_end=e)``): query q sits at position e[q] and attends to the stream
tokens before it only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from mclstudio.learners.base import State


class Attention(nn.Module, ABC):
    """Multi-head attention projections shared by every kernel: ``qkv`` (d_model -> 3 d_model) and
    ``out`` (d_model -> d_model). A subclass supplies the kernel for the three ways of reading tokens.
    Inputs x are the layer-normed token embeddings, outputs are after ``out``."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, D) -> q, k, v: (B, H, T, d_head) each."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, o: Tensor) -> Tensor:
        """(B, H, T, d_head) -> (B, T, D) through ``out``."""
        B, H, T, dh = o.shape
        return self.out(o.transpose(1, 2).reshape(B, T, H * dh))

    @abstractmethod
    def empty_memory(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_tokens: int | None = None
    ) -> tuple[Tensor, ...]:
        """This layer's memory before any token; max_tokens (where known): the most tokens it will read,
        for a memory that grows to preallocate (``Learner.init_state``)."""

    @staticmethod
    @abstractmethod
    def make_state(memories: list[tuple[Tensor | None, ...]], length: int, preallocated: bool = False) -> State:
        """The state holding every layer's memory (as returned by ``empty_memory`` or ``scan``);
        preallocated: the memories are ``empty_memory(..., max_tokens)``'s buffers for the whole stream."""

    @abstractmethod
    def scan(self, x: Tensor, keep_history: bool) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        """Causal attention over a stream x: (B, L, D) -> (B, L, D) and this layer's memory after it."""

    @abstractmethod
    def step(self, state: State, i: int, x: Tensor) -> Tensor:
        """One token x: (B, 1, D) that sees the memory and itself; updates layer i's memory in ``state``
        (without advancing ``state.length``). Returns (B, 1, D)."""

    @abstractmethod
    def read(
        self, state: State, i: int, xq: Tensor, with_rows: bool, query_end: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Queries xq: (B, Q, D), each seeing layer i's memory and itself only (with query_end (Q,): only
        the first query_end[q] tokens of it). Returns (B, Q, D) and, if with_rows, the rows
        (B, Q, state.length). The state is unchanged."""


def stream_rows(w_stream: Tensor) -> Tensor:
    """(B, H, Q, L) attention weights of queries on the stream (their weight on themselves left out)
    -> (B, Q, L): averaged over heads and renormalised to sum 1 over the stream, in at least float32
    (they feed a KL regulariser)."""
    r = w_stream.to(torch.promote_types(w_stream.dtype, torch.float32)).mean(dim=1)
    return r / r.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)


def visible_tokens(query_end: Tensor, length: int) -> Tensor:
    """(Q, length) bool: which stream tokens each query sees (the first query_end[q])."""
    return torch.arange(length, device=query_end.device)[None, :] < query_end[:, None]
