"""Meta-training speed of every learner, with a breakdown of where a step's time goes (issue 15).

A step is what ``mclstudio train`` does each iteration: sample a batch of meta-train episodes
(``source.batch``), then ``trainer.meta_train_step`` (forward, cross-entropy on the queries plus the
selectivity loss with lambda 0.5, backward, gradient clipping, the optimizer and the schedule), in
bf16 autocast on CUDA. For each learner at paper size and at the shipped size:

- ``episodes_per_s``: the training loop (sampling included) at the global batch (64 by default);
- ``largest_batch``: the same at growing batches until one runs out of memory;
- ``breakdown_ms``: the step's parts, each timed as a variant of the step on one fixed batch of episodes
  (differences of variants, as METHOD.md suggests, since backward kernels carry no forward labels):
  sampling alone, the step without sampling, without the selectivity loss (its cost is the difference),
  with the encoder frozen and the images looked up as embeddings (the encoder's forward and backward
  is the difference), the forward pass alone, and the clip + optimizer step alone;
- ``profile``: one step under torch.profiler: the GPU's busy time against the wall time (the rest is
  host time the GPU waits for) and the kernels that take most of it.

    python benchmarks/train_speed.py --device cuda --out benchmarks/results/train_speed.json
    python benchmarks/train_speed.py --device cpu --models mamba --sizes shipped --batch 4 --steps 2  # a smoke run
    python benchmarks/train_speed.py merge part1.json part2.json all.json  # runs of different learners as one

Writes JSON naming the device, with ``paper_size_episodes_per_s`` and ``shipped_size_episodes_per_s`` per
learner at the global batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mclstudio.data import EpisodeSpec, get_source  # noqa: E402
from mclstudio.learners.base import Learner  # noqa: E402
from mclstudio.learners.registry import LEARNERS, build_learner, make_config  # noqa: E402
from mclstudio.learners.scan import CUDA_SCAN_IMPORT_ERROR, cuda_scan_available  # noqa: E402
from mclstudio.training.loop import (  # noqa: E402
    build_optimizer,
    embed_pool,
    episode_seed,
    meta_train_step,
    warmup_halving_schedule,
)

# Paper size: MambaCL's Mamba (5.4M parameters) and Lee et al.'s attention learners; shipped size:
# checkpoints/train_shipped.sh.
COMMON = dict(x_shape=(1, 32, 32), y_vocab=100)
SIZES = {
    "paper": {
        "mamba": dict(d_model=256, n_layers=12, encoder_channels=64),
        "transformer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024, encoder_channels=64),
        "linear_transformer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024, encoder_channels=64),
        "performer": dict(d_model=512, n_layers=4, n_heads=8, d_ff=1024, n_features=128, encoder_channels=64),
        "longhorn": dict(d_model=256, n_layers=12, encoder_channels=64),
        "protonet": dict(d_model=256, encoder_channels=64),
    },
    "shipped": {
        "mamba": dict(d_model=128, n_layers=4, encoder_channels=32),
        "transformer": dict(d_model=128, n_layers=4, n_heads=4, d_ff=256, encoder_channels=32),
        "linear_transformer": dict(d_model=128, n_layers=4, n_heads=4, d_ff=256, encoder_channels=32),
        "performer": dict(d_model=128, n_layers=4, n_heads=4, d_ff=256, encoder_channels=32),
        "longhorn": dict(d_model=128, n_layers=4, encoder_channels=32),
        "protonet": dict(d_model=128, encoder_channels=32),
    },
}
SLCT_LAMBDA = 0.5
GRAD_CLIP = 1.0


def cuda_checked_device(name: str) -> torch.device:
    """The benchmark's device; exits with one line when CUDA is asked for without a GPU."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda asked for, but no CUDA GPU is available")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int) -> float:
    """Seconds per call of fn, after warm-up calls, the device synchronised around the timed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - started) / repeat


class Setup:
    """A learner at one size with its optimizer, schedule and episode source, as ``train`` sets them up."""

    def __init__(self, model: str, size: str, device: torch.device, source) -> None:
        torch.manual_seed(0)
        self.device = device
        self.learner: Learner = build_learner(make_config(model, **COMMON, **SIZES[size][model])).to(device)
        self.learner.train()
        self.params = list(self.learner.parameters())
        self.optimizer = build_optimizer(self.learner, 1e-4, device)
        self.schedule = warmup_halving_schedule(self.optimizer, 10, 10_000)
        self.source = source
        self.use_amp = device.type == "cuda"
        self.spec = EpisodeSpec(dataset="omniglot-mini", split="train", tasks=20, train_shots=5, test_shots=5, num_codes=100)

    def sample(self, step: int, batch: int):
        return self.source.batch([self.spec.with_seed(episode_seed(0, step, 0, 1, i, batch)) for i in range(batch)])

    def step(self, ep, slct_lambda: float = SLCT_LAMBDA, table: torch.Tensor | None = None) -> None:
        meta_train_step(self.learner, ep, self.optimizer, self.schedule, self.params, slct_lambda, GRAD_CLIP,
                        "bf16" if self.use_amp else "fp32", table)

    def loop_rate(self, batch: int, steps: int, warmup: int) -> float:
        """Episodes/s of the training loop: sampling + step, as ``train`` runs them."""
        counter = iter(range(10**9))
        seconds = timed(lambda: self.step(self.sample(next(counter), batch)), self.device, warmup, steps)
        return batch / seconds

    def forward_only(self, ep) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else torch.autocast("cpu", enabled=False):
            out = self.learner(ep.stream_x, ep.stream_y, ep.query_x, with_rows=True)
        del out

    def optimizer_only(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.optimizer.step()


def breakdown(setup: Setup, batch: int, steps: int, warmup: int) -> dict[str, float]:
    ep = setup.sample(0, batch)
    ms = {}
    ms["sampling"] = 1000 * timed(lambda: setup.sample(1, batch), setup.device, 1, steps)
    ms["step"] = 1000 * timed(lambda: setup.step(ep), setup.device, warmup, steps)
    ms["step_without_selectivity"] = 1000 * timed(lambda: setup.step(ep, slct_lambda=0.0), setup.device, warmup, steps)
    with torch.no_grad():
        table = embed_pool(setup.learner, setup.source)
    setup.learner.embedding.x_encoder.requires_grad_(False)
    ms["step_encoder_frozen"] = 1000 * timed(lambda: setup.step(ep, table=table), setup.device, warmup, steps)
    setup.learner.embedding.x_encoder.requires_grad_(True)
    table = None  # frees the embeddings of the pool
    ms["forward"] = 1000 * timed(lambda: setup.forward_only(ep), setup.device, warmup, steps)
    setup.step(ep)  # leaves gradients for the optimizer-alone timing
    ms["clip_and_optimizer"] = 1000 * timed(setup.optimizer_only, setup.device, 1, steps)
    ms["selectivity_share"] = ms["step"] - ms["step_without_selectivity"]
    ms["encoder_share"] = ms["step"] - ms["step_encoder_frozen"]
    return {k: round(v, 3) for k, v in ms.items()}


def profile(setup: Setup, batch: int, top: int = 15, sequence_model_only: bool = False) -> dict:
    """One step (sampling included) under torch.profiler: GPU busy time, wall time, top kernels.
    sequence_model_only: the step without the selectivity loss and with the encoder frozen (images
    looked up as embeddings), to see where the sequence model's own training time goes."""
    table = None
    if sequence_model_only:
        with torch.no_grad():
            table = embed_pool(setup.learner, setup.source)
        setup.learner.embedding.x_encoder.requires_grad_(False)
    lam = 0.0 if sequence_model_only else SLCT_LAMBDA
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ep = setup.sample(2, batch)
    setup.step(ep, lam, table)
    sync(setup.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        started = time.perf_counter()
        setup.step(setup.sample(3, batch), lam, table)
        sync(setup.device)
        wall = time.perf_counter() - started
    setup.learner.embedding.x_encoder.requires_grad_(True)
    events = prof.key_averages()
    if setup.device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 1000
        kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
        rows = [{"kernel": e.key[:120], "ms": round(e.self_device_time_total / 1000, 3), "calls": e.count} for e in kernels[:top]]
    else:
        busy = float("nan")
        ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        rows = [{"op": e.key[:120], "ms": round(e.self_cpu_time_total / 1000, 3), "calls": e.count} for e in ops[:top]]
    host = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU), key=lambda e: e.self_cpu_time_total, reverse=True)
    host_rows = [{"op": e.key[:80], "ms": round(e.self_cpu_time_total / 1000, 3), "calls": e.count} for e in host[:top]]
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"))
    return {"wall_ms": round(1000 * wall, 3), "gpu_busy_ms": round(busy, 3) if busy == busy else None, "top": rows,
            "kernel_launches": launches, "host_top": host_rows}


