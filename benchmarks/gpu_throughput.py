"""GPU throughput of paper-sized learners on 20-task 5-shot episodes (issue 6's benchmark).

For each learner (Mamba of about 5.4M parameters, Transformer of about 9.2M after Lee et al., and a
Linear Transformer and Performer of the Transformer's size), image encoder included, at several batch
sizes: meta-test episodes/s (forward, bf16 autocast), meta-training episodes/s (forward, backward,
selectivity regularisation, optimizer step) and peak GPU memory. Also: the bf16 matrix rate of this GPU
(an 8192^3 product), FLOPs per episode (torch's FlopCounterMode: matmuls and convolutions, so the scan's
elementwise work is not counted), the single-token recurrent step latency that the app uses, and the
CUDA-vs-built-in scan agreement (benchmarks/cuda_scan_check.py's check).

Episodes are sampled once per batch size and reused, so the numbers measure the learners, not the
sampler. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_scan_check import check_scan  # noqa: E402

from mclstudio.data import EpisodeSpec, get_source  # noqa: E402
from mclstudio.learners.registry import build_learner, make_config  # noqa: E402
from mclstudio.learners.scan import CUDA_SCAN_IMPORT_ERROR, cuda_scan_available  # noqa: E402
from mclstudio.training.losses import selectivity_kl, task_loss  # noqa: E402

PAPER_SIZED = {
    "mamba": dict(d_model=256, n_layers=12),
    "transformer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024),
    "linear_transformer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024),
    "performer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024, n_features=128),
}
COMMON = dict(x_shape=(1, 32, 32), y_vocab=100, encoder_channels=64)


def timed(fn, warmup: int = 2, repeat: int = 5) -> float:
    """Median seconds of fn() on the GPU, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    seconds = timed(lambda: a @ b, warmup=3, repeat=10)
    return 2 * 8192**3 / seconds


def flops_per_episode(learner, ep) -> int:
    one = {k: getattr(ep, k)[:1] for k in ("stream_x", "stream_y", "query_x")}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        learner(one["stream_x"], one["stream_y"], one["query_x"])
    return int(counter.get_total_flops())


def bench_model(name: str, batch_sizes: list[int], source) -> dict:
    torch.manual_seed(0)
    learner = build_learner(make_config(name, **COMMON, **PAPER_SIZED[name])).cuda()
    params = learner.num_parameters()
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-4)
    rows = []
    for batch in batch_sizes:
        specs = [EpisodeSpec(split="train", tasks=20, train_shots=5, test_shots=5, seed=i, num_codes=100) for i in range(batch)]
        ep = source.batch(specs)
        row: dict = {"batch": batch}
        try:
            learner.eval()

            def infer() -> None:
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    learner(ep.stream_x, ep.stream_y, ep.query_x)

            torch.cuda.reset_peak_memory_stats()
            row["test_episodes_per_s"] = batch / timed(infer)
            row["test_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            learner.train()

            def train_step() -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = learner(ep.stream_x, ep.stream_y, ep.query_x, with_rows=True)
                    loss = task_loss(out.logits, ep.query_y) + 0.5 * selectivity_kl(out.rows, ep.stream_task, ep.query_task)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            torch.cuda.reset_peak_memory_stats()
            row["train_episodes_per_s"] = batch / timed(train_step, warmup=1, repeat=3)
            row["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except torch.OutOfMemoryError:
            row["error"] = "out of memory"
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        rows.append(row)
        print(name, row, flush=True)
    learner.eval()
    flops = flops_per_episode(learner, ep)
    # the app's path: one token at a time, batch 1, no autocast
    state = learner.empty_state(1)
    x, y = ep.stream_x[:1, 0], ep.stream_y[:1, 0]

    def one_step() -> None:
        nonlocal state
        with torch.no_grad():
            state = learner.step_y(learner.step_x(state, x), y)

    step_latency = timed(one_step, warmup=5, repeat=50)
    return {"parameters": params, "flops_per_episode": flops, "step_latency_ms": 1000 * step_latency, "batches": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="16,64,256,1024")
    parser.add_argument("--models", default=",".join(PAPER_SIZED))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU")
    source = get_source("omniglot-mini").to("cuda")
    report: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda_scan": cuda_scan_available(),
        "cuda_scan_import_error": CUDA_SCAN_IMPORT_ERROR,
        "bf16_matmul_tflops": matmul_rate() / 1e12,
        "episode": "omniglot-mini 20 tasks x 5 shots, 100 queries, 32x32 images",
        "models": {},
    }
    if cuda_scan_available():
        report["scan_agreement_max_relative_error"] = max(max(check_scan(s).values()) for s in range(2))
    started = time.time()
    for name in args.models.split(","):
        report["models"][name] = bench_model(name, [int(b) for b in args.batch_sizes.split(",")], source)
    report["seconds"] = time.time() - started
    rate = report["bf16_matmul_tflops"] * 1e12
    print(f"\n{report['device']}: bf16 matmul {report['bf16_matmul_tflops']:.0f} TFLOP/s")
    print(f"{'model':20s} {'params':>9s} {'GFLOP/ep':>9s} {'batch':>6s} {'test ep/s':>10s} {'train ep/s':>10s} {'peak GiB':>9s} {'% bf16 (test)':>13s}")
    for name, m in report["models"].items():
        for r in m["batches"]:
            test = r.get("test_episodes_per_s", float("nan"))
            frac = 100 * test * m["flops_per_episode"] / rate
            print(f"{name:20s} {m['parameters']:9d} {m['flops_per_episode'] / 1e9:9.2f} {r['batch']:6d} {test:10.0f} "
                  f"{r.get('train_episodes_per_s', float('nan')):10.0f} {r.get('train_peak_gib', float('nan')):9.2f} {frac:13.1f}")
        print(f"{name:20s} single-token step latency {m['step_latency_ms']:.2f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
