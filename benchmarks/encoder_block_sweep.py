"""Each encoder block's fused op on a GPU, and a tile sweep of its kernel, at issue 6's paper size: the
25,600 images of one embedding call (256 episodes x 100), 32x32 Omniglot-like inputs, 64 channels, bf16.

For each block: the op as the encoder runs it, and its kernel at each tiling, checked against the op's
output. For blocks whose conv is cuDNN's, the conv alone too.

    python benchmarks/encoder_block_sweep.py --out benchmarks/results/encoder_block_sweep_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_throughput import COMMON, PAPER_SIZED, timed  # noqa: E402

from mclstudio.learners.kernels import conv_block, triton  # noqa: E402
from mclstudio.learners.registry import build_learner, make_config  # noqa: E402

IMAGES = 25_600


def ms(fn: Callable[[], object], repeat: int = 5) -> float:
    return 1000 * timed(lambda: [fn() for _ in range(repeat)]) / repeat


def sweep_block(report: dict, name: str, h: torch.Tensor, conv: torch.nn.Conv2d, norm: torch.nn.GroupNorm) -> torch.Tensor:
    def op() -> torch.Tensor:
        return conv_block.conv_gn_relu_pool(h, conv.weight, conv.bias, norm.weight, norm.bias, norm.num_groups, norm.eps, torch.bfloat16)

    expected = op()
    report[f"{name}/op_ms"] = ms(op)
    N, c_in, H, W = h.shape
    c_out = conv.out_channels
    out = torch.empty_like(expected)
    common = dict(C_OUT=c_out, C_PAD=max(16, triton.next_power_of_2(c_out)), GROUPS=norm.num_groups)
    args = (conv.bias, norm.weight, norm.bias, out, norm.eps)

    def record(key: str, launch: Callable[[], object]) -> None:
        try:
            launch()
            error = (out.float() - expected.float()).abs().max().item()
            report[f"{name}/{key}"] = {"ms": ms(launch), "max_abs_diff": error}
        except Exception as exc:  # a tiling that does not compile (too many registers) is a result too
            report[f"{name}/{key}"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}

    if c_in * 16 <= conv_block.MAX_IN_KERNEL_TAPS:
        x, w = h.contiguous(), conv_block.neighbourhood_weights(conv.weight)
        for block_p in (16, 32, 64):
            for warps in (1, 2, 4, 8):
                record(f"two_pass_conv/P{block_p}/w{warps}", lambda bp=block_p, nw=warps: conv_block._gn_relu_pool_kernel[(N,)](
                    x, w, *args, *x.stride(), *out.stride(), CONV=True, C_IN=c_in, H=H, W=W, BLOCK_P=bp,
                    K_PAD=max(16, triton.next_power_of_2(c_in * 16)), num_warps=nw, **common))
        return expected
    x = h.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = conv.weight.to(torch.bfloat16)
    convolved = F.conv2d(x, w, padding=1)
    report[f"{name}/cudnn_conv_ms"] = ms(lambda: F.conv2d(x, w, padding=1))
    for block_p in (16, 32, 64, 128):
        for warps in (1, 2, 4, 8):
            record(f"after_cudnn/P{block_p}/w{warps}", lambda bp=block_p, nw=warps: conv_block._gn_relu_pool_kernel[(N,)](
                convolved, conv.weight, *args, *convolved.stride(), *out.stride(), CONV=False, C_IN=c_in, H=H, W=W,
                BLOCK_P=bp, K_PAD=16, num_warps=nw, **common))
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available() or triton is None:
        sys.exit("error: this benchmark needs a CUDA GPU and Triton")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    encoder = build_learner(make_config("mamba", **COMMON, **PAPER_SIZED["mamba"])).cuda().eval().embedding.x_encoder
    modules = list(encoder.features)
    report: dict = {"device": torch.cuda.get_device_name(0), "images": IMAGES}
    with torch.no_grad():
        h = (torch.rand(IMAGES, 1, 32, 32, device="cuda") > 0.7).float()
        for block in range(4):
            h = sweep_block(report, f"block{block}", h, modules[4 * block], modules[4 * block + 1])
    summary = {}
    for block in range(4):
        tiles = [(v["ms"], k) for k, v in report.items() if k.startswith(f"block{block}/") and isinstance(v, dict) and "ms" in v]
        summary[f"block{block}"] = {"op_ms": report[f"block{block}/op_ms"], "cudnn_conv_ms": report.get(f"block{block}/cudnn_conv_ms"),
                                    "fastest_kernel": min(tiles) if tiles else None}
    report["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
