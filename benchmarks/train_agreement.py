"""The fast training path trains the same model as the reference path (issue 15).

Trains a learner for a few hundred steps three times with ``trainer.meta_train_step``:
- fast, seed 0: mamba_ssm's scan with the probe-token state, the fused rows (keys by Triton, products by
  cuBLAS), the Triton diagonal scan (Longhorn), torch.compile's encoder (and Longhorn's transition) on
  CUDA, fused Adam;
- fast, seed 1: the same path, other weights and episodes: the run-to-run spread;
- reference, seed 0: our PyTorch scan and rows (``scan_backend = "reference"``, ``fused_kernels(False)``).
It reports the loss curves smoothed over windows, the largest and mean gap between the fast and the
reference run at the same seed, and the same between the two seeds (the spread the gap is judged by).

    python benchmarks/train_agreement.py --device cuda --out benchmarks/results/train_agreement_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import COMMON, SIZES, cuda_checked_device  # noqa: E402

from mclstudio.data import EpisodeSpec, get_source  # noqa: E402
from mclstudio.learners.kernels import fused_kernels  # noqa: E402
from mclstudio.learners.registry import build_learner, make_config  # noqa: E402
from mclstudio.learners.ssm import SSMLearner  # noqa: E402
from mclstudio.training.loop import build_optimizer, episode_seed, meta_train_step, warmup_halving_schedule  # noqa: E402


def run(model: str, size: str, seed: int, fast: bool, args: argparse.Namespace, source, device: torch.device) -> dict:
    torch.manual_seed(seed)
    learner = build_learner(make_config(model, **COMMON, **SIZES[size][model])).to(device)
    if not fast and isinstance(learner, SSMLearner):
        learner.scan_backend = "reference"
    if fast and device.type == "cuda":  # as ``train`` does on CUDA
        learner.compile_training()
    learner.train()
    params = list(learner.parameters())
    optimizer = build_optimizer(learner, args.lr, device) if fast else torch.optim.Adam(params, lr=args.lr)
    schedule = warmup_halving_schedule(optimizer, 20, 10_000)
    spec = EpisodeSpec(dataset="omniglot-mini", split="train", tasks=20, train_shots=5, test_shots=5, num_codes=100)
    losses = []
    started = time.perf_counter()
    with nullcontext() if fast else fused_kernels(False):
        for step in range(args.steps):
            ep = source.batch([spec.with_seed(episode_seed(seed, step, 0, 1, i, args.batch)) for i in range(args.batch)])
            stats = meta_train_step(learner, ep, optimizer, schedule, params, 0.5, 1.0,
                                    "bf16" if device.type == "cuda" else "fp32")
            losses.append(stats.loss)
    losses = [float(v) for v in losses]
    return {"seconds": round(time.perf_counter() - started, 2), "loss": losses}


def smoothed(losses: list[float], window: int) -> np.ndarray:
    v = np.asarray(losses)
    return v[: len(v) // window * window].reshape(-1, window).mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="mamba,longhorn")
    parser.add_argument("--size", default="shipped", choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = cuda_checked_device(args.device)
    source = get_source("omniglot-mini").to(device)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                    "size": args.size, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                    "window": args.window, "learners": {}}
    for model in [m for m in args.models.split(",") if m]:
        runs = {"fast_seed0": run(model, args.size, 0, True, args, source, device),
                "fast_seed1": run(model, args.size, 1, True, args, source, device),
                "reference_seed0": run(model, args.size, 0, False, args, source, device)}
        fast0, fast1, ref0 = (smoothed(runs[k]["loss"], args.window) for k in ("fast_seed0", "fast_seed1", "reference_seed0"))
        entry = {
            "gap_fast_vs_reference": {"max": float(np.abs(fast0 - ref0).max()), "mean": float(np.abs(fast0 - ref0).mean())},
            "spread_seed0_vs_seed1": {"max": float(np.abs(fast0 - fast1).max()), "mean": float(np.abs(fast0 - fast1).mean())},
            "smoothed": {"fast_seed0": fast0.round(4).tolist(), "fast_seed1": fast1.round(4).tolist(),
                         "reference_seed0": ref0.round(4).tolist()},
            "runs": runs,
        }
        entry["within_spread"] = entry["gap_fast_vs_reference"]["mean"] <= entry["spread_seed0_vs_seed1"]["mean"]
        report["learners"][model] = entry
        print(model, json.dumps({k: v for k, v in entry.items() if k not in ("runs",)}), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
