"""Softmax attention (the Transformer's): exact attention with scale 1/sqrt(d_head), whose memory is a
KV cache that grows with the stream (``KVCacheState``). Anytime queries are a mask on the scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mclstudio.learners.attention.multihead import Attention, stream_rows, visible_tokens
from mclstudio.learners.base import State


class KVCacheState(State):
    """Softmax attention's memory: per layer the keys and values of every token read so far.

    keys[l], values[l]: (B, H, capacity, d_head) buffers of which the first ``length`` positions are used.
    Two kinds:

    - growing (``position`` None; training, the parallel path, any stream of unknown length): recurrent
      steps write into the buffers in place and double the capacity when full (amortised O(1) per step),
      except when autograd is recording, where they grow out of place so earlier views stay valid.
    - preallocated (``init_state(..., max_tokens=n)``, a stream of known length such as a studio
      episode): the buffers hold n tokens from the start and never change shape; ``position`` (1,) int64
      on the device equals ``length`` (``counters``), a step writes its token there and attention is
      masked beyond it, so the step reads no Python-level counter and can be captured as a CUDA graph
      (engine/graphs.py). Positions past ``length`` hold zeros or stale values, never read.

    ``nbytes`` is the used part in both kinds (``length`` tokens), not the reserved capacity
    (``reserved_nbytes``). The cache is also the history that association rows need.
    """

    def __init__(self, keys: list[Tensor], values: list[Tensor], length: int, position: Tensor | None = None) -> None:
        self.keys = keys
        self.values = values
        self.length = length
        self.position = position

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def preallocated(self) -> bool:
        return self.position is not None

    def counters(self) -> list[Tensor]:
        return [] if self.position is None else [self.position]

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Used keys and values of layer i: (B, H, length, d_head) each (host-side ``length``; a captured
        step uses ``visible`` instead)."""
        return self.keys[i][:, :, : self.length], self.values[i][:, :, : self.length]

    def visible(self, extra: int = 0) -> Tensor | None:
        """(capacity,) bool, True at the used positions (and ``extra`` more), computed on the device from
        ``position``; None for a growing cache, whose ``layer`` slices are exactly the used part."""
        if self.position is None:
            return None
        return torch.arange(self.capacity, device=self.position.device) < self.position + extra

    def append(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write layer i's k, v (B, H, 1, d_head) at position ``length``; return layer i's keys and values
        including it, (B, H, length + 1, d_head) each (preallocated: the whole buffers, to be masked with
        ``visible(1)``). ``length`` itself (and ``position``) is advanced by the caller once every layer
        has been written."""
        t = self.length
        kb, vb = self.keys[i], self.values[i]
        if self.position is not None:
            if t >= kb.shape[2]:
                raise ValueError(f"the preallocated KV cache holds {kb.shape[2]} tokens; token {t + 1} does not fit")
            kb.index_copy_(2, self.position, k.to(kb.dtype))  # at the device-side position: no host counter
            vb.index_copy_(2, self.position, v.to(vb.dtype))
            return kb, vb
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
        """The used keys and values per layer; preallocated: the whole buffers (the ones a captured step
        writes into)."""
        if self.position is not None:
            return [*self.keys, *self.values]
        out: list[Tensor] = []
        for i in range(len(self.keys)):
            out.extend(self.layer(i))
        return out

    def nbytes(self) -> int:
        """Bytes of the keys and values of the ``length`` tokens read (either kind)."""
        per_token = sum(t.shape[0] * t.shape[1] * t.shape[3] * t.element_size() for t in [*self.keys, *self.values])
        return per_token * self.length

    def reserved_nbytes(self) -> int:
        """Bytes the buffers take, used or not (a preallocated cache: the whole stream's)."""
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values])

    def layer_norms(self) -> Tensor:
        """(B, n_layers): Frobenius norm of [K; V] (used part) per layer, summed in float32 (an fp16
        cache's sum of squares would overflow)."""
        visible = self.visible()
        norms = []
        for i in range(len(self.keys)):
            kv = (self.keys[i], self.values[i]) if visible is not None else self.layer(i)
            k, v = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in kv)
            if visible is not None:  # the used positions only, from the device-side position
                k, v = (torch.where(visible[:, None], t, 0.0) for t in (k, v))
            norms.append((k.pow(2).sum((1, 2, 3)) + v.pow(2).sum((1, 2, 3))).sqrt())
        return torch.stack(norms, dim=1)


def _grown(buf: Tensor, used: int, capacity: int) -> Tensor:
    """A fresh (B, H, capacity, d) buffer holding buf's first ``used`` positions."""
    new = buf.new_empty(buf.shape[0], buf.shape[1], capacity, buf.shape[3])
    new[:, :, :used] = buf[:, :, :used].detach()
    return new


class SoftmaxAttention(Attention):
    """Exact softmax attention with scale 1/sqrt(d_head); the memory is a KV cache."""

    def empty_memory(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_tokens: int | None = None
    ) -> tuple[Tensor, ...]:
        """Empty keys and values, (B, H, 0, d_head); with max_tokens, zeroed buffers for that many tokens."""
        e = torch.zeros(batch_size, self.n_heads, max_tokens or 0, self.d_head, device=device, dtype=dtype)
        return e, e.clone()

    @staticmethod
    def make_state(memories: list[tuple[Tensor | None, ...]], length: int, preallocated: bool = False) -> KVCacheState:
        keys, values = [m[0] for m in memories], [m[1] for m in memories]
        position = torch.full((1,), length, dtype=torch.long, device=keys[0].device) if preallocated else None
        return KVCacheState(keys, values, length, position)  # type: ignore[arg-type]

    def scan(self, x: Tensor, keep_history: bool) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self._split(x)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # contiguous: the cache should not keep the whole qkv activation alive
        return self._merge(o), (k.contiguous(), v.contiguous())

    def step(self, state: State, i: int, x: Tensor) -> Tensor:
        assert isinstance(state, KVCacheState)
        q, k, v = self._split(x)
        keys, values = state.append(i, k, v)
        # one query over the whole cache, itself included: no mask needed, except beyond the position of
        # a preallocated cache
        visible = state.visible(1)
        mask = None if visible is None else visible[None, :]  # (1, capacity): the one query's row
        return self._merge(F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask))

    def read(
        self, state: State, i: int, xq: Tensor, with_rows: bool, query_end: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        assert isinstance(state, KVCacheState)
        q, k, v = self._split(xq)  # (B, H, Q, dh)
        visible = state.visible()  # preallocated: the whole buffers, masked beyond the position
        keys, values = (state.keys[i], state.values[i]) if visible is not None else state.layer(i)  # (B, H, L, dh)
        L = keys.shape[2]
        scale = self.d_head**-0.5
        s_stream = (q @ keys.transpose(-1, -2).to(q.dtype)) * scale  # (B, H, Q, L)
        if query_end is not None:
            ends = visible_tokens(query_end, L)
            visible = ends if visible is None else ends & visible
        if visible is not None:
            s_stream = s_stream.masked_fill(~visible, float("-inf"))
        s_self = (q * k).sum(-1, keepdim=True) * scale  # (B, H, Q, 1): each query sees only itself
        w = torch.softmax(torch.cat([s_stream, s_self], dim=-1), dim=-1)
        w_stream, w_self = w[..., :L], w[..., L:]
        o = w_stream @ values.to(w.dtype) + w_self * v
        return self._merge(o), (stream_rows(w_stream[..., : state.length]) if with_rows else None)
