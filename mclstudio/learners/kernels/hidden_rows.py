"""The hidden-attention rows of queries over the stream (``hidden_attention.query_rows``), forward and
backward, on a GPU.

The stream's keys are H[l, d, n] = E[l, d, n] rate[l, d] key[l, n] with E = exp(R), R the log-decay from
token l to the end of the stream (``hidden_attention.stream_keys``). For Mamba the log-decay is delta * A,
so R = A[d, n] R_delta[l, d] with R_delta[l, d] = sum_{k>l} delta[k, d]: E is made from (L, d) inputs.
Other transitions (Longhorn's) pass R per state entry. The rows before normalisation are

    alpha[q, l] = (1 / d_inner) sum_{d, n} G[q, d, n] H[l, d, n]          (G: ``scan.query_weights``)

a (Q x dN) by (dN x L) product per episode. Made by PyTorch, H took 12 passes over (batch, L, d_inner,
N) float32 tensors per layer (flip, cumsum, exp, products, their backward and the recomputation under
checkpointing). Here:

- ``_keys_kernel`` writes H once, in one pass, from its (L, d), (L, N) and (d, N) factors, each tile
  a (tokens x channels x states) block so that every factor is loaded once and broadcast. G has the
  same form (G = exp(A delta_q) C: the query's step sizes for R, no rate, C for the key), so the same
  kernel makes it from the queries' (Q, d) and (Q, N) inputs;
- cuBLAS does the three products: alpha = G H^T, dG = dalpha H and dH = dalpha^T G, in TF32 (10-bit
  mantissas, float32 sums);
- ``_stream_grads_kernel`` turns dH (and dG) into the gradients of R, of the rate, of the key and of A
  in one pass, reducing over n in the tile and over channels (dkey) and tokens (dA) with atomic adds.

G and H are made again in the backward pass rather than kept (H is the largest tensor of a training
step).
Keys made in registers inside three tile-product kernels (the previous design) took 17.6 ms a layer
forward and backward at a paper-sized Mamba's shapes on an H200, against 4.5 ms written once with
cuBLAS's products (benchmarks/rows_sweep.py). R comes from the log-decay by a reverse cumulative sum in
PyTorch, which carries its gradient back. The rows only feed the selectivity regulariser
(benchmarks/train_agreement.py compares loss curves with and without the kernels).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from mclstudio.learners.kernels import triton
from mclstudio.learners.scan import Transition

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _keys_tile(R_ptr, delta_ptr, B_ptr, A_ptr, l, d, n, L, D,
                   stride_R_l, stride_delta_l, stride_B_l, N: tl.constexpr, PER_STATE: tl.constexpr):
        """The (tokens x channels x states) tile of H = E delta B for tokens l, channels d and states n,
        with E = exp(A R) (R per channel, Mamba) or exp(R) (PER_STATE: R per state entry, other
        transitions), and its factors E, delta (the rate, (l, d)), B (the key, (l, n)), A ((d, n), 1 if
        PER_STATE) and R; zeros outside."""
        ok_ld = (l[:, None] < L) & (d[None, :] < D)
        delta = tl.load(delta_ptr + l[:, None] * stride_delta_l + d[None, :], mask=ok_ld, other=0.0)[:, :, None]
        key = tl.load(B_ptr + l[:, None] * stride_B_l + n[None, :], mask=l[:, None] < L, other=0.0)[:, None, :]
        if PER_STATE:
            R = tl.load(R_ptr + l[:, None, None] * stride_R_l + d[None, :, None] * N + n[None, None, :],
                        mask=ok_ld[:, :, None], other=0.0)
            A = tl.full((1, d.shape[0], N), 1.0, tl.float32)
        else:
            R = tl.load(R_ptr + l[:, None] * stride_R_l + d[None, :], mask=ok_ld, other=0.0)[:, :, None]
            A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=d[:, None] < D, other=0.0)[None, :, :]
        E = tl.exp(A * R)
        return E * delta * key, E, delta, key, A, R

    @triton.jit
    def _keys_kernel(
        R_ptr, delta_ptr, B_ptr, A_ptr, H_ptr,
        L, D,
        stride_R_b, stride_R_l, stride_delta_b, stride_delta_l, stride_B_b, stride_B_l, stride_H_b, stride_H_l,
        N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, PER_STATE: tl.constexpr,
    ):
        """Grid (batch, L / BLOCK_L, D / BLOCK_D): H[l, d * N + n] = E delta B."""
        b = tl.program_id(0)
        l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, N)
        H, _, _, _, _, _ = _keys_tile(R_ptr + b * stride_R_b, delta_ptr + b * stride_delta_b, B_ptr + b * stride_B_b,
                                      A_ptr, l, d, n, L, D, stride_R_l, stride_delta_l, stride_B_l, N, PER_STATE)
        ok = ((l[:, None] < L) & (d[None, :] < D))[:, :, None]
        tl.store(H_ptr + b * stride_H_b + l[:, None, None] * stride_H_l + d[None, :, None] * N + n[None, None, :], H, mask=ok)

    @triton.jit
    def _stream_grads_kernel(
        dH_ptr, R_ptr, delta_ptr, B_ptr, A_ptr, dR_ptr, ddelta_ptr, dB_ptr, dA_ptr,
        L, D, scale,
        stride_dH_b, stride_dH_l, stride_R_b, stride_R_l, stride_delta_b, stride_delta_l, stride_B_b, stride_B_l,
        stride_dR_b, stride_dR_l, stride_ddelta_b, stride_ddelta_l, stride_dB_b, stride_dB_l,
        N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, PER_STATE: tl.constexpr,
    ):
        """Grid (batch, L / BLOCK_L, D / BLOCK_D): from the keys' gradient dH (times scale), with
        H = E delta B, E = exp(A R):  dR[l, d] = sum_n dH H A (PER_STATE: dR[l, d, n] = dH H);
        ddelta[l, d] = sum_n dH E B (the rate; R's share reaches its source in PyTorch);
        dB[l, n] += sum_d dH E delta;  dA[d, n] += sum_l dH H R (not PER_STATE)."""
        b = tl.program_id(0)
        l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, N)
        ok_ld = (l[:, None] < L) & (d[None, :] < D)
        lDn = l[:, None, None] * stride_dH_l + d[None, :, None] * N + n[None, None, :]
        dH = tl.load(dH_ptr + b * stride_dH_b + lDn, mask=ok_ld[:, :, None], other=0.0) * scale
        H, E, delta, key, A, R = _keys_tile(R_ptr + b * stride_R_b, delta_ptr + b * stride_delta_b, B_ptr + b * stride_B_b,
                                            A_ptr, l, d, n, L, D, stride_R_l, stride_delta_l, stride_B_l, N, PER_STATE)
        if PER_STATE:
            tl.store(dR_ptr + b * stride_dR_b + l[:, None, None] * stride_dR_l + d[None, :, None] * N + n[None, None, :],
                     dH * H, mask=ok_ld[:, :, None])
        else:
            tl.store(dR_ptr + b * stride_dR_b + l[:, None] * stride_dR_l + d[None, :], tl.sum(dH * H * A, axis=2), mask=ok_ld)
            tl.atomic_add(dA_ptr + d[:, None] * N + n[None, :], tl.sum(dH * H * R, axis=0), mask=d[:, None] < D)
        tl.store(ddelta_ptr + b * stride_ddelta_b + l[:, None] * stride_ddelta_l + d[None, :], tl.sum(dH * E * key, axis=2),
                 mask=ok_ld)
        tl.atomic_add(dB_ptr + b * stride_dB_b + l[:, None] * stride_dB_l + n[None, :], tl.sum(dH * E * delta, axis=1),
                      mask=l[:, None] < L)


# Tiles of 32 tokens x 16 channels x N states (benchmarks/rows_sweep.py).
BLOCK_L, BLOCK_D = 32, 16


@contextmanager
def _tf32_products() -> Iterator[None]:
    """float32 matrix products on tensor cores (TF32) inside the block, whatever the global setting."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _stream_keys(R: Tensor, rate: Tensor, key: Tensor, A: Tensor, per_state: bool) -> Tensor:
    """The stream's keys H (batch, L, d_inner * N) float32, from R (batch, L, d_inner) or, per_state,
    (batch, L, d_inner * N); rate (batch, L, d_inner); key (batch, L, N); A (d_inner, N) (unused if
    per_state)."""
    batch, L, D = rate.shape
    N = key.shape[-1]
    H = torch.empty(batch, L, D * N, dtype=torch.float32, device=R.device)
    _keys_kernel[(batch, triton.cdiv(L, BLOCK_L), triton.cdiv(D, BLOCK_D))](
        R, rate, key, A, H, L, D,
        R.stride(0), R.stride(1), rate.stride(0), rate.stride(1), key.stride(0), key.stride(1), H.stride(0), H.stride(1),
        N=N, BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D, PER_STATE=per_state,
    )
    return H


class HiddenRows(torch.autograd.Function):
    """alpha = (1/d_inner) einsum("bqdn,bldn->bql", G, H) with both sides made by ``_keys_kernel``:
    the queries' weights G = exp(A Rq) Cq (``scan.query_weights``: Rq their step sizes, or their
    log-decay per state entry when A is None) and the stream's keys H = exp(A R) rate key; float32
    keys, TF32 products. Neither side is kept for the backward pass: both are made again there."""

    @staticmethod
    def forward(ctx, Rq: Tensor, Cq: Tensor, R: Tensor, rate: Tensor, key: Tensor,  # type: ignore[override]
                A: Tensor | None) -> Tensor:
        per_state = A is None
        A = R.new_ones(1) if A is None else A
        Rq, Cq, R, rate, key, A = (t.float().contiguous() for t in (Rq, Cq, R, rate, key, A))
        ones = rate.new_ones(Rq.shape[0], Rq.shape[1], rate.shape[-1])  # the queries' side has no rate
        G = _stream_keys(Rq.flatten(2), ones, Cq, A, per_state)
        H = _stream_keys(R.flatten(2), rate, key, A, per_state)
        with _tf32_products():
            alpha = torch.bmm(G, H.transpose(1, 2)) / rate.shape[-1]
        ctx.per_state = per_state
        ctx.save_for_backward(Rq, Cq, R, rate, key, A)
        return alpha

    @staticmethod
    def backward(ctx, dalpha: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        Rq, Cq, R, rate, key, A = ctx.saved_tensors
        per_state = ctx.per_state
        D = rate.shape[-1]
        ones = rate.new_ones(Rq.shape[0], Rq.shape[1], D)
        Rq_flat, R_flat = Rq.flatten(2), R.flatten(2)
        dalpha = dalpha.float().contiguous()
        G = _stream_keys(Rq_flat, ones, Cq, A, per_state)
        H = _stream_keys(R_flat, rate, key, A, per_state)
        with _tf32_products():
            dG = torch.bmm(dalpha, H)  # (batch, Q, D * N), divided by D in the kernel
            del H
            dH = torch.bmm(dalpha.transpose(1, 2), G)  # (batch, L, D * N), likewise
        del G
        dRq, _, dCq, dAq = _grads_of_keys(dG, Rq_flat, ones, Cq, A, per_state, 1.0 / D)
        dR, drate, dkey, dA = _grads_of_keys(dH, R_flat, rate, key, A, per_state, 1.0 / D)
        return (dRq.view_as(Rq), dCq, dR.view_as(R), drate, dkey, None if per_state else dA + dAq)


def _grads_of_keys(dH: Tensor, R: Tensor, rate: Tensor, key: Tensor, A: Tensor, per_state: bool,
                   scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients of R, rate, key and A from the gradient dH (batch, L, D * N) of keys made by
    ``_stream_keys`` from them (times scale), by ``_stream_grads_kernel``."""
    batch, L, D = rate.shape
    N = key.shape[-1]
    dR, drate = torch.empty_like(R), torch.empty_like(rate)
    dkey, dA = torch.zeros_like(key), torch.zeros_like(A)
    _stream_grads_kernel[(batch, triton.cdiv(L, BLOCK_L), triton.cdiv(D, BLOCK_D))](
        dH, R, rate, key, A, dR, drate, dkey, dA, L, D, scale,
        dH.stride(0), dH.stride(1), R.stride(0), R.stride(1), rate.stride(0), rate.stride(1),
        key.stride(0), key.stride(1), dR.stride(0), dR.stride(1), drate.stride(0), drate.stride(1),
        dkey.stride(0), dkey.stride(1),
        N=N, BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D, PER_STATE=per_state,
    )
    return dR, drate, dkey, dA


def reverse_exclusive_cumsum(x: Tensor) -> Tensor:
    """R[l] = sum_{k>l} x[k] along dim 1 (time): a reverse cumulative sum less the token's own term."""
    return torch.flip(torch.cumsum(torch.flip(x, [1]), dim=1), [1]) - x


def mamba_rows(delta_q: Tensor, C: Tensor, delta: Tensor, B: Tensor, A: Tensor) -> Tensor:
    """Signed, channel-averaged hidden attention of queries over a Mamba stream, alpha (batch, Q, L).

    delta_q: (batch, Q, d_inner) the queries' step sizes (after softplus) and C (batch, Q, N) their
    read-outs; delta: (batch, L, d_inner) the stream's step sizes; B: (batch, L, N); A: (d_inner, N).
    Equals einsum("bqdn,bldn->bql", query_weights(C, delta_q[..., None] * A),
    stream_keys(mamba_transition(delta, A, B))) / d_inner.
    """
    delta = delta.float()
    return HiddenRows.apply(delta_q, C, reverse_exclusive_cumsum(delta), delta, B, A)


def transition_rows(query_move: Transition, C: Tensor, move: Transition) -> Tensor:
    """The same for any transition (Longhorn's): the queries' Transition (batch, Q, ...) and C (batch,
    Q, N); the stream's Transition move, time second, whose log-decay (batch, L, d_inner, N) is summed to
    the end of the stream in PyTorch. Equals einsum("bqdn,bldn->bql", query_weights(C,
    query_move.log_decay), stream_keys(move)) / d_inner."""
    R = reverse_exclusive_cumsum(move.log_decay.float())
    return HiddenRows.apply(query_move.log_decay, C, R, move.rate, move.key, None)
