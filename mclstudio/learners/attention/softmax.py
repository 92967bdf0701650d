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
            s_stream = s_stream.masked_fill(~visible_tokens(query_end, L), float("-inf"))
        s_self = (q * k).sum(-1, keepdim=True) * scale  # (B, H, Q, 1): each query sees only itself
        w = torch.softmax(torch.cat([s_stream, s_self], dim=-1), dim=-1)
        w_stream, w_self = w[..., :L], w[..., L:]
        o = w_stream @ values.to(w.dtype) + w_self * v
        return self._merge(o), (stream_rows(w_stream) if with_rows else None)
