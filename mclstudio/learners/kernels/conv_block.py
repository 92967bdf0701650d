"""The image encoder's blocks (conv 3x3 -> GroupNorm -> ReLU -> MaxPool 2x2), each as one torch op whose
normalisation, ReLU and pooling run in one GPU kernel, and for few input channels the convolution too.

Why: at full resolution with few input channels, the first block's cost is memory traffic, not
arithmetic. As four library calls, its (images, channels, H, W) activation is written and read about five
times: for 51,200 Omniglot images at 64 channels that is 6.7 GB a pass, and 26 of the 35 ms that a
compiled encoder took on an H100. Here one program reads one image (a few KB), computes the conv in
registers (on tensor cores, each pooling window's 4x4 input neighbourhood times one weight matrix per
conv position, in TF32 as PyTorch's float32 default for convolutions), takes each group's statistics
there, and writes only the pooled result. With many input
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
    def _neighbourhoods(image, i, j, p_ok, C_IN: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                        K_PAD: tl.constexpr):
        """The 4x4 input neighbourhood of each pooling window (rows 2i - 1 .. 2i + 2, columns likewise,
        zero outside the image) of a contiguous (C_IN, H, W) image: (BLOCK_P, K_PAD) float32. Tap t is
        channel t // 16, row (t % 16) // 4, column t % 4; taps past C_IN * 16 are 0. One gather serves
        the window's four conv positions."""
        t = tl.arange(0, K_PAD)
        r = 2 * i[:, None] - 1 + ((t % 16) // 4)[None, :]
        s = 2 * j[:, None] - 1 + (t % 4)[None, :]
        inside = p_ok[:, None] & (t < C_IN * 16)[None, :] & (r >= 0) & (r < H) & (s >= 0) & (s < W)
        return tl.load(image + (t // 16)[None, :] * (H * W) + r * W + s, mask=inside, other=0.0).to(tl.float32)

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
    def _windows(image, w00, w01, w10, w11, i, j, p_ok, c, c_ok, x_stride_c, x_stride_h, x_stride_w,
                 CONV: tl.constexpr, C_IN: tl.constexpr, H: tl.constexpr, W: tl.constexpr, K_PAD: tl.constexpr):
        """The conv's values (without its bias) at the four positions of each pooling window; 0 at
        positions past the image. CONV: the conv at position (di, dj) is the window's neighbourhoods times
        w_{di dj} (K_PAD, C_PAD), on tensor cores."""
        if CONV:
            patches = _neighbourhoods(image, i, j, p_ok, C_IN, H, W, K_PAD)
            a00 = tl.dot(patches, w00, input_precision="tf32")
            a01 = tl.dot(patches, w01, input_precision="tf32")
            a10 = tl.dot(patches, w10, input_precision="tf32")
            a11 = tl.dot(patches, w11, input_precision="tf32")
        else:
            a00, a01, a10, a11 = _load_windows(image, i, j, p_ok, c, c_ok, x_stride_c, x_stride_h, x_stride_w)
        return a00, a01, a10, a11

    @triton.jit
    def _position_weights(w_ptr, position: tl.constexpr, c, c_ok, C_IN: tl.constexpr, C_OUT: tl.constexpr,
                          K_PAD: tl.constexpr):
        """The (K_PAD, C_PAD) tile of ``neighbourhood_weights`` for one conv position of the window."""
        t = tl.arange(0, K_PAD)
        tile = w_ptr + position * (C_IN * 16 * C_OUT) + t[:, None] * C_OUT + c[None, :]
        return tl.load(tile, mask=c_ok[None, :] & (t < C_IN * 16)[:, None], other=0.0).to(tl.float32)

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
        w00 = tl.zeros((K_PAD, C_PAD), tl.float32)
        w01, w10, w11 = w00, w00, w00
        if CONV:
            w00 = _position_weights(w_ptr, 0, c, c_ok, C_IN, C_OUT, K_PAD)
            w01 = _position_weights(w_ptr, 1, c, c_ok, C_IN, C_OUT, K_PAD)
            w10 = _position_weights(w_ptr, 2, c, c_ok, C_IN, C_OUT, K_PAD)
            w11 = _position_weights(w_ptr, 3, c, c_ok, C_IN, C_OUT, K_PAD)
        # Sums of the conv's values without its bias (so positions past the image add 0 and need no
        # mask), per tile position; summed across the tile once, after the loop (a reduction across
        # threads each step would synchronise them every time). This kernel is bound by instructions
        # issued, not memory: the bias enters the statistics and the affine map once per channel.
        sum1 = tl.zeros((BLOCK_P, C_PAD), tl.float32)
        sum2 = tl.zeros((BLOCK_P, C_PAD), tl.float32)
        for p0 in range(0, HO * WO, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            a00, a01, a10, a11 = _windows(image, w00, w01, w10, w11, p // WO, p % WO, p < HO * WO, c, c_ok,
                                          x_stride_c, x_stride_h, x_stride_w, CONV, C_IN, H, W, K_PAD)
            sum1 += a00 + a01 + a10 + a11
            sum2 += a00 * a00 + a01 * a01 + a10 * a10 + a11 * a11
        raw1 = tl.sum(sum1, axis=0)
        raw2 = tl.sum(sum2, axis=0)
        bias = tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        sum1 = raw1 + (H * W) * bias  # sums of (value + bias) and of its square, per channel
        sum2 = raw2 + 2.0 * bias * raw1 + (H * W) * bias * bias
        # Per-group statistics, spread back to the group's channels (padding channels form their own
        # groups and are never stored).
        count = CG * H * W
        group_mean = tl.sum(tl.reshape(sum1, (C_PAD // CG, CG)), axis=1) / count
        group_var = tl.sum(tl.reshape(sum2, (C_PAD // CG, CG)), axis=1) / count - group_mean * group_mean
        group_rstd = 1.0 / tl.sqrt(tl.maximum(group_var, 0.0) + eps)
        mean = tl.reshape(tl.broadcast_to(group_mean[:, None], (C_PAD // CG, CG)), (C_PAD,))
        rstd = tl.reshape(tl.broadcast_to(group_rstd[:, None], (C_PAD // CG, CG)), (C_PAD,))
        scale = tl.load(gamma_ptr + c, mask=c_ok, other=0.0).to(tl.float32) * rstd
        # normalised = (value + bias - mean) * scale + beta = value * scale + shift
        shift = tl.load(beta_ptr + c, mask=c_ok, other=0.0).to(tl.float32) + (bias - mean) * scale
        scale = scale[None, :]
        shift = shift[None, :]
        for p0 in range(0, HO * WO, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            p_ok = p < HO * WO
            i = p // WO
            j = p % WO
            a00, a01, a10, a11 = _windows(image, w00, w01, w10, w11, i, j, p_ok, c, c_ok,
                                          x_stride_c, x_stride_h, x_stride_w, CONV, C_IN, H, W, K_PAD)
            best = tl.maximum(tl.maximum(a00 * scale + shift, a01 * scale + shift),
                              tl.maximum(a10 * scale + shift, a11 * scale + shift))
            best = tl.maximum(best, 0.0)
            dst = out_ptr + n * out_stride_n + i[:, None] * out_stride_h + j[:, None] * out_stride_w + c[None, :] * out_stride_c
            tl.store(dst, best.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


# Up to this many taps (input channels x a 4x4 neighbourhood) the conv runs inside the kernel; past it,
# cuDNN's.
MAX_IN_KERNEL_TAPS = 64


def neighbourhood_weights(weight: Tensor) -> Tensor:
    """A 3x3 conv's weight (C_out, C_in, 3, 3) as four (C_in * 16, C_out) matrices, one per conv position
    (di, dj) of a 2x2 pooling window, that map the window's 4x4 input neighbourhood (channel-major, then
    row, column) to that position's outputs: (4, C_in * 16, C_out), float32, position 2 di + dj."""
    c_out, c_in = weight.shape[:2]
    per_position = [torch.nn.functional.pad(weight.float(), (dj, 1 - dj, di, 1 - di)) for di in (0, 1) for dj in (0, 1)]
    return torch.stack(per_position).permute(0, 2, 3, 4, 1).reshape(4, c_in * 16, c_out).contiguous()


def _tiles(pooled_pixels: int, conv_in_kernel: bool) -> tuple[int, int]:
    """(BLOCK_P, num_warps) of ``_gn_relu_pool_kernel`` for a block with this many pooled pixels an
    image: the fastest measured on an H100 for the encoder's blocks (benchmarks/encoder_block_sweep.py)."""
    if conv_in_kernel:
        return 32, 4
    block_p = max(16, min(64, triton.next_power_of_2(pooled_pixels)))
    return block_p, 4 if pooled_pixels >= 64 else 2 if pooled_pixels >= 16 else 1


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
    out = torch.empty((N, c_out, H // 2, W // 2), device=x.device, dtype=out_dtype, memory_format=torch.channels_last)
    if N == 0:
        return out
    c_pad = max(16, triton.next_power_of_2(c_out))
    conv_in_kernel = c_in * 16 <= MAX_IN_KERNEL_TAPS
    if conv_in_kernel:
        x = x.contiguous()  # the in-kernel conv indexes a contiguous image
        weight = neighbourhood_weights(weight)
    else:
        # The conv's bias is added in the kernel: as cuDNN's separate pass it cost a third of the encoder.
        x = torch.nn.functional.conv2d(
            x.to(out_dtype).contiguous(memory_format=torch.channels_last), weight.to(out_dtype), padding=1
        )
    block_p, num_warps = _tiles((H // 2) * (W // 2), conv_in_kernel)
    _gn_relu_pool_kernel[(N,)](
        x, weight.contiguous(), bias.contiguous(), gamma.contiguous(), beta.contiguous(), out,
        eps, *x.stride(), *out.stride(),
        CONV=conv_in_kernel, C_IN=c_in, H=H, W=W, C_OUT=c_out, C_PAD=c_pad, GROUPS=groups,
        BLOCK_P=block_p, K_PAD=max(16, triton.next_power_of_2(c_in * 16)), num_warps=num_warps,
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
