"""The image encoder's blocks (conv 3x3 -> GroupNorm -> ReLU -> MaxPool 2x2), each as one torch op whose
normalisation, ReLU and pooling run in one GPU kernel, and for few input channels the convolution too.

Why: at full resolution with few input channels, the first block's cost is memory traffic, not
arithmetic. As four library calls, its (images, channels, H, W) activation is written and read about five
times: for 51,200 Omniglot images at 64 channels that is 6.7 GB a pass, and 26 of the 35 ms that a
compiled encoder took on an H100. Here one program reads one image (a few KB), computes the conv in
registers (on tensor cores, as a product of image patches and weights, in TF32 as cuDNN's float32
default), takes each group's statistics there, and writes only the pooled result. With many input
channels the conv is cuDNN's (inside the op, so the compiler adds no layout copies) and the kernel
fuses what follows it, which the compiler had split into three passes with a full-size float32
intermediate.

Inference only (no autograd); ``ConvEncoder`` uses it on CUDA when gradients are off and Triton imports,
and keeps the PyTorch modules everywhere else. ``conv_gn_relu_pool`` is a torch custom op, so
torch.compile and CUDA graphs take it whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.kernels import fused_kernels_enabled, power_of_2, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _window_position(image, w_t, i, j, p_ok, DI: tl.constexpr, DJ: tl.constexpr,
                         C_IN: tl.constexpr, H: tl.constexpr, W: tl.constexpr, K_PAD: tl.constexpr):
        """The 3x3 conv (padding 1, no bias) of a contiguous (C_IN, H, W) image at (2i + DI, 2j + DJ):
        patches (BLOCK_P, K_PAD) times w_t (K_PAD, C_PAD) on tensor cores -> (BLOCK_P, C_PAD) float32.
        Tap t is input channel t // 9, kernel row (t % 9) // 3, column t % 3; taps past C_IN * 9 are 0."""
        t = tl.arange(0, K_PAD)
        r = 2 * i[:, None] + (DI - 1) + ((t % 9) // 3)[None, :]
        s = 2 * j[:, None] + (DJ - 1) + (t % 3)[None, :]
        inside = p_ok[:, None] & (t < C_IN * 9)[None, :] & (r >= 0) & (r < H) & (s >= 0) & (s < W)
        patches = tl.load(image + (t // 9)[None, :] * (H * W) + r * W + s, mask=inside, other=0.0).to(tl.float32)
        return tl.dot(patches, w_t, input_precision="tf32")

    @triton.jit
    def _load_windows(image, i, j, p_ok, c, c_ok, stride_c, stride_h, stride_w):
        """The four positions (2i + di, 2j + dj) of each pooling window of an already convolved map:
        four (BLOCK_P, C_PAD) float32 tiles."""
        at = image + c[None, :] * stride_c
        ok = p_ok[:, None] & c_ok[None, :]
        r, s = (2 * i)[:, None] * stride_h, (2 * j)[:, None] * stride_w
        a00 = tl.load(at + r + s, mask=ok, other=0.0).to(tl.float32)
        a01 = tl.load(at + r + s + stride_w, mask=ok, other=0.0).to(tl.float32)
        a10 = tl.load(at + r + stride_h + s, mask=ok, other=0.0).to(tl.float32)
        a11 = tl.load(at + r + stride_h + s + stride_w, mask=ok, other=0.0).to(tl.float32)
        return a00, a01, a10, a11

    @triton.jit
    def _windows(image, w_t, bias, i, j, p_ok, c, c_ok, x_stride_c, x_stride_h, x_stride_w,
                 CONV: tl.constexpr, C_IN: tl.constexpr, H: tl.constexpr, W: tl.constexpr, K_PAD: tl.constexpr):
        """The block's pre-norm values at the four positions of each pooling window."""
        if CONV:
            a00 = _window_position(image, w_t, i, j, p_ok, 0, 0, C_IN, H, W, K_PAD)
            a01 = _window_position(image, w_t, i, j, p_ok, 0, 1, C_IN, H, W, K_PAD)
            a10 = _window_position(image, w_t, i, j, p_ok, 1, 0, C_IN, H, W, K_PAD)
            a11 = _window_position(image, w_t, i, j, p_ok, 1, 1, C_IN, H, W, K_PAD)
        else:
            a00, a01, a10, a11 = _load_windows(image, i, j, p_ok, c, c_ok, x_stride_c, x_stride_h, x_stride_w)
        return a00 + bias, a01 + bias, a10 + bias, a11 + bias

    @triton.jit
    def _gn_relu_pool_kernel(
        x_ptr, w_ptr, bias_ptr, gamma_ptr, beta_ptr, out_ptr,
        eps,
        x_stride_n, x_stride_c, x_stride_h, x_stride_w,
        out_stride_n, out_stride_c, out_stride_h, out_stride_w,
        CONV: tl.constexpr, C_IN: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
        C_OUT: tl.constexpr, C_PAD: tl.constexpr, GROUPS: tl.constexpr, BLOCK_P: tl.constexpr,
        K_PAD: tl.constexpr,
    ):
        """One program per image, in two passes over its pooled pixels, BLOCK_P at a time: the first
        sums each channel's values and their squares, the second normalises, takes each window's max,
        applies ReLU (which commutes with max) and stores. CONV: x is the block's input and the conv
        is computed here, twice (cheaper than storing it); otherwise x is the conv's output without its
        bias, read twice. Tiles are pixels by channels (padded to C_PAD, at least the 16 a tensor-core
        product needs), so a channels-last store writes whole rows."""
        n = tl.program_id(0)
        HO: tl.constexpr = H // 2
        WO: tl.constexpr = W // 2
        CG: tl.constexpr = C_OUT // GROUPS
        c = tl.arange(0, C_PAD)
        c_ok = c < C_OUT
        image = x_ptr + n * x_stride_n
        bias = tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w_t = tl.zeros((K_PAD, C_PAD), tl.float32)
        if CONV:
            t = tl.arange(0, K_PAD)
            w_t = tl.load(w_ptr + c[None, :] * (C_IN * 9) + t[:, None],
                          mask=c_ok[None, :] & (t < C_IN * 9)[:, None], other=0.0).to(tl.float32)
        sum1 = tl.zeros((C_PAD,), tl.float32)
        sum2 = tl.zeros((C_PAD,), tl.float32)
        for p0 in range(0, HO * WO, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            p_ok = p < HO * WO
            a00, a01, a10, a11 = _windows(image, w_t, bias, p // WO, p % WO, p_ok, c, c_ok,
                                          x_stride_c, x_stride_h, x_stride_w, CONV, C_IN, H, W, K_PAD)
            valid = p_ok[:, None]
            sum1 += tl.sum(tl.where(valid, a00 + a01 + a10 + a11, 0.0), axis=0)
            sum2 += tl.sum(tl.where(valid, a00 * a00 + a01 * a01 + a10 * a10 + a11 * a11, 0.0), axis=0)
        # Per-group statistics, spread back to the group's channels (padding channels form their own
        # groups and are never stored).
        count = CG * H * W
        group_mean = tl.sum(tl.reshape(sum1, (C_PAD // CG, CG)), axis=1) / count
        group_var = tl.sum(tl.reshape(sum2, (C_PAD // CG, CG)), axis=1) / count - group_mean * group_mean
        group_rstd = 1.0 / tl.sqrt(tl.maximum(group_var, 0.0) + eps)
        mean = tl.reshape(tl.broadcast_to(group_mean[:, None], (C_PAD // CG, CG)), (C_PAD,))
        rstd = tl.reshape(tl.broadcast_to(group_rstd[:, None], (C_PAD // CG, CG)), (C_PAD,))
        scale = tl.load(gamma_ptr + c, mask=c_ok, other=0.0).to(tl.float32) * rstd
        shift = tl.load(beta_ptr + c, mask=c_ok, other=0.0).to(tl.float32) - mean * scale
        scale = scale[None, :]
        shift = shift[None, :]
        for p0 in range(0, HO * WO, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            p_ok = p < HO * WO
            i = p // WO
            j = p % WO
            a00, a01, a10, a11 = _windows(image, w_t, bias, i, j, p_ok, c, c_ok,
                                          x_stride_c, x_stride_h, x_stride_w, CONV, C_IN, H, W, K_PAD)
            best = tl.maximum(tl.maximum(a00 * scale + shift, a01 * scale + shift),
                              tl.maximum(a10 * scale + shift, a11 * scale + shift))
            best = tl.maximum(best, 0.0)
            dst = out_ptr + n * out_stride_n + i[:, None] * out_stride_h + j[:, None] * out_stride_w + c[None, :] * out_stride_c
            tl.store(dst, best.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


# Up to this many conv taps (input channels x 9) the conv runs inside the kernel; past it, cuDNN's.
MAX_IN_KERNEL_TAPS = 64


def fused_block_supported(x: Tensor, groups: int, channels: int) -> bool:
    """Whether ``conv_gn_relu_pool`` takes this block: input (N, C, H, W) with even H and W, and channels
    per group a power of 2 (the kernel's tiles)."""
    return (
        fused_kernels_enabled()
        and x.dim() == 4
        and x.shape[-1] % 2 == 0
        and x.shape[-2] % 2 == 0
        and x.shape[-1] >= 2
        and channels % groups == 0
        and power_of_2(channels // groups)
    )


def _launch(x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float,
            out_dtype: torch.dtype) -> Tensor:
    N, c_in, H, W = x.shape
    c_out = weight.shape[0]
    conv_in_kernel = c_in * 9 <= MAX_IN_KERNEL_TAPS
    if conv_in_kernel:
        x = x.contiguous()  # the in-kernel conv indexes a contiguous image
    else:
        # The conv's bias is added in the kernel: as cuDNN's separate pass it cost a third of the encoder.
        x = torch.nn.functional.conv2d(
            x.to(out_dtype).contiguous(memory_format=torch.channels_last), weight.to(out_dtype), padding=1
        )
    out = torch.empty((N, c_out, H // 2, W // 2), device=x.device, dtype=out_dtype, memory_format=torch.channels_last)
    if N == 0:
        return out
    c_pad = max(16, triton.next_power_of_2(c_out))
    _gn_relu_pool_kernel[(N,)](
        x, weight.contiguous(), bias.contiguous(), gamma.contiguous(), beta.contiguous(), out,
        eps, *x.stride(), *out.stride(),
        CONV=conv_in_kernel, C_IN=c_in, H=H, W=W, C_OUT=c_out, C_PAD=c_pad, GROUPS=groups,
        BLOCK_P=max(16, min(2048 // c_pad, triton.next_power_of_2((H // 2) * (W // 2)))),
        K_PAD=max(16, triton.next_power_of_2(c_in * 9)), num_warps=4,
    )
    return out


@torch.library.custom_op("mclstudio::conv_gn_relu_pool", mutates_args=())
def conv_gn_relu_pool(
    x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float,
    out_dtype: torch.dtype,
) -> Tensor:
    """One encoder block (conv 3x3 padding 1, GroupNorm, ReLU, MaxPool 2x2). x (N, C_in, H, W); weight
    (C_out, C_in, 3, 3); bias, gamma, beta (C_out,) -> (N, C_out, H/2, W/2) in out_dtype, channels-last.
    With many input channels the conv is cuDNN's, in out_dtype."""
    return _launch(x, weight, bias, gamma, beta, groups, eps, out_dtype)


@conv_gn_relu_pool.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float,
      out_dtype: torch.dtype) -> Tensor:
    N, _, H, W = x.shape
    return x.new_empty((N, weight.shape[0], H // 2, W // 2), dtype=out_dtype).contiguous(memory_format=torch.channels_last)
