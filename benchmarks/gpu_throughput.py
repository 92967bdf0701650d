"""GPU throughput of paper-sized learners on 20-task 5-shot episodes (issue 6's benchmark).

For each learner (Mamba of about 5.4M parameters, Transformer of about 9.2M after Lee et al., a Linear
Transformer and Performer of the Transformer's size, and Longhorn of Mamba's), image encoder included,
at several batch sizes:

- meta-test episodes/s and peak GPU memory, all in bf16 autocast, in up to four modes:
  ``eager`` (plain PyTorch), ``compiled`` (torch.compile, inductor), ``graphs`` (torch.compile with CUDA
  graphs, mode "reduce-overhead"), and ``cached`` (compiled with CUDA graphs, with every image of the
  data set embedded once up front: what evaluating many episodes of one data set costs once the
  encoder's work is shared; the one-off embedding time is reported beside it);
- meta-training episodes/s (forward, backward, selectivity regularisation, optimizer step; eager bf16);
- the bf16 matrix rate of this GPU (an 8192^3 product), FLOPs per episode (torch's FlopCounterMode:
  matmuls and convolutions, so the scan's elementwise work is not counted) and the fraction of the
  matrix rate that the episodes/s reach;
- the single-token recurrent step that the app uses (batch 1, step_x then step_y): its latency in eager
  mode and replayed from a CUDA graph (fixed-size states only: the SSM learners);
- the CUDA-vs-built-in scan agreement (benchmarks/cuda_scan_check.py's check), and for each learner how
  far its inference with the fused Triton kernels (``mclstudio/learners/kernels``: the encoder's blocks,
  Mamba's query read; used when gradients are off) is from the same learner run through the PyTorch
  modules (gradients on), in float32 on 8 episodes.

Episodes are sampled once per batch size and reused, so the numbers measure the learners, not the
sampler. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_scan_check import check_scan  # noqa: E402

from mclstudio.data import EpisodeSpec, get_source  # noqa: E402
from mclstudio.learners.base import Learner  # noqa: E402
from mclstudio.learners.kernels import fused_kernels  # noqa: E402
from mclstudio.learners.registry import build_learner, make_config  # noqa: E402
from mclstudio.learners.scan import CUDA_SCAN_IMPORT_ERROR, cuda_scan_available  # noqa: E402
from mclstudio.learners.ssm import SSMLearner  # noqa: E402
from mclstudio.training.losses import selectivity_kl, task_loss  # noqa: E402
from mclstudio.training.loop import embed_pool  # noqa: E402

PAPER_SIZED = {
    "mamba": dict(d_model=256, n_layers=12),
    "transformer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024),
    "linear_transformer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024),
    "performer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024, n_features=128),
    "longhorn": dict(d_model=256, n_layers=12),
}
COMMON = dict(x_shape=(1, 32, 32), y_vocab=100, encoder_channels=64)
MODES = ("eager", "compiled", "graphs", "cached")


def timed(fn: Callable[[], object], warmup: int = 2, repeat: int = 5) -> float:
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


def flops_per_episode(learner: Learner, ep) -> int:
    """Matmul and convolution FLOPs of one episode's inference, counted with the fused kernels off: the
    counter cannot see inside them."""
    one = {k: getattr(ep, k)[:1] for k in ("stream_x", "stream_y", "query_x")}
    with torch.no_grad(), fused_kernels(False), FlopCounterMode(display=False) as counter:
        learner(one["stream_x"], one["stream_y"], one["query_x"])
    return int(counter.get_total_flops())


def inference_fn(learner: Learner, mode: str, ep, pool: torch.Tensor | None) -> Callable[[], object]:
    """A no-argument call that answers the batch's queries in the given mode."""

    def answer(stream_x: torch.Tensor, stream_y: torch.Tensor, query_x: torch.Tensor, embedded: bool) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return learner(stream_x, stream_y, query_x, embedded=embedded).logits

    if mode == "eager":
        return lambda: answer(ep.stream_x, ep.stream_y, ep.query_x, False)
    if mode == "compiled":
        compiled = torch.compile(answer, dynamic=False)
        return lambda: compiled(ep.stream_x, ep.stream_y, ep.query_x, False)
    compiled = torch.compile(answer, mode="reduce-overhead", dynamic=False)
    if mode == "graphs":
        return lambda: compiled(ep.stream_x, ep.stream_y, ep.query_x, False)
    assert pool is not None
    batch = ep.stream_x.shape[0]
    train_ids, test_ids = ep.train_sample_ids.reshape(batch, -1), ep.test_sample_ids.reshape(batch, -1)
    return lambda: compiled(pool[train_ids], ep.stream_y, pool[test_ids], True)


