"""The image encoder's blocks (conv 3x3 -> GroupNorm -> ReLU -> MaxPool 2x2) with their normalisation,
ReLU and pooling in one GPU kernel, and for the first block the convolution too.

Why: at full resolution with few input channels, the first block's cost is memory traffic, not
arithmetic. As four library calls, its (images, channels, H, W) activation is written and read about five
times: for 51,200 Omniglot images at 64 channels that is 6.7 GB a pass, and 26 of the 35 ms that a
compiled encoder took on an H100. Here one program reads one image (a few KB), computes the conv in
registers, takes each group's statistics there, and writes only the pooled result. Later blocks keep
cuDNN's convolution (64 input channels: tensor-core work) and fuse what follows it, which the compiler
split into three passes with a full-size float32 intermediate.

Inference only (no autograd); ``ConvEncoder`` uses it on CUDA when gradients are off and Triton imports,
and keeps the PyTorch modules everywhere else. ``conv_gn_relu_pool`` and ``gn_relu_pool`` are torch
custom ops, so torch.compile and CUDA graphs take them whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.kernels import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _window_conv(image, w_ptr, bias, i, j, p_ok, c, C_IN: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                     BLOCK_P: tl.constexpr, C_OUT: tl.constexpr):
        """The 3x3 conv (padding 1) of a contiguous (C_IN, H, W) image at the four positions
        (2i + di, 2j + dj) of each pooling window: four (BLOCK_P, C_OUT) float32 tiles."""
        acc00 = tl.zeros((BLOCK_P, C_OUT), tl.float32) + bias
        acc01 = tl.zeros((BLOCK_P, C_OUT), tl.float32) + bias
        acc10 = tl.zeros((BLOCK_P, C_OUT), tl.float32) + bias
        acc11 = tl.zeros((BLOCK_P, C_OUT), tl.float32) + bias
        for ci in range(C_IN):
            # Input pixel (2i + a - 1, 2j + b - 1) feeds window position (di, dj) through kernel tap
            # (a - di, b - dj): 16 loads of the image serve all 36 (position, tap) pairs.
            for a in tl.static_range(4):
                for b in tl.static_range(4):
                    r = 2 * i + (a - 1)
                    s = 2 * j + (b - 1)
                    inside = p_ok & (r >= 0) & (r < H) & (s >= 0) & (s < W)
                    xv = tl.load(image + ci * (H * W) + r * W + s, mask=inside, other=0.0).to(tl.float32)[:, None]
                    w_tap = w_ptr + (c * C_IN + ci) * 9
                    if a <= 2:
                        if b <= 2:
                            acc00 += xv * tl.load(w_tap + a * 3 + b).to(tl.float32)[None, :]
                        if b >= 1:
                            acc01 += xv * tl.load(w_tap + a * 3 + b - 1).to(tl.float32)[None, :]
                    if a >= 1:
                        if b <= 2:
                            acc10 += xv * tl.load(w_tap + (a - 1) * 3 + b).to(tl.float32)[None, :]
                        if b >= 1:
                            acc11 += xv * tl.load(w_tap + (a - 1) * 3 + b - 1).to(tl.float32)[None, :]
        return acc00, acc01, acc10, acc11

    @triton.jit
    def _load_windows(image, i, j, p_ok, c, stride_c, stride_h, stride_w):
        """The four positions (2i + di, 2j + dj) of each pooling window of an already convolved map:
        four (BLOCK_P, C) float32 tiles."""
        at = image + c[None, :] * stride_c
        ok = p_ok[:, None]
        r, s = (2 * i)[:, None] * stride_h, (2 * j)[:, None] * stride_w
        a00 = tl.load(at + r + s, mask=ok, other=0.0).to(tl.float32)
        a01 = tl.load(at + r + s + stride_w, mask=ok, other=0.0).to(tl.float32)
        a10 = tl.load(at + r + stride_h + s, mask=ok, other=0.0).to(tl.float32)
        a11 = tl.load(at + r + stride_h + s + stride_w, mask=ok, other=0.0).to(tl.float32)
        return a00, a01, a10, a11

    @triton.jit
    def _gn_relu_pool_kernel(
        x_ptr, w_ptr, bias_ptr, gamma_ptr, beta_ptr, out_ptr,
        eps,
        x_stride_n, x_stride_c, x_stride_h, x_stride_w,
        out_stride_n, out_stride_c, out_stride_h, out_stride_w,
        CONV: tl.constexpr, C_IN: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
        C_OUT: tl.constexpr, GROUPS: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """One program per image, in two passes over its pooled pixels, BLOCK_P at a time: the first
        sums each channel's values and their squares, the second normalises, takes each window's max,
        applies ReLU (which commutes with max) and stores. CONV: x is the block's input and the 3x3
        conv is computed here, twice (nine multiply-adds a tap: cheaper than storing it); otherwise x
        is the conv's output, read twice. Tiles are pixels by channels, so a channels-last store
        writes whole rows."""
        n = tl.program_id(0)
        HO: tl.constexpr = H // 2
        WO: tl.constexpr = W // 2
        CG: tl.constexpr = C_OUT // GROUPS
        c = tl.arange(0, C_OUT)
        image = x_ptr + n * x_stride_n
        if CONV:
            bias = tl.load(bias_ptr + c).to(tl.float32)[None, :]
        sum1 = tl.zeros((C_OUT,), tl.float32)
        sum2 = tl.zeros((C_OUT,), tl.float32)
        for p0 in range(0, HO * WO, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            p_ok = p < HO * WO
            if CONV:
                a00, a01, a10, a11 = _window_conv(image, w_ptr, bias, p // WO, p % WO, p_ok, c, C_IN, H, W, BLOCK_P, C_OUT)
            else:
                a00, a01, a10, a11 = _load_windows(image, p // WO, p % WO, p_ok, c, x_stride_c, x_stride_h, x_stride_w)
            valid = p_ok[:, None]
            sum1 += tl.sum(tl.where(valid, a00 + a01 + a10 + a11, 0.0), axis=0)
            sum2 += tl.sum(tl.where(valid, a00 * a00 + a01 * a01 + a10 * a10 + a11 * a11, 0.0), axis=0)
        # Per-group statistics, spread back to the group's channels.
        count = CG * H * W
        group_mean = tl.sum(tl.reshape(sum1, (GROUPS, CG)), axis=1) / count
        group_var = tl.sum(tl.reshape(sum2, (GROUPS, CG)), axis=1) / count - group_mean * group_mean
        group_rstd = 1.0 / tl.sqrt(tl.maximum(group_var, 0.0) + eps)
        mean = tl.reshape(tl.broadcast_to(group_mean[:, None], (GROUPS, CG)), (C_OUT,))
        rstd = tl.reshape(tl.broadcast_to(group_rstd[:, None], (GROUPS, CG)), (C_OUT,))
        scale = tl.load(gamma_ptr + c).to(tl.float32) * rstd
        shift = tl.load(beta_ptr + c).to(tl.float32) - mean * scale
        scale = scale[None, :]
        shift = shift[None, :]
        for p0 in range(0, HO * WO, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            p_ok = p < HO * WO
            i = p // WO
            j = p % WO
            if CONV:
                a00, a01, a10, a11 = _window_conv(image, w_ptr, bias, i, j, p_ok, c, C_IN, H, W, BLOCK_P, C_OUT)
            else:
                a00, a01, a10, a11 = _load_windows(image, i, j, p_ok, c, x_stride_c, x_stride_h, x_stride_w)
            best = tl.maximum(tl.maximum(a00 * scale + shift, a01 * scale + shift),
                              tl.maximum(a10 * scale + shift, a11 * scale + shift))
            best = tl.maximum(best, 0.0)
            dst = out_ptr + n * out_stride_n + i[:, None] * out_stride_h + j[:, None] * out_stride_w + c[None, :] * out_stride_c
            tl.store(dst, best.to(out_ptr.dtype.element_ty), mask=p_ok[:, None])


def _power_of_2(k: int) -> bool:
    return k > 0 and k & (k - 1) == 0


def fused_block_supported(x: Tensor, groups: int, channels: int) -> bool:
    """Whether the fused kernels take this block: input (N, C, H, W) with even H and W, and channels and
    channels per group powers of 2 (the kernel's tiles)."""
    return (
        triton is not None
        and x.dim() == 4
        and x.shape[-1] % 2 == 0
        and x.shape[-2] % 2 == 0
        and x.shape[-1] >= 2
        and channels % groups == 0
        and _power_of_2(channels)
        and _power_of_2(channels // groups)
    )


def _launch(x: Tensor, weight: Tensor | None, bias: Tensor | None, gamma: Tensor, beta: Tensor, groups: int,
            eps: float, out_dtype: torch.dtype) -> Tensor:
    """Both ops' launcher; weight None means x is already convolved. Output channels-last (what cuDNN's
    next convolution prefers)."""
    N, c_in, H, W = x.shape
    c_out = c_in if weight is None else weight.shape[0]
    if weight is not None:
        x = x.contiguous()  # the in-kernel conv indexes a contiguous image
    out = torch.empty((N, c_out, H // 2, W // 2), device=x.device, dtype=out_dtype, memory_format=torch.channels_last)
    if N == 0:
        return out
    block_p = min(max(2048 // c_out, 1), triton.next_power_of_2((H // 2) * (W // 2)))
    _gn_relu_pool_kernel[(N,)](
        x, gamma if weight is None else weight.contiguous(), gamma if bias is None else bias.contiguous(),
        gamma.contiguous(), beta.contiguous(), out,
        eps, *x.stride(), *out.stride(),
        CONV=weight is not None, C_IN=c_in, H=H, W=W, C_OUT=c_out, GROUPS=groups, BLOCK_P=block_p, num_warps=4,
    )
    return out


@torch.library.custom_op("mclstudio::conv_gn_relu_pool", mutates_args=())
def conv_gn_relu_pool(
    x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float,
    out_dtype: torch.dtype,
) -> Tensor:
    """A whole block (conv 3x3 padding 1, GroupNorm, ReLU, MaxPool 2x2) in one kernel, for few input
    channels. x (N, C_in, H, W); weight (C_out, C_in, 3, 3); bias, gamma, beta (C_out,)
    -> (N, C_out, H/2, W/2) in out_dtype, channels-last."""
    return _launch(x, weight, bias, gamma, beta, groups, eps, out_dtype)


@conv_gn_relu_pool.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float,
      out_dtype: torch.dtype) -> Tensor:
    N, _, H, W = x.shape
    return x.new_empty((N, weight.shape[0], H // 2, W // 2), dtype=out_dtype).contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("mclstudio::gn_relu_pool", mutates_args=())
def gn_relu_pool(x: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float, out_dtype: torch.dtype) -> Tensor:
    """GroupNorm, ReLU and MaxPool 2x2 of a conv's output in one kernel. x (N, C, H, W), any layout
    -> (N, C, H/2, W/2) in out_dtype, channels-last."""
    return _launch(x, None, None, gamma, beta, groups, eps, out_dtype)


@gn_relu_pool.register_fake
def _(x: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float, out_dtype: torch.dtype) -> Tensor:
    N, C, H, W = x.shape
    return x.new_empty((N, C, H // 2, W // 2), dtype=out_dtype).contiguous(memory_format=torch.channels_last)
