"""Mamba's query read (``scan.diagonal_read`` with Mamba's transition) as one GPU kernel.

Each query is one more token after the stream's last state h (B, d_inner, N):

    delta = softplus(dt + dt_bias);   y = sum_n C_n exp(delta A_dn) h_dn + delta u (B . C) + D u,  gated by silu(z)

Why a kernel: compiled from PyTorch, the product-sum recomputed softplus(dt) and exp(A_log) for every
state index n and re-read h for every query: 0.40 ms a layer for 256 episodes of 100 queries on an
H100. Here one program takes a (queries x channels) tile: softplus once per (query, channel), and the
sum over n unrolled in each thread, so no reduction crosses threads: 0.15 ms
(benchmarks/results/read_kernel_sweep_h100.json; an earlier version that walked the queries one at a
time over a block of h's rows took 0.22 ms).
Inference only; ``MambaMixer`` uses it on CUDA when gradients are off and Triton imports.
``mamba_read`` is a torch custom op, so torch.compile and CUDA graphs take it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.kernels import fused_kernels_enabled, power_of_2, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _mamba_read_kernel(
        h_ptr, A_ptr, D_ptr, bias_ptr, u_ptr, z_ptr, dt_ptr, B_ptr, C_ptr, y_ptr,
        Q, d_inner,
        stride_h_b, stride_u_b, stride_u_q, stride_z_b, stride_z_q, stride_dt_b, stride_dt_q,
        stride_B_b, stride_B_q, stride_C_b, stride_C_q, stride_y_b, stride_y_q,
        N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
    ):
        """Grid (batch, d_inner / BLOCK_D, Q / BLOCK_Q): one (BLOCK_Q, BLOCK_D) tile of queries by
        channels, its inputs loaded at once; the sum over the N state entries is an unrolled loop, so each
        thread accumulates its own outputs (no cross-thread reduction) and the loads of h's and C's
        columns do not wait on arithmetic."""
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        d_ok, q_ok = d < d_inner, q < Q
        qd_ok = q_ok[:, None] & d_ok[None, :]
        u = tl.load(u_ptr + b * stride_u_b + q[:, None] * stride_u_q + d[None, :], mask=qd_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + b * stride_z_b + q[:, None] * stride_z_q + d[None, :], mask=qd_ok, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + b * stride_dt_b + q[:, None] * stride_dt_q + d[None, :], mask=qd_ok, other=0.0).to(tl.float32)
        dt += tl.load(bias_ptr + d, mask=d_ok, other=0.0)[None, :]
        # softplus with torch's threshold: above 20 it is the identity to float precision
        delta = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # (BLOCK_Q, BLOCK_D)
        recalled = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
        key_dot_C = tl.zeros((BLOCK_Q,), tl.float32)
        h_row = h_ptr + b * stride_h_b + d * N
        B_row = B_ptr + b * stride_B_b + q * stride_B_q
        C_row = C_ptr + b * stride_C_b + q * stride_C_q
        for n in tl.static_range(N):
            h_n = tl.load(h_row + n, mask=d_ok, other=0.0)
            # exp(delta A) as exp2(delta A log2 e): the hardware's exponential is base 2.
            A2_n = tl.load(A_ptr + d * N + n, mask=d_ok, other=0.0) * 1.4426950408889634
            C_n = tl.load(C_row + n, mask=q_ok, other=0.0).to(tl.float32)
            recalled += C_n[:, None] * tl.exp2(delta * A2_n[None, :]) * h_n[None, :]
            key_dot_C += tl.load(B_row + n, mask=q_ok, other=0.0).to(tl.float32) * C_n
        D_skip = tl.load(D_ptr + d, mask=d_ok, other=0.0)[None, :]
        y = (recalled + delta * u * key_dot_C[:, None] + D_skip * u) * (z / (1.0 + tl.exp(-z)))
        tl.store(y_ptr + b * stride_y_b + q[:, None] * stride_y_q + d[None, :], y.to(y_ptr.dtype.element_ty), mask=qd_ok)


# Tile sizes: the fastest of 50 tried on an H100 (benchmarks/read_kernel_sweep.py).
BLOCK_D, BLOCK_Q, NUM_WARPS = 32, 16, 1


def fused_read_supported(state: Tensor) -> bool:
    """Whether ``mamba_read`` takes this state: kernels on (``kernels.fused_kernels``), state
    (B, d_inner, N) with N a power of 2."""
    return fused_kernels_enabled() and state.dim() == 3 and power_of_2(state.shape[-1])


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def launch_mamba_read(
    state: Tensor, A: Tensor, D: Tensor, dt_bias: Tensor, u: Tensor, z: Tensor, dt: Tensor, B: Tensor, C: Tensor
) -> Tensor:
    """state (B, d_inner, N) float32; A (d_inner, N) negative; D, dt_bias (d_inner,); u, z, dt (before
    the bias) (B, Q, d_inner); B, C (B, Q, N). Returns y (B, Q, d_inner) in u's dtype."""
    batch, Q, d_inner = u.shape
    N = state.shape[-1]
    state, A = state.float().contiguous(), A.float().contiguous()
    D, dt_bias = D.float().contiguous(), dt_bias.float().contiguous()
    u, z, dt, B, C = (_last_dim_contiguous(t) for t in (u, z, dt, B, C))
    y = torch.empty(batch, Q, d_inner, device=u.device, dtype=u.dtype)
    if y.numel() == 0:
        return y
    block_d = min(BLOCK_D, triton.next_power_of_2(d_inner))
    _mamba_read_kernel[(batch, triton.cdiv(d_inner, block_d), triton.cdiv(Q, BLOCK_Q))](
        state, A, D, dt_bias, u, z, dt, B, C, y,
        Q, d_inner,
        state.stride(0), u.stride(0), u.stride(1), z.stride(0), z.stride(1), dt.stride(0), dt.stride(1),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1),
        N=N, BLOCK_D=block_d, BLOCK_Q=BLOCK_Q, num_warps=NUM_WARPS,
    )
    return y


@torch.library.custom_op("mclstudio::mamba_read", mutates_args=())
def mamba_read(
    state: Tensor, A: Tensor, D: Tensor, dt_bias: Tensor, u: Tensor, z: Tensor, dt: Tensor, B: Tensor, C: Tensor
) -> Tensor:
    """Mamba's query read, fused: see the module docstring and ``launch_mamba_read``."""
    return launch_mamba_read(state, A, D, dt_bias, u, z, dt, B, C)


@mamba_read.register_fake
def _(state: Tensor, A: Tensor, D: Tensor, dt_bias: Tensor, u: Tensor, z: Tensor, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
    return torch.empty(u.shape, device=u.device, dtype=u.dtype)
