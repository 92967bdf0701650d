"""Cost of the anytime objective: one meta-training step (forward, selectivity rows, backward, Adam)
with every query after the stream's end ("end") against each query after a random task boundary at or
after its own task ("anytime", ``training/anytime.py``), for every learner.

Default size: the shipped training shape (d_model 128, 4 layers, 20 tasks x 5 shots, 5 query shots,
batch 32, bf16 autocast on CUDA). --tiny: a CPU-sized check (d_model 32, 2 layers, batch 4).
On CUDA it also checks that anytime queries of the training path (mamba_ssm's scan where it imports)
answer as the same learner does on each truncated stream (float32, gradients on).
Prints a table and writes JSON (--out) naming the device.

    python benchmarks/anytime_step.py --out benchmarks/results/anytime_step_h200.json
    OMP_NUM_THREADS=1 python benchmarks/anytime_step.py --tiny --device cpu --out benchmarks/results/anytime_step_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mclstudio.data import EpisodeSpec, get_source
from mclstudio.learners.registry import LEARNERS, build_learner, make_config
from mclstudio.learners.scan import cuda_scan_available
from mclstudio.training.anytime import anytime_generator, sample_query_end
from mclstudio.training.loop import meta_train_step, warmup_halving_schedule

SHIPPED = dict(d_model=128, n_layers=4, x_shape=(1, 32, 32), y_vocab=100, encoder_channels=64)
TINY = dict(d_model=32, n_layers=2, x_shape=(1, 32, 32), y_vocab=100, encoder_channels=16)


def model_size(model_name: str, size: dict) -> dict:
    return {**size, "n_layers": 1} if model_name == "protonet" else size


def time_steps(model_name: str, size: dict, ep, device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of one meta_train_step (slct_lambda 0.1, bf16 on CUDA) with the end and the anytime
    objective. The two alternate step by step (two copies of one model), so a change in the machine's
    load affects both alike."""
    learners, optimizers, schedules = [], [], []
    for _ in range(2):
        torch.manual_seed(0)
        learner = build_learner(make_config(model_name, **model_size(model_name, size))).to(device).train()
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-4)
        learners.append(learner)
        optimizers.append(optimizer)
        schedules.append(warmup_halving_schedule(optimizer, 0, 10000))
    times: list[list[float]] = [[], []]
    for step in range(warmup + steps):
        for k, objective in enumerate(("end", "anytime")):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            query_end = None
            if objective == "anytime":
                query_end = sample_query_end(ep.stream_task, ep.query_task, anytime_generator(0, step)).to(device)
            meta_train_step(learners[k], ep, optimizers[k], schedules[k], list(learners[k].parameters()), 0.1, 1.0,
                            "bf16" if device.type == "cuda" else "fp32", None, step, query_end)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                times[k].append(time.perf_counter() - t0)
    end, anytime = (sorted(t)[len(t) // 2] for t in times)
    return end, anytime


def check_truncation(model_name: str, size: dict, ep, device: torch.device) -> float:
    """Largest |logit difference| between anytime queries and the same queries on truncated streams
    (float32, gradients on: the training path), over 4 episodes."""
    torch.manual_seed(0)
    learner = build_learner(make_config(model_name, **model_size(model_name, size))).to(device).train()
    sx, sy, qx = ep.stream_x[:4], ep.stream_y[:4], ep.query_x[:4]
    query_end = sample_query_end(ep.stream_task, ep.query_task, anytime_generator(0, 0)).to(device)
    out = learner(sx, sy, qx, query_end=query_end).logits
    worst = 0.0
    for e in torch.unique(query_end).tolist():
        mine = (query_end == e).nonzero().flatten()
        alone = learner(sx[:, :e], sy[:, :e], qx[:, mine]).logits
        worst = max(worst, (alone - out[:, mine]).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(LEARNERS))
    parser.add_argument("--steps", type=int, default=0, help="Timed steps (default 20 on CUDA, 9 on the CPU).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    size = TINY if args.tiny else SHIPPED
    batch = 4 if args.tiny else 32
    steps = args.steps or (20 if device.type == "cuda" else 9)
    source = get_source("omniglot-mini").to(device)
    spec = EpisodeSpec(split="train", tasks=20, train_shots=5, test_shots=5, num_codes=size["y_vocab"])
    ep = source.batch([spec.with_seed(i) for i in range(batch)])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    results = {"device": name, "torch": torch.__version__, "mamba_ssm_scan": device.type == "cuda" and cuda_scan_available(),
               "size": {**size, "x_shape": list(size["x_shape"])}, "batch": batch, "tasks": 20, "shots": 5,
               "test_shots": 5, "slct_lambda": 0.1, "amp_bf16": device.type == "cuda", "timed_steps": steps, "models": {}}
    print(f"{name}: median step seconds, batch {batch}")
    for model_name in args.models.split(","):
        end, anytime = time_steps(model_name, size, ep, device, steps, 2)
        row = {"end_s": end, "anytime_s": anytime, "ratio": anytime / end}
        if device.type == "cuda":
            row["max_abs_logit_diff_vs_truncated"] = check_truncation(model_name, size, ep, device)
        results["models"][model_name] = row
        print(f"{model_name:20s} end {end:.4f}  anytime {anytime:.4f}  x{anytime / end:.2f}"
              + (f"  truncation check {row['max_abs_logit_diff_vs_truncated']:.2e}" if "max_abs_logit_diff_vs_truncated" in row else ""))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
