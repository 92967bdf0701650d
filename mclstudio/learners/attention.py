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
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mclstudio.learners.base import Learner, LearnerConfig, State

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


# ---- configs -------------------------------------------------------------------------------------
@dataclass
class TransformerConfig(LearnerConfig):
    """Softmax Transformer. max_len is the longest stream the model is meant for; sinusoids are computed
    on the fly, so it is not a hard limit (nothing is precomputed from it)."""

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


@dataclass
class LinearTransformerConfig(TransformerConfig):
    """Linear Transformer: feature map elu(x) + 1 on each head's queries and keys."""

    model: ClassVar[str] = "linear_transformer"


@dataclass
class PerformerConfig(TransformerConfig):
    """Performer: FAVOR+ positive orthogonal random features (n_features per layer, shared by heads)."""

    model: ClassVar[str] = "performer"
    n_features: int = 64


# ---- positions -----------------------------------------------------------------------------------
def sinusoidal_positions(positions: Tensor, d_model: int, dtype: torch.dtype) -> Tensor:
    """Vaswani et al.'s sinusoids: positions (T,) -> (T, d_model), channel 2i = sin(p / 10000^(2i/d)),
    channel 2i+1 = cos(same). Computed in at least float32, returned in dtype."""
    ct = torch.promote_types(dtype, torch.float32)
    half = (d_model + 1) // 2
    inv_freq = torch.exp(
        torch.arange(half, dtype=ct, device=positions.device) * (-2.0 * math.log(10000.0) / d_model)
    )
    angles = positions.to(ct)[:, None] * inv_freq  # (T, half)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[:, :d_model]
    return pe.to(dtype)


# ---- states --------------------------------------------------------------------------------------
class KVCacheState(State):
    """Softmax attention's memory: per layer the keys and values of every token read so far.

    keys[l], values[l]: (B, H, capacity, d_head) buffers of which the first ``length`` positions are used.
    Recurrent steps write into them in place and double the capacity when full (amortised O(1) per step),
    except when autograd is recording, where they grow out of place so earlier views stay valid.
    The cache is also the history that association rows need.
    """

    def __init__(self, keys: list[Tensor], values: list[Tensor], length: int) -> None:
        self.keys = keys
        self.values = values
        self.length = length

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Used keys and values of layer i: (B, H, length, d_head) each."""
        return self.keys[i][:, :, : self.length], self.values[i][:, :, : self.length]

    def append(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write layer i's k, v (B, H, 1, d_head) at position ``length``; return layer i's keys and values
        including it, (B, H, length + 1, d_head) each. ``length`` itself is advanced by the caller once
        every layer has been written."""
        t = self.length
        kb, vb = self.keys[i], self.values[i]
        recording = torch.is_grad_enabled() and (
            k.requires_grad or v.requires_grad or kb.requires_grad or vb.requires_grad
        )
        if recording:
            # In place would bump the version of tensors autograd saved in earlier steps.
            kb = torch.cat([kb[:, :, :t], k.to(kb.dtype)], dim=2)
            vb = torch.cat([vb[:, :, :t], v.to(vb.dtype)], dim=2)
        else:
            if kb.shape[2] <= t:
                cap = max(2 * kb.shape[2], t + 1, 16)
                kb = _grown(kb, t, cap)
                vb = _grown(vb, t, cap)
            kb[:, :, t : t + 1] = k
            vb[:, :, t : t + 1] = v
        self.keys[i], self.values[i] = kb, vb
        return kb[:, :, : t + 1], vb[:, :, : t + 1]

    def tensors(self) -> list[Tensor]:
        out: list[Tensor] = []
        for i in range(len(self.keys)):
            out.extend(self.layer(i))
        return out

    def layer_norms(self) -> Tensor:
        """(B, n_layers): Frobenius norm of [K; V] (used part) per layer, summed in float32 (an fp16
        cache's sum of squares would overflow)."""
        norms = []
        for i in range(len(self.keys)):
            k, v = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in self.layer(i))
            norms.append((k.pow(2).sum((1, 2, 3)) + v.pow(2).sum((1, 2, 3))).sqrt())
        return torch.stack(norms, dim=1)