def compiled_encoder_error(setup: Setup) -> dict[str, float]:
    """Compile the learner's training pass (``Learner.compile_training``, as ``train`` does on CUDA) and
    check its encoder on one batch of episode images against the modules under the same bf16 autocast:
    the largest difference of the embeddings and of each parameter's gradient, relative to the largest
    value."""
    encoder = setup.learner.embedding.x_encoder
    images = setup.sample(0, 8).stream_x.flatten(0, 1)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = encoder(images).float()
        weights = torch.linspace(-1, 1, out.shape[-1], device=out.device)
        return out.detach(), list(torch.autograd.grad((out * weights).sum(), list(encoder.parameters())))

    expected, expected_grads = run()
    setup.learner.compile_training()
    got, got_grads = run()
    relative = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))  # noqa: E731
    return {"embeddings": relative(got, expected), "gradients": max(relative(g, e) for g, e in zip(got_grads, expected_grads))}


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def bench(model: str, size: str, args: argparse.Namespace, device: torch.device, source) -> dict:
    setup = Setup(model, size, device, source)
    result: dict = {"parameters": setup.learner.num_parameters(), "config": SIZES[size][model]}
    if args.compile and device.type == "cuda":
        result["compiled_encoder_error"] = compiled_encoder_error(setup)  # compiles the training pass too
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result["episodes_per_s"] = round(setup.loop_rate(args.batch, args.steps, args.warmup), 2)
        if device.type == "cuda":
            result["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["breakdown_ms"] = breakdown(setup, args.batch, args.steps, args.warmup)
        result["profile"] = profile(setup, args.batch)
        result["profile_sequence_model"] = profile(setup, args.batch, sequence_model_only=True)
    except Exception as exc:  # report and go on to the next learner
        if not out_of_memory(exc):
            raise
        result["error"] = f"out of memory at batch {args.batch}"
        setup.optimizer.zero_grad(set_to_none=True)
        for batch in [b for b in (args.batch // 2, args.batch // 4) if b >= 1]:  # what does fit
            torch.cuda.empty_cache() if device.type == "cuda" else None
            try:
                result[f"episodes_per_s_at_batch_{batch}"] = round(setup.loop_rate(batch, args.steps, args.warmup), 2)
                break
            except Exception as inner:
                if not out_of_memory(inner):
                    raise
                setup.optimizer.zero_grad(set_to_none=True)
    print(model, size, json.dumps({k: v for k, v in result.items() if k != "profile"}), flush=True)
    larger: list[dict] = []
    for batch in [] if "error" in result else [int(b) for b in args.larger_batches.split(",") if b]:
        torch.cuda.empty_cache() if device.type == "cuda" else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            rate = setup.loop_rate(batch, max(2, args.steps // 2), 1)
            row = {"batch": batch, "episodes_per_s": round(rate, 2)}
            if device.type == "cuda":
                row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            setup.optimizer.zero_grad(set_to_none=True)
            larger.append({"batch": batch, "error": "out of memory"})
            break
        larger.append(row)
        print(model, size, json.dumps(row), flush=True)
    result["larger_batches"] = larger
    fitting = [r for r in larger if "episodes_per_s" in r]
    result["largest_batch"] = fitting[-1]["batch"] if fitting else args.batch
    del setup
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def merge(parts: list[Path], out: Path) -> None:
    """One report from runs that measured different learners (e.g. on two GPUs of one machine at once)."""
    reports = [json.loads(p.read_text()) for p in parts]
    merged = {k: v for k, v in reports[0].items() if k != "learners"}
    merged["merged_from"] = [str(p) for p in parts]
    merged["learners"] = {m: e for r in reports for m, e in r["learners"].items()}
    out.write_text(json.dumps(merged, indent=1) + "\n")


def main() -> None:
    if sys.argv[1:2] == ["merge"]:  # train_speed.py merge A.json B.json OUT.json
        merge([Path(p) for p in sys.argv[2:-1]], Path(sys.argv[-1]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=",".join(LEARNERS))
    parser.add_argument("--sizes", default="paper,shipped")
    parser.add_argument("--batch", type=int, default=64, help="global batch of the headline figures")
    parser.add_argument("--larger-batches", default="128,256,512,1024", help="tried in turn until one runs out of memory")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="no torch.compile of the training pass (train compiles on CUDA by default)")
    args = parser.parse_args()
    device = cuda_checked_device(args.device)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(LEARNERS))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(LEARNERS)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    source = get_source("omniglot-mini").to(device)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "mamba_ssm_scan": cuda_scan_available() if device.type == "cuda" else False,
        "mamba_ssm_import_error": CUDA_SCAN_IMPORT_ERROR or None,
        "global_batch": args.batch,
        "selectivity_lambda": SLCT_LAMBDA,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "compiled": args.compile,
        "episode": "omniglot-mini meta-train, 20 tasks x 5 shots, 5 query shots",
        "learners": {},
    }
    for model in models:
        entry: dict = {}
        for size in [s for s in args.sizes.split(",") if s]:
            entry[size] = bench(model, size, args, device, source)
            entry[f"{size}_size_episodes_per_s"] = entry[size].get("episodes_per_s")
        report["learners"][model] = entry
        if args.out:  # written after every learner, so a run cut short keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({m: {k: v for k, v in e.items() if k.endswith("episodes_per_s")} for m, e in report["learners"].items()}))


if __name__ == "__main__":
    main()
