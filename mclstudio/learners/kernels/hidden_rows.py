"""The hidden-attention rows of queries over the stream (``hidden_attention.query_rows``), forward and
backward, without the (batch, L, d_inner, N) keys in memory.

The stream's keys are H[l, d, n] = E[l, d, n] rate[l, d] key[l, n] with E = exp(R), R the log-decay from
token l to the end of the stream (``hidden_attention.stream_keys``). For Mamba the log-decay is delta * A,
so R = A[d, n] R_delta[l, d] with R_delta[l, d] = sum_{k>l} delta[k, d]: E is made from (L, d) inputs.
Other transitions (Longhorn's) pass R per state entry. The rows before normalisation are

    alpha[q, l] = (1 / d_inner) sum_{d, n} G[q, d, n] H[l, d, n]          (G: ``scan.query_weights``)

a (Q x dN) by (dN x L) product whose right factor is made on the fly. Made by PyTorch, H took 12
passes over (batch, L, d_inner, N) float32 tensors per layer (flip, cumsum, exp, products, their
backward and the recomputation under checkpointing): about 200 of the 490 ms of a paper-sized Mamba's
training step on an H200 (benchmarks/results/train_speed_h200.json). Here each program makes its tiles
of H in registers:

- forward: a (queries x tokens) tile of alpha, summing tile products over d*N;
- backward for G: dG = dalpha @ H, a (queries x d*N) tile summing over tokens;
- backward for the stream: dH = dalpha^T @ G per (tokens x d*N) tile, turned at once into the
  gradients of R, of the rate, of the key and of A, reduced over n in the tile, and over channels
  (dkey) and tokens (dA) with atomic adds.

``HiddenRows`` is an autograd function; R comes from the log-decay by a reverse cumulative sum in
PyTorch, which carries its gradient back. The tile products run on tensor cores in TF32 (10-bit
mantissas, float32 sums): in exact float32 the three kernels took 76 ms a layer on an H200, mostly the
dG product. The rows only feed the selectivity regulariser, whose loss curves with and without these
kernels agree within the seed-to-seed spread (benchmarks/train_agreement.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.kernels import fused_kernels_enabled, power_of_2, triton
from mclstudio.learners.scan import Transition

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _keys_tile(R_ptr, delta_ptr, B_ptr, A_ptr, l, dn, L, dN,
                   stride_R_l, stride_delta_l, stride_B_l, N: tl.constexpr, PER_STATE: tl.constexpr):
        """The (tokens x d*N) tile of H = E delta B for tokens l and flattened (d, n) indices dn, with
        E = exp(A R) (R per channel, Mamba) or exp(R) (PER_STATE: R per state entry, other transitions),
        and its factors E, delta (the rate), B (the key), A (1 if PER_STATE) and R; zeros outside."""
        d, n = dn // N, dn % N
        ok = (l[:, None] < L) & (dn[None, :] < dN)
        delta = tl.load(delta_ptr + l[:, None] * stride_delta_l + d[None, :], mask=ok, other=0.0)
        key = tl.load(B_ptr + l[:, None] * stride_B_l + n[None, :], mask=ok, other=0.0)
        if PER_STATE:
            R = tl.load(R_ptr + l[:, None] * stride_R_l + dn[None, :], mask=ok, other=0.0)
            A = tl.full((dn.shape[0],), 1.0, tl.float32)
        else:
            R = tl.load(R_ptr + l[:, None] * stride_R_l + d[None, :], mask=ok, other=0.0)
            A = tl.load(A_ptr + dn, mask=dn < dN, other=0.0)
        E = tl.exp(A[None, :] * R)
        return E * delta * key, E, delta, key, A, R

    @triton.jit
    def _rows_forward_kernel(
        G_ptr, R_ptr, delta_ptr, B_ptr, A_ptr, alpha_ptr,
        Q, L, dN, scale,
        stride_G_b, stride_G_q, stride_R_b, stride_R_l, stride_delta_b, stride_delta_l,
        stride_B_b, stride_B_l, stride_alpha_b, stride_alpha_q,
        N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_DN: tl.constexpr, PER_STATE: tl.constexpr,
    ):
        """Grid (batch, Q / BLOCK_Q, L / BLOCK_L): alpha[q, l] = scale * sum_dn G[q, dn] H[l, dn]."""
        b = tl.program_id(0)
        q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        l = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
        G_ptr += b * stride_G_b
        acc = tl.zeros((BLOCK_Q, BLOCK_L), tl.float32)
        for start in range(0, dN, BLOCK_DN):
            dn = start + tl.arange(0, BLOCK_DN)
            H, _, _, _, _, _ = _keys_tile(R_ptr + b * stride_R_b, delta_ptr + b * stride_delta_b, B_ptr + b * stride_B_b,
                                          A_ptr, l, dn, L, dN, stride_R_l, stride_delta_l, stride_B_l, N, PER_STATE)
            G = tl.load(G_ptr + q[:, None] * stride_G_q + dn[None, :], mask=(q[:, None] < Q) & (dn[None, :] < dN), other=0.0)
            acc += tl.dot(G, tl.trans(H), input_precision="tf32")
        ok = (q[:, None] < Q) & (l[None, :] < L)
        tl.store(alpha_ptr + b * stride_alpha_b + q[:, None] * stride_alpha_q + l[None, :], acc * scale, mask=ok)

    @triton.jit
    def _rows_grad_G_kernel(
        dalpha_ptr, R_ptr, delta_ptr, B_ptr, A_ptr, dG_ptr,
        Q, L, dN, scale,
        stride_dalpha_b, stride_dalpha_q, stride_R_b, stride_R_l, stride_delta_b, stride_delta_l,
        stride_B_b, stride_B_l, stride_dG_b, stride_dG_q,
        N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_DN: tl.constexpr, PER_STATE: tl.constexpr,
    ):
        """Grid (batch, Q / BLOCK_Q, dN / BLOCK_DN): dG[q, dn] = scale * sum_l dalpha[q, l] H[l, dn]."""
        b = tl.program_id(0)
        q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        dn = tl.program_id(2) * BLOCK_DN + tl.arange(0, BLOCK_DN)
        acc = tl.zeros((BLOCK_Q, BLOCK_DN), tl.float32)
        for start in range(0, L, BLOCK_L):
            l = start + tl.arange(0, BLOCK_L)
            H, _, _, _, _, _ = _keys_tile(R_ptr + b * stride_R_b, delta_ptr + b * stride_delta_b, B_ptr + b * stride_B_b,
                                          A_ptr, l, dn, L, dN, stride_R_l, stride_delta_l, stride_B_l, N, PER_STATE)
            dalpha = tl.load(dalpha_ptr + b * stride_dalpha_b + q[:, None] * stride_dalpha_q + l[None, :],
                             mask=(q[:, None] < Q) & (l[None, :] < L), other=0.0)
            acc += tl.dot(dalpha, H, input_precision="tf32")
        ok = (q[:, None] < Q) & (dn[None, :] < dN)
        tl.store(dG_ptr + b * stride_dG_b + q[:, None] * stride_dG_q + dn[None, :], acc * scale, mask=ok)

    @triton.jit
    def _rows_grad_stream_kernel(
        dalpha_ptr, G_ptr, R_ptr, delta_ptr, B_ptr, A_ptr, dR_ptr, ddelta_ptr, dB_ptr, dA_ptr,
        Q, L, dN, scale,
        stride_dalpha_b, stride_dalpha_q, stride_G_b, stride_G_q, stride_R_b, stride_R_l,
        stride_delta_b, stride_delta_l, stride_B_b, stride_B_l, stride_dR_b, stride_dR_l, stride_ddelta_b, stride_ddelta_l,
        stride_dB_b, stride_dB_l,
        N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_DN: tl.constexpr, PER_STATE: tl.constexpr,
    ):
        """Grid (batch, L / BLOCK_L, dN / BLOCK_DN): dH = scale * dalpha^T G on a (tokens x d*N) tile, then
        with H = E delta B, E = exp(A R):  dR[l, d] = sum_n dH H A (PER_STATE: dR[l, dn] = dH H);
        ddelta[l, d] = sum_n dH E B (the rate; R's share reaches its source in PyTorch);
        dB[l, n] += sum_d dH E delta;  dA[dn] += sum_l dH H R (not PER_STATE)."""
        b = tl.program_id(0)
        l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        dn = tl.program_id(2) * BLOCK_DN + tl.arange(0, BLOCK_DN)
        dH = tl.zeros((BLOCK_L, BLOCK_DN), tl.float32)
        for start in range(0, Q, BLOCK_Q):
            q = start + tl.arange(0, BLOCK_Q)
            dalpha = tl.load(dalpha_ptr + b * stride_dalpha_b + q[:, None] * stride_dalpha_q + l[None, :],
                             mask=(q[:, None] < Q) & (l[None, :] < L), other=0.0)
            G = tl.load(G_ptr + b * stride_G_b + q[:, None] * stride_G_q + dn[None, :],
                        mask=(q[:, None] < Q) & (dn[None, :] < dN), other=0.0)
            dH += tl.dot(tl.trans(dalpha), G, input_precision="tf32")
        dH = dH * scale
        H, E, delta, key, A, R = _keys_tile(R_ptr + b * stride_R_b, delta_ptr + b * stride_delta_b, B_ptr + b * stride_B_b,
                                            A_ptr, l, dn, L, dN, stride_R_l, stride_delta_l, stride_B_l, N, PER_STATE)
        BLOCK_D: tl.constexpr = BLOCK_DN // N
        d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        ok_ld = (l[:, None] < L) & (d[None, :] < dN // N)
        if PER_STATE:
            tl.store(dR_ptr + b * stride_dR_b + l[:, None] * stride_dR_l + dn[None, :], dH * H,
                     mask=(l[:, None] < L) & (dn[None, :] < dN))
        else:
            dR = tl.sum(tl.reshape(dH * H * A[None, :], (BLOCK_L, BLOCK_D, N)), axis=2)
            tl.store(dR_ptr + b * stride_dR_b + l[:, None] * stride_dR_l + d[None, :], dR, mask=ok_ld)
        ddelta = tl.sum(tl.reshape(dH * E * key, (BLOCK_L, BLOCK_D, N)), axis=2)
        tl.store(ddelta_ptr + b * stride_ddelta_b + l[:, None] * stride_ddelta_l + d[None, :], ddelta, mask=ok_ld)
        dB = tl.sum(tl.reshape(dH * E * delta, (BLOCK_L, BLOCK_D, N)), axis=1)  # (BLOCK_L, N)
        n = tl.arange(0, N)
        tl.atomic_add(dB_ptr + b * stride_dB_b + l[:, None] * stride_dB_l + n[None, :], dB, mask=l[:, None] < L)
        if not PER_STATE:
            tl.atomic_add(dA_ptr + dn, tl.sum(dH * H * R, axis=0), mask=dn < dN)


# Tiles: (queries x tokens) products over 64 of the d*N entries at a time (4 channels of 16 states).
BLOCK_Q, BLOCK_L, BLOCK_DN = 64, 64, 64


def fused_rows_supported(G: Tensor) -> bool:
    """Whether ``mamba_rows`` takes queries' weights G (B, Q, d_inner, N): kernels on, N a power of 2 that
    divides the d*N tile."""
    N = G.shape[-1]
    return fused_kernels_enabled() and G.dim() == 4 and power_of_2(N) and N <= BLOCK_DN


def _rows_call(G: Tensor) -> tuple[int, int, int, int, float]:
    batch, Q, d_inner, N = G.shape
    return batch, Q, d_inner * N, N, 1.0 / d_inner


class HiddenRows(torch.autograd.Function):
    """alpha = (1/d_inner) einsum("bqdn,bldn->bql", G, E * rate * key), E = exp(A R) or exp(R), in float32."""

    @staticmethod
    def forward(ctx, G: Tensor, R: Tensor, rate: Tensor, key: Tensor, A: Tensor | None) -> Tensor:  # type: ignore[override]
        per_state = A is None
        A = R.new_ones(1) if A is None else A
        G, R, rate, key, A = (t.float().contiguous() for t in (G, R, rate, key, A))
        batch, Q, dN, N, scale = _rows_call(G)
        L = R.shape[1]
        alpha = G.new_empty(batch, Q, L)
        R_flat = R.flatten(2)  # (batch, L, d) or (batch, L, d * N)
        _rows_forward_kernel[(batch, triton.cdiv(Q, BLOCK_Q), triton.cdiv(L, BLOCK_L))](
            G, R_flat, rate, key, A, alpha, Q, L, dN, scale,
            G.stride(0), G.stride(1), R_flat.stride(0), R_flat.stride(1), rate.stride(0), rate.stride(1),
            key.stride(0), key.stride(1), alpha.stride(0), alpha.stride(1),
            N=N, BLOCK_Q=BLOCK_Q, BLOCK_L=BLOCK_L, BLOCK_DN=BLOCK_DN, PER_STATE=per_state,
        )
        ctx.per_state = per_state
        ctx.save_for_backward(G, R, rate, key, A)
        return alpha

    @staticmethod
    def backward(ctx, dalpha: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        G, R, rate, key, A = ctx.saved_tensors
        per_state = ctx.per_state
        dalpha = dalpha.float().contiguous()
        batch, Q, dN, N, scale = _rows_call(G)
        L = R.shape[1]
        R_flat = R.flatten(2)
        dG = torch.empty_like(G)
        _rows_grad_G_kernel[(batch, triton.cdiv(Q, BLOCK_Q), triton.cdiv(dN, BLOCK_DN))](
            dalpha, R_flat, rate, key, A, dG, Q, L, dN, scale,
            dalpha.stride(0), dalpha.stride(1), R_flat.stride(0), R_flat.stride(1), rate.stride(0), rate.stride(1),
            key.stride(0), key.stride(1), dG.stride(0), dG.stride(1),
            N=N, BLOCK_Q=BLOCK_Q, BLOCK_L=BLOCK_L, BLOCK_DN=BLOCK_DN, PER_STATE=per_state,
        )
        dR, drate = torch.empty_like(R_flat), torch.empty_like(rate)
        dkey, dA = torch.zeros_like(key), torch.zeros_like(A)
        _rows_grad_stream_kernel[(batch, triton.cdiv(L, BLOCK_L), triton.cdiv(dN, BLOCK_DN))](
            dalpha, G, R_flat, rate, key, A, dR, drate, dkey, dA, Q, L, dN, scale,
            dalpha.stride(0), dalpha.stride(1), G.stride(0), G.stride(1), R_flat.stride(0), R_flat.stride(1),
            rate.stride(0), rate.stride(1), key.stride(0), key.stride(1), dR.stride(0), dR.stride(1),
            drate.stride(0), drate.stride(1), dkey.stride(0), dkey.stride(1),
            N=N, BLOCK_Q=BLOCK_Q, BLOCK_L=BLOCK_L, BLOCK_DN=BLOCK_DN, PER_STATE=per_state,
        )
        return dG, dR.view_as(R), drate, dkey, None if per_state else dA


def reverse_exclusive_cumsum(x: Tensor) -> Tensor:
    """R[l] = sum_{k>l} x[k] along dim 1 (time): a reverse cumulative sum less the token's own term."""
    return torch.flip(torch.cumsum(torch.flip(x, [1]), dim=1), [1]) - x


def mamba_rows(G: Tensor, delta: Tensor, B: Tensor, A: Tensor) -> Tensor:
    """Signed, channel-averaged hidden attention of queries over a Mamba stream, alpha (batch, Q, L).

    G: (batch, Q, d_inner, N) the queries' weights; delta: (batch, L, d_inner) the stream's step sizes
    (after softplus); B: (batch, L, N); A: (d_inner, N). Equals
    einsum("bqdn,bldn->bql", G, stream_keys(mamba_transition(delta, A, B))) / d_inner.
    """
    delta = delta.float()
    return HiddenRows.apply(G, reverse_exclusive_cumsum(delta), delta, B, A)


def transition_rows(G: Tensor, move: Transition) -> Tensor:
    """The same for any transition (Longhorn's): the stream's Transition move, time second, whose
    log-decay (batch, L, d_inner, N) is summed to the end of the stream in PyTorch. Equals
    einsum("bqdn,bldn->bql", G, stream_keys(move)) / d_inner."""
    return HiddenRows.apply(G, reverse_exclusive_cumsum(move.log_decay.float()), move.rate, move.key, None)
