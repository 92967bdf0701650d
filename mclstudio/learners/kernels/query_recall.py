"""What Mamba's queries recall of the state, for training: forward and backward without the (batch, Q,
d_inner, N) tensors PyTorch makes.

A query read from state h (``scan.diagonal_read``) recalls

    recalled[q, d] = sum_n G[q, d, n] h[d, n],   G[q, d, n] = C[q, n] exp(delta[q, d] A[d, n])

(G is ``scan.query_weights``). In PyTorch each layer of a training step builds the log-decay, its
exponential, G and G * h as (batch, Q, d_inner, N) float32 tensors and walks them again backwards: about
20 passes over 210 MB a layer at a paper-sized Mamba's shapes (64 episodes of 100 queries). Here one
program takes a (queries x channels x states) tile, loads delta (Q, d), C (Q, N), A (d, N) and h once
each and reduces over n in registers. The backward kernel walks the queries of a channel block, so that
the gradients of A and of a state every query shares are summed in registers; C's gradient, summed over
channels, is added atomically. h is the last state (batch, d_inner, N), or one per query (batch, Q,
d_inner, N) for the anytime objective.

Inference keeps ``kernels.mamba_read`` (the whole read in one kernel, no backward). Tested on the CPU
through Triton's interpreter against the PyTorch code (tests/triton_interpreted.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.kernels import fused_states_supported, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _recall_forward_kernel(
        h_ptr, delta_ptr, C_ptr, A_ptr, out_ptr,
        Q, D,
        stride_h_b, stride_h_q, stride_delta_b, stride_delta_q, stride_C_b, stride_C_q, stride_out_b, stride_out_q,
        N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, PER_QUERY: tl.constexpr,
    ):
        """Grid (batch, Q / BLOCK_Q, D / BLOCK_D): out[q, d] = sum_n C[q, n] exp(delta[q, d] A[d, n]) h[(q,) d, n]."""
        b = tl.program_id(0)
        q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, N)
        ok = (q[:, None] < Q) & (d[None, :] < D)
        delta = tl.load(delta_ptr + b * stride_delta_b + q[:, None] * stride_delta_q + d[None, :], mask=ok, other=0.0)
        C = tl.load(C_ptr + b * stride_C_b + q[:, None] * stride_C_q + n[None, :], mask=q[:, None] < Q, other=0.0)
        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=d[:, None] < D, other=0.0)
        G = tl.exp(delta[:, :, None] * A[None, :, :]) * C[:, None, :]
        if PER_QUERY:
            h = tl.load(h_ptr + b * stride_h_b + q[:, None, None] * stride_h_q + d[None, :, None] * N + n[None, None, :],
                        mask=ok[:, :, None], other=0.0)
        else:
            h = tl.load(h_ptr + b * stride_h_b + d[:, None] * N + n[None, :], mask=d[:, None] < D, other=0.0)[None, :, :]
        tl.store(out_ptr + b * stride_out_b + q[:, None] * stride_out_q + d[None, :], tl.sum(G * h, axis=2), mask=ok)

    @triton.jit
    def _recall_backward_kernel(
        h_ptr, delta_ptr, C_ptr, A_ptr, dout_ptr, dh_ptr, ddelta_ptr, dC_ptr, dA_ptr,
        Q, D,
        stride_h_b, stride_h_q, stride_delta_b, stride_delta_q, stride_C_b, stride_C_q, stride_dout_b, stride_dout_q,
        stride_dh_b, stride_dh_q, stride_ddelta_b, stride_ddelta_q, stride_dC_b, stride_dC_q,
        N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, PER_QUERY: tl.constexpr,
    ):
        """Grid (batch, D / BLOCK_D), walking the queries: with E = exp(delta A), G = E C, dG = dout h:
        ddelta[q, d] = sum_n dG G A;  dC[q, n] += sum_d dG E;  dA[d, n] += sum_q dG G delta;
        dh[d, n] = sum_q dout G (PER_QUERY: dh[q, d, n] = dout G)."""
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, N)
        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=d[:, None] < D, other=0.0)
        dA = tl.zeros((BLOCK_D, N), tl.float32)
        dh_shared = tl.zeros((BLOCK_D, N), tl.float32)
        if not PER_QUERY:
            h_shared = tl.load(h_ptr + b * stride_h_b + d[:, None] * N + n[None, :], mask=d[:, None] < D, other=0.0)
        for start in range(0, Q, BLOCK_Q):
            q = start + tl.arange(0, BLOCK_Q)
            ok = (q[:, None] < Q) & (d[None, :] < D)
            delta = tl.load(delta_ptr + b * stride_delta_b + q[:, None] * stride_delta_q + d[None, :], mask=ok, other=0.0)
            C = tl.load(C_ptr + b * stride_C_b + q[:, None] * stride_C_q + n[None, :], mask=q[:, None] < Q, other=0.0)
            dout = tl.load(dout_ptr + b * stride_dout_b + q[:, None] * stride_dout_q + d[None, :], mask=ok, other=0.0)
            E = tl.exp(delta[:, :, None] * A[None, :, :])
            G = E * C[:, None, :]
            qdn = q[:, None, None] * stride_h_q + d[None, :, None] * N + n[None, None, :]
            if PER_QUERY:
                h = tl.load(h_ptr + b * stride_h_b + qdn, mask=ok[:, :, None], other=0.0)
            else:
                h = h_shared[None, :, :]
            dG = dout[:, :, None] * h
            dGG = dG * G
            tl.store(ddelta_ptr + b * stride_ddelta_b + q[:, None] * stride_ddelta_q + d[None, :],
                     tl.sum(dGG * A[None, :, :], axis=2), mask=ok)
            tl.atomic_add(dC_ptr + b * stride_dC_b + q[:, None] * stride_dC_q + n[None, :], tl.sum(dG * E, axis=1),
                          mask=q[:, None] < Q)
            dA += tl.sum(dGG * delta[:, :, None], axis=0)
            if PER_QUERY:
                tl.store(dh_ptr + b * stride_dh_b + q[:, None, None] * stride_dh_q + d[None, :, None] * N + n[None, None, :],
                         dout[:, :, None] * G, mask=ok[:, :, None])
            else:
                dh_shared += tl.sum(dout[:, :, None] * G, axis=0)
        tl.atomic_add(dA_ptr + d[:, None] * N + n[None, :], dA, mask=d[:, None] < D)
        if not PER_QUERY:
            tl.store(dh_ptr + b * stride_dh_b + d[:, None] * N + n[None, :], dh_shared, mask=d[:, None] < D)


BLOCK_Q, BLOCK_D = 16, 16


def fused_recall_supported(h: Tensor) -> bool:
    """Whether ``mamba_recall`` takes the state h (B, d_inner, N) or (B, Q, d_inner, N)
    (``kernels.fused_states_supported`` for N)."""
    return h.dim() in (3, 4) and fused_states_supported(h.shape[-1])


class MambaRecall(torch.autograd.Function):
    """recalled (B, Q, d_inner) float32 = sum_n C exp(delta A) h, for h (B, d_inner, N) or (B, Q, d_inner, N)."""

    @staticmethod
    def forward(ctx, h: Tensor, delta: Tensor, C: Tensor, A: Tensor) -> Tensor:  # type: ignore[override]
        h, delta, C, A = (t.float().contiguous() for t in (h, delta, C, A))
        batch, Q, D = delta.shape
        N = C.shape[-1]
        per_query = h.dim() == 4
        out = delta.new_empty(batch, Q, D)
        _recall_forward_kernel[(batch, triton.cdiv(Q, BLOCK_Q), triton.cdiv(D, BLOCK_D))](
            h, delta, C, A, out, Q, D,
            h.stride(0), h.stride(1) if per_query else 0, delta.stride(0), delta.stride(1), C.stride(0), C.stride(1),
            out.stride(0), out.stride(1),
            N=N, BLOCK_Q=BLOCK_Q, BLOCK_D=BLOCK_D, PER_QUERY=per_query,
        )
        ctx.save_for_backward(h, delta, C, A)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        h, delta, C, A = ctx.saved_tensors
        batch, Q, D = delta.shape
        N = C.shape[-1]
        per_query = h.dim() == 4
        dout = dout.float().contiguous()
        dh, ddelta = torch.empty_like(h), torch.empty_like(delta)
        dC, dA = torch.zeros_like(C), torch.zeros_like(A)
        _recall_backward_kernel[(batch, triton.cdiv(D, BLOCK_D))](
            h, delta, C, A, dout, dh, ddelta, dC, dA, Q, D,
            h.stride(0), h.stride(1) if per_query else 0, delta.stride(0), delta.stride(1), C.stride(0), C.stride(1),
            dout.stride(0), dout.stride(1), dh.stride(0), dh.stride(1) if per_query else 0,
            ddelta.stride(0), ddelta.stride(1), dC.stride(0), dC.stride(1),
            N=N, BLOCK_Q=BLOCK_Q, BLOCK_D=BLOCK_D, PER_QUERY=per_query,
        )
        return dh, ddelta, dC, dA


def mamba_recall(h: Tensor, delta: Tensor, C: Tensor, A: Tensor) -> Tensor:
    """What queries recall of the state, (B, Q, d_inner) float32: h (B, d_inner, N) shared by the queries or
    (B, Q, d_inner, N) one per query; delta (B, Q, d_inner) after softplus; C (B, Q, N); A (d_inner, N).
    Equals (query_weights(C, delta[..., None] * A) * h[:, None or :]).sum(-1)."""
    return MambaRecall.apply(h, delta, C, A)
