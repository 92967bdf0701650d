"""The SSM block's causal conv for queries (``SelectiveMixer._conv_token``) as one GPU kernel.

Each query is one more token after the stream, so its conv output is

    silu(bias + sum_{k < K-1} w_k * state_{k+1} + w_{K-1} * x_q)

with state the stream's last K conv inputs, the same for every query of an episode.

Why a kernel: compiled from PyTorch, the per-episode sum was laid out channel-major (the stream's x is,
for the scan) and read back across channels with a stride of the batch size, and the result was
stored twice, in float32 and bf16: 77 us a layer for 256 episodes of 100 queries on an H100, against
about 20 us that its memory traffic needs. Here a program takes one episode's block of channels,
forms the sum once in registers and walks the queries; the output is in x's dtype.
Inference only; ``SelectiveMixer.read`` uses it on CUDA when gradients are off and Triton imports.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.kernels import fused_kernels_enabled, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _conv_token_kernel(
        state_ptr, x_ptr, w_ptr, bias_ptr, out_ptr,
        Q, d_inner,
        stride_state_b, stride_state_d, stride_state_k, stride_x_b, stride_x_q, stride_out_b, stride_out_q,
        K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
    ):
        """Grid (batch, d_inner / BLOCK_D, Q / BLOCK_Q). state (B, d_inner, K) any strides; x, out
        (B, Q, d_inner) with channels contiguous; w (d_inner, K) contiguous."""
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        d_ok = d < d_inner
        past = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        state = state_ptr + b * stride_state_b + d * stride_state_d
        for k in tl.static_range(K - 1):
            past += (tl.load(state + (k + 1) * stride_state_k, mask=d_ok, other=0.0).to(tl.float32)
                     * tl.load(w_ptr + d * K + k, mask=d_ok, other=0.0).to(tl.float32))
        w_last = tl.load(w_ptr + d * K + (K - 1), mask=d_ok, other=0.0).to(tl.float32)
        ok = (q < Q)[:, None] & d_ok[None, :]
        x = tl.load(x_ptr + b * stride_x_b + q[:, None] * stride_x_q + d[None, :], mask=ok, other=0.0).to(tl.float32)
        pre = past[None, :] + x * w_last[None, :]
        y = pre / (1.0 + tl.exp(-pre))  # silu
        tl.store(out_ptr + b * stride_out_b + q[:, None] * stride_out_q + d[None, :], y.to(out_ptr.dtype.element_ty), mask=ok)


# Tile sizes: a program's queries by channels.
BLOCK_D, BLOCK_Q, NUM_WARPS = 128, 32, 4


def fused_conv_token_supported(x: Tensor) -> bool:
    """Whether ``conv_token`` takes queries x: kernels on (``kernels.fused_kernels``), x (B, Q, d_inner)."""
    return fused_kernels_enabled() and x.dim() == 3


@torch.library.custom_op("mclstudio::conv_token", mutates_args=())
def conv_token(conv_state: Tensor, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """conv_state (B, d_inner, K): the stream's last K conv inputs; x (B, Q, d_inner): the queries' conv
    inputs; weight (d_inner, K), bias (d_inner,). Returns silu(conv) (B, Q, d_inner) in x's dtype,
    computed in float32."""
    batch, Q, d_inner = x.shape
    K = weight.shape[-1]
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty(batch, Q, d_inner, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    block_d = min(BLOCK_D, triton.next_power_of_2(d_inner))
    _conv_token_kernel[(batch, triton.cdiv(d_inner, block_d), triton.cdiv(Q, BLOCK_Q))](
        conv_state, x, weight.contiguous(), bias.contiguous(), out,
        Q, d_inner,
        *conv_state.stride(), x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=K, BLOCK_D=block_d, BLOCK_Q=BLOCK_Q, num_warps=NUM_WARPS,
    )
    return out


@conv_token.register_fake
def _(conv_state: Tensor, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return torch.empty(x.shape, device=x.device, dtype=x.dtype)
