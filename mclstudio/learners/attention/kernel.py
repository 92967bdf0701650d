"""Kernel attention (Linear Transformer, Performer): attention with a positive feature map phi,
out = phi(q) S / (phi(q) . z), S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j); the memory (S, z) has a
fixed size (``MatrixState``). The feature maps are the models' own (``linear_transformer``,
``performer``).

Anytime queries: the masked quadratic form phi(q) phi(K)^T over the prefix, which equals reading the
prefix sums S and z at the query's boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mclstudio.learners.attention.multihead import Attention, stream_rows, visible_tokens
from mclstudio.learners.base import State


class MatrixState(State):
    """Kernel (linear / Performer) attention's memory, fixed size: per layer
    S[l]: (B, H, m, d_head) = sum_j phi(k_j) v_j^T and z[l]: (B, H, m) = sum_j phi(k_j).

    position: (1,) int64 on the device, equal to ``length``: where the next token sits (``counters``), so
    that a step captured as a CUDA graph reads its position from the device.
    phi_k[l]: (B, H, length, m) and values[l]: (B, H, length, d_head), the features and values of every
    token read so far, kept only when asked for (``scan(..., keep_history=True)`` or with ``ends``)
    because association rows and anytime queries need them; they are not part of the memory proper (not
    in ``tensors()`` or ``nbytes()``).
    """

    def __init__(
        self, S: list[Tensor], z: list[Tensor], length: int, phi_k: list[Tensor] | None = None,
        values: list[Tensor] | None = None,
    ) -> None:
        self.S = S
        self.z = z
        self.length = length
        self.position = torch.full((1,), length, dtype=torch.long, device=S[0].device)
        self.phi_k = phi_k
        self.values = values

    def tensors(self) -> list[Tensor]:
        return [*self.S, *self.z]

    def counters(self) -> list[Tensor]:
        return [self.position]

    def layer_norms(self) -> Tensor:
        """(B, n_layers): Frobenius norm of [S, z] per layer."""
        return torch.stack(
            [(s.pow(2).sum((1, 2, 3)) + z.pow(2).sum((1, 2))).sqrt() for s, z in zip(self.S, self.z)],
            dim=1,
        )


class KernelAttention(Attention):
    """Linear attention with a positive feature map phi (Linear Transformer, Performer):
    out_t = phi(q_t) S_t / (phi(q_t) . z_t + eps) with S_t = sum_{j<=t} phi(k_j) v_j^T, z_t = sum_{j<=t} phi(k_j).

    Features, S and z are computed in at least float32 (autocast off). The parallel scan is the causal
    masked quadratic form phi(Q) phi(K)^T, done in chunks of ``chunk_size`` tokens (quadratic inside a
    chunk, running S and z between chunks), which equals the recurrence and bounds the memory.
    """

    eps: float = 1e-6
    chunk_size: int = 128

    def __init__(self, d_model: int, n_heads: int, feature_map: nn.Module) -> None:
        super().__init__(d_model, n_heads)
        self.feature_map = feature_map
        self.n_features: int = feature_map.n_features  # type: ignore[assignment]

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, D) -> phi(q), phi(k): (B, H, T, m) and v: (B, H, T, d_head), in the compute dtype."""
        q, k, v = self._split(x)  # projections follow any autocast in effect
        ct = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            return self.feature_map(q.to(ct), True), self.feature_map(k.to(ct), False), v.to(ct)

    def empty_memory(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_tokens: int | None = None
    ) -> tuple[Tensor, ...]:
        """(S, z) zeroed; their size does not depend on the stream, so max_tokens changes nothing."""
        ct = torch.promote_types(dtype, torch.float32)
        B, H, m = batch_size, self.n_heads, self.n_features
        return (
            torch.zeros(B, H, m, self.d_head, device=device, dtype=ct),
            torch.zeros(B, H, m, device=device, dtype=ct),
        )

    @staticmethod
    def make_state(memories: list[tuple[Tensor | None, ...]], length: int, preallocated: bool = False) -> MatrixState:
        S = [m[0] for m in memories]
        z = [m[1] for m in memories]
        kept = all(len(m) > 3 and m[2] is not None for m in memories)
        phi_k = [m[2] for m in memories] if kept else None
        values = [m[3] for m in memories] if kept else None
        return MatrixState(S, z, length, phi_k, values)  # type: ignore[arg-type]

    def scan(self, x: Tensor, keep_history: bool) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        pq, pk, v = self._features(x)
        with torch.autocast(x.device.type, enabled=False):
            o, S, z = _causal_linear_attention(pq, pk, v, self.eps, self.chunk_size)
        return self._merge(o.to(x.dtype)), (S, z, pk if keep_history else None, v if keep_history else None)

    def step(self, state: State, i: int, x: Tensor) -> Tensor:
        assert isinstance(state, MatrixState)
        pq, pk, v = self._features(x)  # (B, H, 1, .)
        with torch.autocast(x.device.type, enabled=False):
            add_S, add_z = pk.transpose(-1, -2) @ v, pk[:, :, 0]  # (B, H, m, dh), (B, H, m)
            if torch.is_grad_enabled():  # new tensors: autograd may have saved the old ones
                state.S[i], state.z[i] = state.S[i] + add_S, state.z[i] + add_z
            else:  # in place: the memory keeps its buffers (a replayed CUDA graph reads them)
                state.S[i].add_(add_S)
                state.z[i].add_(add_z)
            S, z = state.S[i], state.z[i]
            o = (pq @ S) / ((pq @ z.unsqueeze(-1)) + self.eps)
        if state.phi_k is not None:
            state.phi_k[i] = torch.cat([state.phi_k[i], pk.to(state.phi_k[i].dtype)], dim=2)
        if state.values is not None:
            state.values[i] = torch.cat([state.values[i], v.to(state.values[i].dtype)], dim=2)
        return self._merge(o.to(x.dtype))

    def read(
        self, state: State, i: int, xq: Tensor, with_rows: bool, query_end: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        assert isinstance(state, MatrixState)
        pq, pk, v = self._features(xq)  # (B, H, Q, .)
        with torch.autocast(xq.device.type, enabled=False):
            # the query's own token, added to the memory for itself alone: no per-query copy of S
            a_self = (pq * pk).sum(-1, keepdim=True)  # (B, H, Q, 1)
            if query_end is not None:
                return self._read_prefixes(state, i, pq, v, a_self, query_end, with_rows)
            S, z = state.S[i].to(pq.dtype), state.z[i].to(pq.dtype)
            den = pq @ z.unsqueeze(-1) + a_self + self.eps  # (B, H, Q, 1)
            o = (pq @ S + a_self * v) / den
            rows = None
            if with_rows:
                if state.phi_k is not None:
                    a_stream = pq @ state.phi_k[i].to(pq.dtype).transpose(-1, -2)  # (B, H, Q, L)
                elif state.length == 0:
                    a_stream = pq.new_zeros(*pq.shape[:3], 0)
                else:
                    raise ValueError("rows need a state from scan(..., keep_history=True)")
                rows = stream_rows(a_stream / den)
        return self._merge(o.to(xq.dtype)), rows

    def _read_prefixes(
        self, state: MatrixState, i: int, pq: Tensor, v: Tensor, a_self: Tensor, query_end: Tensor, with_rows: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``read`` of queries that see only the first query_end[q] tokens: phi(q) S_e = sum_{j<e}
        (phi(q) . phi(k_j)) v_j and phi(q) z_e likewise, as one masked product over the stream.
        pq (B, H, Q, m), v and a_self (the query's own value and weight) (B, H, Q, d_head) and (B, H, Q, 1)."""
        if state.phi_k is None or state.values is None:
            raise ValueError("query_end needs a state from scan(..., ends=...)")
        phi_k, values = state.phi_k[i].to(pq.dtype), state.values[i].to(pq.dtype)
        a_stream = (pq @ phi_k.transpose(-1, -2)) * visible_tokens(query_end, phi_k.shape[2]).to(pq.dtype)  # (B, H, Q, L)
        den = a_stream.sum(-1, keepdim=True) + a_self + self.eps
        o = (a_stream @ values + a_self * v) / den
        return self._merge(o.to(v.dtype)), (stream_rows(a_stream / den) if with_rows else None)


def _causal_linear_attention(
    pq: Tensor, pk: Tensor, v: Tensor, eps: float, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal kernel attention in parallel. pq, pk: (B, H, L, m), v: (B, H, L, dv) ->
    outputs (B, H, L, dv), final S (B, H, m, dv) and z (B, H, m)."""
    B, H, L, m = pq.shape
    dv = v.shape[-1]
    if L == 0:
        return v, pk.new_zeros(B, H, m, dv), pk.new_zeros(B, H, m)
    C = min(chunk, L)
    n = -(-L // C)
    pad = n * C - L
    if pad:  # zero features and values contribute nothing to the sums
        pq, pk, v = (F.pad(t, (0, 0, 0, pad)) for t in (pq, pk, v))
    q = pq.reshape(B, H, n, C, m)
    k = pk.reshape(B, H, n, C, m)
    vc = v.reshape(B, H, n, C, dv)
    a = (q @ k.transpose(-1, -2)).tril()  # (B, H, n, C, C): within a chunk, j <= t
    kv_cum = (k.transpose(-1, -2) @ vc).cumsum(dim=2)  # (B, H, n, m, dv): S after each chunk
    ks_cum = k.sum(dim=-2).cumsum(dim=2)  # (B, H, n, m): z after each chunk
    S_prev = torch.cat([kv_cum.new_zeros(B, H, 1, m, dv), kv_cum[:, :, :-1]], dim=2)
    z_prev = torch.cat([ks_cum.new_zeros(B, H, 1, m), ks_cum[:, :, :-1]], dim=2)
    num = a @ vc + q @ S_prev  # (B, H, n, C, dv)
    den = a.sum(-1, keepdim=True) + q @ z_prev.unsqueeze(-1)  # (B, H, n, C, 1)
    o = (num / (den + eps)).reshape(B, H, n * C, dv)[:, :, :L]
    return o, kv_cum[:, :, -1], ks_cum[:, :, -1]