def _grown(buf: Tensor, used: int, capacity: int) -> Tensor:
    """A fresh (B, H, capacity, d) buffer holding buf's first ``used`` positions."""
    new = buf.new_empty(buf.shape[0], buf.shape[1], capacity, buf.shape[3])
    new[:, :, :used] = buf[:, :, :used].detach()
    return new


class MatrixState(State):
    """Kernel (linear / Performer) attention's memory, fixed size: per layer
    S[l]: (B, H, m, d_head) = sum_j phi(k_j) v_j^T and z[l]: (B, H, m) = sum_j phi(k_j).

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
        self.phi_k = phi_k
        self.values = values

    def tensors(self) -> list[Tensor]:
        return [*self.S, *self.z]

    def layer_norms(self) -> Tensor:
        """(B, n_layers): Frobenius norm of [S, z] per layer."""
        return torch.stack(
            [(s.pow(2).sum((1, 2, 3)) + z.pow(2).sum((1, 2))).sqrt() for s, z in zip(self.S, self.z)],
            dim=1,
        )


def _stream_rows(w_stream: Tensor) -> Tensor:
    """(B, H, Q, L) attention weights of queries on the stream (their weight on themselves left out)
    -> (B, Q, L): averaged over heads and renormalised to sum 1 over the stream, in at least float32
    (they feed a KL regulariser)."""
    r = w_stream.to(torch.promote_types(w_stream.dtype, torch.float32)).mean(dim=1)
    return r / r.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)


# ---- attention kernels ---------------------------------------------------------------------------
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
    def empty_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """This layer's memory before any token."""

    @staticmethod
    @abstractmethod
    def make_state(memories: list[tuple[Tensor | None, ...]], length: int) -> State:
        """The state holding every layer's memory (as returned by ``empty_memory`` or ``scan``)."""

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