def bench_inference(learner: Learner, mode: str, ep, pool: torch.Tensor | None) -> dict:
    batch = ep.stream_x.shape[0]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.no_grad():
        fn = inference_fn(learner, mode, ep, pool)
        fn()  # compiles, for the compiled modes
        torch.cuda.synchronize()
        first_call = time.perf_counter() - started
        seconds = timed(fn, warmup=3, repeat=7)
    return {"episodes_per_s": batch / seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "first_call_s": first_call}


def bench_training(learner: Learner, optimizer: torch.optim.Optimizer, ep) -> dict:
    learner.train()

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = learner(ep.stream_x, ep.stream_y, ep.query_x, with_rows=True)
            loss = task_loss(out.logits, ep.query_y) + 0.5 * selectivity_kl(out.rows, ep.stream_task, ep.query_task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    torch.cuda.reset_peak_memory_stats()
    try:
        seconds = timed(train_step, warmup=1, repeat=3)
        return {"episodes_per_s": ep.stream_x.shape[0] / seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    finally:
        learner.eval()
        optimizer.zero_grad(set_to_none=True)


def step_latency(learner: Learner, ep, graphed: bool) -> float:
    """Seconds per streamed example (step_x then step_y) at batch 1, eager or replayed from a CUDA graph."""
    state = learner.empty_state(1)
    x, y = ep.stream_x[:1, 0].clone(), ep.stream_y[:1, 0].clone()

    def step_in_place() -> None:
        new = learner.step_y(learner.step_x(state, x), y)
        for dst, src in zip(state.tensors(), new.tensors()):
            dst.copy_(src)

    with torch.no_grad():
        if not graphed:
            return timed(step_in_place, warmup=5, repeat=50)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step_in_place()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step_in_place()
        return timed(graph.replay, warmup=5, repeat=50)


def guarded(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"error": "out of memory"}
    except Exception as exc:  # a compile failure is a result too: report it, go on with the rest
        torch.cuda.empty_cache()
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def fused_agreement(learner: Learner, source) -> dict:
    """Logits with the fused inference kernels (no grad) against the PyTorch modules (grad on): float32,
    8 episodes. Returns the largest difference relative to the largest logit, the share of equal
    predictions and, where they differ, how close the modules' top two logits were (relative to the
    largest logit): a near-tie flips on rounding alone."""
    ep = source.batch([EpisodeSpec(split="test", tasks=20, train_shots=5, test_shots=5, seed=10_000 + i, num_codes=100) for i in range(8)])
    with torch.no_grad():
        fused = learner(ep.stream_x, ep.stream_y, ep.query_x).logits.float()
    with torch.enable_grad():
        plain = learner(ep.stream_x, ep.stream_y, ep.query_x).logits.float().detach()
    scale = plain.abs().max()
    differ = fused.argmax(-1) != plain.argmax(-1)
    top2 = plain.topk(2, dim=-1).values
    gaps = ((top2[..., 0] - top2[..., 1]) / scale)[differ]
    return {"max_rel_diff": ((fused - plain).abs().max() / scale).item(),
            "same_prediction": 1.0 - differ.float().mean().item(),
            "top2_gap_where_different": gaps.tolist()}


def bench_model(name: str, args: argparse.Namespace, source) -> dict:
    torch.manual_seed(0)
    learner = build_learner(make_config(name, **COMMON, **PAPER_SIZED[name])).cuda().eval()
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-4)
    modes = [m for m in args.modes.split(",") if m]
    compile_this = name in args.compile_models.split(",")
    pool, pool_seconds = None, None
    if "cached" in modes and compile_this:
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            pool = embed_pool(learner, source)
        torch.cuda.synchronize()
        pool_seconds = time.perf_counter() - started
    rows = []
    ep = None
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        specs = [EpisodeSpec(split="test", tasks=20, train_shots=5, test_shots=5, seed=i, num_codes=100) for i in range(batch)]
        ep = source.batch(specs)
        row: dict = {"batch": batch}
        for mode in modes:
            if mode != "eager" and (not compile_this or batch not in [int(b) for b in args.compile_batch_sizes.split(",")]):
                continue
            row[mode] = guarded(lambda: bench_inference(learner, mode, ep, pool))
            torch._dynamo.reset()  # each compiled function is used once: free its graphs and memory
        if batch in [int(b) for b in args.train_batch_sizes.split(",")]:
            row["train"] = guarded(lambda: bench_training(learner, optimizer, ep))
        rows.append(row)
        print(name, json.dumps(row), flush=True)
    assert ep is not None
    result = {
        "parameters": learner.num_parameters(),
        "flops_per_episode": flops_per_episode(learner, ep),
        "pool_images": source.pool_size,
        "pool_embedding_s": pool_seconds,
        "fused_kernels_vs_modules": fused_agreement(learner, source),
        "step_latency_ms": 1000 * step_latency(learner, ep, graphed=False),
        "batches": rows,
    }
    if isinstance(learner, SSMLearner):
        result["step_latency_cuda_graph_ms"] = 1000 * step_latency(learner, ep, graphed=True)
    return result


def print_table(report: dict) -> None:
    rate = report["bf16_matmul_tflops"] * 1e12
    print(f"\n{report['device']}: bf16 matmul {report['bf16_matmul_tflops']:.0f} TFLOP/s")
    print(f"{'model':19s} {'params':>9s} {'GFLOP/ep':>8s} {'batch':>5s} " + " ".join(f"{m:>9s}" for m in MODES)
          + f" {'train':>7s} {'best %bf16':>10s}")
    for name, m in report["models"].items():
        for r in m["batches"]:
            rates = [r.get(mode, {}).get("episodes_per_s", float("nan")) for mode in MODES]
            best = max((x for x in rates if x == x), default=float("nan"))
            print(f"{name:19s} {m['parameters']:9d} {m['flops_per_episode'] / 1e9:8.2f} {r['batch']:5d} "
                  + " ".join(f"{x:9.0f}" for x in rates)
                  + f" {r.get('train', {}).get('episodes_per_s', float('nan')):7.0f} {100 * best * m['flops_per_episode'] / rate:10.1f}")
        graph = m.get("step_latency_cuda_graph_ms")
        print(f"{name:19s} step latency {m['step_latency_ms']:.2f} ms eager"
              + (f", {graph:.3f} ms from a CUDA graph" if graph is not None else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="16,64,256,1024")
    parser.add_argument("--models", default="mamba,transformer,linear_transformer,performer")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--compile-models", default="mamba,transformer", help="models also run compiled")
    parser.add_argument("--compile-batch-sizes", default="256,1024", help="batch sizes of the compiled modes")
    parser.add_argument("--train-batch-sizes", default="16,64,256,1024")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU")
    # Let cuDNN time its algorithms for each shape: its default for the encoder's first convolution
    # (one input channel) was its slowest generic kernel, 14% of a compiled Mamba's inference.
    torch.backends.cudnn.benchmark = True
    source = get_source("omniglot-mini").to("cuda")
    report: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda_scan": cuda_scan_available(),
        "cuda_scan_import_error": CUDA_SCAN_IMPORT_ERROR,
        "bf16_matmul_tflops": matmul_rate() / 1e12,
        "cudnn_benchmark": True,
        "episode": "omniglot-mini meta-test, 20 tasks x 5 shots, 100 queries, 32x32 images",
        "arguments": vars(args),
        "models": {},
    }
    if cuda_scan_available():
        report["scan_agreement_max_relative_error"] = max(max(check_scan(s).values()) for s in range(2))
    started = time.time()
    for name in args.models.split(","):
        report["models"][name] = bench_model(name, args, source)
        if args.out:  # keep what is done if a later model runs out of time
            Path(args.out).write_text(json.dumps(report, indent=2))
    report["seconds"] = time.time() - started
    print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
