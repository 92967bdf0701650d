"""Mamba's query read (``scan.diagonal_read`` with Mamba's transition) as one GPU kernel.

Each query is one more token after the stream's last state h (B, d_inner, N):

    delta = softplus(dt + dt_bias);   y = sum_n C_n exp(delta A_dn) h_dn + delta u (B . C) + D u,  gated by silu(z)

Why a kernel: compiled from PyTorch, the product-sum recomputed softplus(dt) and exp(A_log) for every
state index n and re-read h for every query: 0.40 ms a layer for 256 episodes of 100 queries on an
H100. Here one program holds a block of h's rows in registers and walks a run of queries, so softplus
is taken once per (query, channel): 0.27 ms (benchmarks/results/read_kernel_sweep_h100.json).
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
        N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, Q_PER_PROGRAM: tl.constexpr,
    ):
        """Grid (batch, d_inner / BLOCK_D, Q / Q_PER_PROGRAM). h, A: (BLOCK_D, N) tiles kept while the
        program walks its queries BLOCK_Q at a time, (BLOCK_Q, BLOCK_D, N) products per step."""
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = d < d_inner
        n = tl.arange(0, N)
        tile = d[:, None] * N + n[None, :]
        h = tl.load(h_ptr + b * stride_h_b + tile, mask=d_ok[:, None], other=0.0)[None, :, :]
        # exp(delta A) as exp2(delta A log2 e): the hardware's exponential is base 2.
        A2 = (tl.load(A_ptr + tile, mask=d_ok[:, None], other=0.0) * 1.4426950408889634)[None, :, :]
        D_skip = tl.load(D_ptr + d, mask=d_ok, other=0.0)[None, :]
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0)[None, :]
        q_in_block = tl.arange(0, BLOCK_Q)
        q_start = tl.program_id(2) * Q_PER_PROGRAM
        q_end = tl.minimum(Q, q_start + Q_PER_PROGRAM)
        for q0 in range(q_start, q_end, BLOCK_Q):
            q = q0 + q_in_block
            q_ok = q < q_end
            qd_ok = q_ok[:, None] & d_ok[None, :]
            u = tl.load(u_ptr + b * stride_u_b + q[:, None] * stride_u_q + d[None, :], mask=qd_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + b * stride_z_b + q[:, None] * stride_z_q + d[None, :], mask=qd_ok, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + b * stride_dt_b + q[:, None] * stride_dt_q + d[None, :], mask=qd_ok, other=0.0).to(tl.float32) + bias
            key = tl.load(B_ptr + b * stride_B_b + q[:, None] * stride_B_q + n[None, :], mask=q_ok[:, None], other=0.0).to(tl.float32)
            C = tl.load(C_ptr + b * stride_C_b + q[:, None] * stride_C_q + n[None, :], mask=q_ok[:, None], other=0.0).to(tl.float32)
            # softplus with torch's threshold: above 20 it is the identity to float precision
            delta = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # (BLOCK_Q, BLOCK_D)
            recalled = tl.sum(tl.exp2(delta[:, :, None] * A2) * h * C[:, None, :], axis=2)
            own = delta * u * tl.sum(key * C, axis=1)[:, None]
            y = (recalled + own + D_skip * u) * (z / (1.0 + tl.exp(-z)))
            tl.store(y_ptr + b * stride_y_b + q[:, None] * stride_y_q + d[None, :], y.to(y_ptr.dtype.element_ty), mask=qd_ok)


# Tile sizes: the fastest of 108 tried on an H100 (benchmarks/read_kernel_sweep.py).
BLOCK_D, BLOCK_Q, Q_PER_PROGRAM, NUM_WARPS = 64, 1, 32, 2


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
    _mamba_read_kernel[(batch, triton.cdiv(d_inner, block_d), triton.cdiv(Q, Q_PER_PROGRAM))](
        state, A, D, dt_bias, u, z, dt, B, C, y,
        Q, d_inner,
        state.stride(0), u.stride(0), u.stride(1), z.stride(0), z.stride(1), dt.stride(0), dt.stride(1),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1),
        N=N, BLOCK_D=block_d, BLOCK_Q=BLOCK_Q, Q_PER_PROGRAM=Q_PER_PROGRAM, num_warps=NUM_WARPS,
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