class SoftmaxAttention(Attention):
    """Exact softmax attention with scale 1/sqrt(d_head); the memory is a KV cache."""

    def empty_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        e = torch.zeros(batch_size, self.n_heads, 0, self.d_head, device=device, dtype=dtype)
        return e, e.clone()

    @staticmethod
    def make_state(memories: list[tuple[Tensor | None, ...]], length: int) -> KVCacheState:
        return KVCacheState([m[0] for m in memories], [m[1] for m in memories], length)  # type: ignore[misc]

    def scan(self, x: Tensor, keep_history: bool) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self._split(x)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # contiguous: the cache should not keep the whole qkv activation alive
        return self._merge(o), (k.contiguous(), v.contiguous())

    def step(self, state: State, i: int, x: Tensor) -> Tensor:
        assert isinstance(state, KVCacheState)
        q, k, v = self._split(x)
        keys, values = state.append(i, k, v)
        # one query over the whole cache, itself included: no mask needed
        return self._merge(F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype)))

    def read(
        self, state: State, i: int, xq: Tensor, with_rows: bool, query_end: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        assert isinstance(state, KVCacheState)
        q, k, v = self._split(xq)  # (B, H, Q, dh)
        keys, values = state.layer(i)  # (B, H, L, dh)
        L = keys.shape[2]
        scale = self.d_head**-0.5
        s_stream = (q @ keys.transpose(-1, -2).to(q.dtype)) * scale  # (B, H, Q, L)
        if query_end is not None:
            s_stream = s_stream.masked_fill(~_visible(query_end, L), float("-inf"))
        s_self = (q * k).sum(-1, keepdim=True) * scale  # (B, H, Q, 1): each query sees only itself
        w = torch.softmax(torch.cat([s_stream, s_self], dim=-1), dim=-1)
        w_stream, w_self = w[..., :L], w[..., L:]
        o = w_stream @ values.to(w.dtype) + w_self * v
        return self._merge(o), (_stream_rows(w_stream) if with_rows else None)


class EluFeatureMap(nn.Module):
    """phi(x) = elu(x) + 1 (Katharopoulos et al.): (..., d_head) -> (..., d_head), positive."""

    def __init__(self, d_head: int) -> None:
        super().__init__()
        self.n_features = d_head

    def forward(self, x: Tensor, is_query: bool) -> Tensor:
        return F.elu(x) + 1.0


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

    def empty_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        ct = torch.promote_types(dtype, torch.float32)
        B, H, m = batch_size, self.n_heads, self.n_features
        return (
            torch.zeros(B, H, m, self.d_head, device=device, dtype=ct),
            torch.zeros(B, H, m, device=device, dtype=ct),
        )

    @staticmethod
    def make_state(memories: list[tuple[Tensor | None, ...]], length: int) -> MatrixState:
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
            S = state.S[i] + pk.transpose(-1, -2) @ v  # (B, H, m, dh)
            z = state.z[i] + pk[:, :, 0]  # (B, H, m)
            o = (pq @ S) / ((pq @ z.unsqueeze(-1)) + self.eps)
        state.S[i], state.z[i] = S, z
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
                rows = _stream_rows(a_stream / den)
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
        a_stream = (pq @ phi_k.transpose(-1, -2)) * _visible(query_end, phi_k.shape[2]).to(pq.dtype)  # (B, H, Q, L)
        den = a_stream.sum(-1, keepdim=True) + a_self + self.eps
        o = (a_stream @ values + a_self * v) / den
        return self._merge(o.to(v.dtype)), (_stream_rows(a_stream / den) if with_rows else None)


def _visible(query_end: Tensor, length: int) -> Tensor:
    """(Q, length) bool: which stream tokens each query sees (the first query_end[q])."""
    return torch.arange(length, device=query_end.device)[None, :] < query_end[:, None]


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


# ---- the stack -----------------------------------------------------------------------------------
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

    def _with_position(self, h: Tensor, start: int, count: int) -> Tensor:
        """Add the sinusoids of positions start .. start + count - 1 along h's token axis (-2)."""
        pos = torch.arange(start, start + count, device=h.device)
        return h + sinusoidal_positions(pos, self.config.d_model, h.dtype)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        attn = self.layers[0].attn
        return attn.make_state([l.attn.empty_memory(batch_size, device, dtype) for l in self.layers], 0)

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
        x = self._with_position(h.unsqueeze(1), state.length, 1)  # (B, 1, D)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            a = layer.attn.step(state, i, layer.ln_1(x))
            if i < last:  # the last layer's output is not needed for the state
                x = layer.finish(x, a)
        state.length += 1
        return state

    def read(
        self, state: State, hq: Tensor, with_rows: bool = False, query_end: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor] | None]:
        """hq: (B, Q, D), every query at position state.length (or at query_end[q], seeing the tokens
        before it) -> (B, Q, D) and, if with_rows, one (B, Q, state.length) row tensor per layer."""
        if query_end is None:
            x = self._with_position(hq, state.length, 1)
        else:
            x = hq + sinusoidal_positions(query_end, self.config.d_model, hq.dtype)
        rows: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            a, r = layer.attn.read(state, i, layer.ln_1(x), with_rows, query_end)
            x = layer.finish(x, a)
            if r is not None:
                rows.append(r)
        return x, (rows if with_rows else None)


class TransformerLearner(AttentionLearner):
    """Softmax Transformer (Lee et al.'s strongest baseline); its state grows with the stream."""

    config_class: ClassVar[type[LearnerConfig]] = TransformerConfig

    def _make_attention(self, config: TransformerConfig) -> Attention:
        return SoftmaxAttention(config.d_model, config.n_heads)


class LinearTransformerLearner(AttentionLearner):
    """Linear Transformer (elu + 1 features); fixed-size state."""

    config_class: ClassVar[type[LearnerConfig]] = LinearTransformerConfig

    def _make_attention(self, config: TransformerConfig) -> Attention:
        d_head = config.d_model // config.n_heads
        return KernelAttention(config.d_model, config.n_heads, EluFeatureMap(d_head))


class PerformerLearner(AttentionLearner):
    """Performer (FAVOR+, features drawn once per layer at init and never redrawn); fixed-size state."""

    config_class: ClassVar[type[LearnerConfig]] = PerformerConfig
    config: PerformerConfig

    def _make_attention(self, config: TransformerConfig) -> Attention:
        assert isinstance(config, PerformerConfig)
        d_head = config.d_model // config.n_heads
        return KernelAttention(config.d_model, config.n_heads, FavorFeatureMap(d_head, config.n_features))
