"""Tile sweep of the fused Mamba query read (mclstudio/learners/kernels/mamba_read.py) on a GPU, and the
compiled encoder's time with the fused blocks, at issue 6's paper size: 256 episodes x 100 queries,
d_inner 512, N 16; 51,200 32x32 images. Each tiling is checked against ``scan.diagonal_read``.

    python benchmarks/read_kernel_sweep.py --out benchmarks/results/read_kernel_sweep_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_throughput import COMMON, PAPER_SIZED, timed  # noqa: E402

from mclstudio.learners.kernels import mamba_read  # noqa: E402
from mclstudio.learners.registry import build_learner, make_config  # noqa: E402
from mclstudio.learners.scan import diagonal_read, mamba_transition  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    report: dict = {"device": torch.cuda.get_device_name(0),
                    "problem": "256 episodes x 100 queries, d_inner 512, N 16, bf16 inputs; "
                               "keys read/BLOCK_D/BLOCK_Q/num_warps"}
    encoder = build_learner(make_config("mamba", **COMMON, **PAPER_SIZED["mamba"])).cuda().eval().embedding.x_encoder
    images = (torch.rand(51200, 1, 32, 32, device="cuda") > 0.7).float()

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return encoder(x)

    compiled = torch.compile(encode, dynamic=False)
    with torch.no_grad():
        reference = encoder.project(encoder.features(images).flatten(1))
        report["encoder_rel_err_vs_fp32_modules"] = ((compiled(images).float() - reference).abs().max() / reference.abs().max()).item()
        report["encoder_compiled_ms_51200_images"] = 1000 * timed(lambda: compiled(images))

    b, Q, d, N = 256, 100, 512, 16
    h = torch.randn(b, d, N, device="cuda")
    A = -torch.rand(d, N, device="cuda") * 8
    D, dt_bias = torch.randn(d, device="cuda"), torch.randn(d, device="cuda") - 3
    u, z = torch.randn(b, Q, 2 * d, device="cuda", dtype=torch.bfloat16).chunk(2, dim=-1)
    dt = torch.randn(b, Q, d, device="cuda", dtype=torch.bfloat16)
    BC = torch.randn(b, Q, 16 + 2 * N, device="cuda", dtype=torch.bfloat16)
    B, C = BC[..., 16 : 16 + N], BC[..., 16 + N :]
    with torch.no_grad():
        expected = diagonal_read(h, u, z, C, D, mamba_transition(F.softplus(dt.float() + dt_bias), A, B)).float()
        for block_d in (32, 64, 128):
            for block_q in (8, 16, 32, 64, 128):
                for warps in (1, 2, 4, 8):
                    if block_d * block_q // (32 * warps) > 64:  # over 64 outputs a thread spills
                        continue
                    mamba_read.BLOCK_D, mamba_read.BLOCK_Q, mamba_read.NUM_WARPS = block_d, block_q, warps
                    y = mamba_read.launch_mamba_read(h, A, D, dt_bias, u, z, dt, B, C)
                    error = ((y.float() - expected).abs().max() / expected.abs().max()).item()
                    seconds = timed(lambda: [mamba_read.launch_mamba_read(h, A, D, dt_bias, u, z, dt, B, C) for _ in range(20)]) / 20
                    report[f"read/{block_d}/{block_q}/{warps}"] = {"us": 1e6 * seconds, "rel_err": error}
    fastest = sorted((v["us"], k) for k, v in report.items() if k.startswith("read/"))
    report["read_best"] = fastest[0]
    print(json.dumps({k: report[k] for k in ("device", "encoder_compiled_ms_51200_images", "read_best")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
