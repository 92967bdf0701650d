"""Mixed precision: what bf16 and fp16 change, against fp32, for every learner checkpoint.

    python benchmarks/precision.py --device cpu --episodes 64 --batch-size 16 --out benchmarks/results/precision_cpu.json
    python benchmarks/precision.py --device cuda --episodes 512 --batch-size 64 --out benchmarks/results/precision_h100.json

For every checkpoints/*.pt (globbed, so new learners join by themselves), at fp32, bf16 and fp16
(``mclstudio.precision``: torch.autocast; weights and accumulating states stay fp32):

- accuracy over the same meta-test episodes (the checkpoint's trained setting on the meta-test split,
  seeds EVAL_SEED_BASE + i as ``mclstudio eval`` uses), its change against fp32 in points, and the
  fraction of query predictions that differ from fp32's;
- episodes/s of the parallel evaluation path (the model's forward pass only: the episode batches are
  built on the device beforehand). Precisions take turns batch by batch, so a load that comes and
  goes on a shared machine falls on all of them alike; a warm-up batch per precision is not timed;
- peak memory of one batch of the parallel path above what was allocated before it (weights, inputs),
  for the whole learner and for the sequence model alone (x embeddings computed beforehand; the image
  encoder's activations dominate the whole). CUDA: torch.cuda.max_memory_allocated() after
  reset_peak_memory_stats(), minus memory_allocated() before, after a warm-up batch. CPU (torch keeps
  no allocator statistics there): the peak of the bytes of live tensor storages that torch operations
  created during the batch, tracked by a TorchDispatchMode. Kernels' internal scratch buffers (e.g.
  inside a fused attention kernel) are not seen, so on the CPU this is a lower bound of the same thing;
- the streaming path (``StreamEngine``, batch of one, no evaluation): state bytes after the whole
  stream and the median ms of step_x + step_y per example, with 1 CPU thread as benchmarks/streaming.py
  (a batch of one is latency-bound). On CUDA the engine times the host side (no synchronize).

The JSON names the device (CPU model or GPU name), the torch version, the threads and the load average.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming import device_info  # noqa: E402

from mclstudio.data import get_source  # noqa: E402
from mclstudio.data.episodes import Episode  # noqa: E402
from mclstudio.engine import EngineConfig, run_episode  # noqa: E402
from mclstudio.learners.base import Learner  # noqa: E402
from mclstudio.metrics import episode_accuracy, mean_ci95  # noqa: E402
from mclstudio.precision import PRECISIONS, autocast, check_precision  # noqa: E402
from mclstudio.store.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from mclstudio.training.evaluate import EVAL_SEED_BASE, trained_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STREAM_THREADS = 1


class LiveTensorPeak(TorchDispatchMode):
    """The peak, while active, of the bytes of tensor storages that torch operations created and that
    are still alive (a storage counts once however many views share it; outputs that alias an input,
    views and in-place results, are not new memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in inputs and ptr not in self.live:
                self.live[ptr] = (StorageWeakRef(storage), storage.nbytes())
                self.current += storage.nbytes()
        if self.current > self.peak:
            # current counts storages freed since the last look, so it can only overstate what is live:
            # drop those and look again only when it would set a new peak (exact, and cheap).
            for key, (ref, nbytes) in list(self.live.items()):
                if ref.expired():
                    del self.live[key]
                    self.current -= nbytes
            self.peak = max(self.peak, self.current)
        return out


def run_batch(learner: Learner, ep: Episode, precision: str, embedded: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Logits (B, Q, V) of one batch at ``precision``, in float32; with ``embedded`` (the stream's and the
    queries' x embeddings) the sequence model alone, without the image encoder."""
    with torch.no_grad(), autocast(precision, ep.query_x.device):
        if embedded is None:
            return learner(ep.stream_x, ep.stream_y, ep.query_x).logits.float()
        return learner(embedded[0], ep.stream_y, embedded[1], embedded=True).logits.float()


def peak_bytes(learner: Learner, ep: Episode, precision: str, sequence_model_only: bool = False) -> int:
    """Peak memory of one batch above what was allocated before it (see the module docstring)."""
    device = ep.query_x.device
    embedded = None
    if sequence_model_only:
        with torch.no_grad(), autocast(precision, device):
            embedded = learner.embedding.embed_x(ep.stream_x), learner.embedding.embed_x(ep.query_x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_batch(learner, ep, precision, embedded)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorPeak() as tracker:
        run_batch(learner, ep, precision, embedded)
    return tracker.peak


def timed(learner: Learner, ep: Episode, precision: str) -> tuple[torch.Tensor, float]:
    device = ep.query_x.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    logits = run_batch(learner, ep, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return logits, time.perf_counter() - t0


def parallel_path(learner: Learner, batches: list[Episode], precisions: list[str]) -> dict[str, dict[str, Any]]:
    """Accuracy, predictions, time and peak memory per precision, precisions taking turns per batch."""
    out: dict[str, dict[str, Any]] = {}
    for p in precisions:  # the first batch once per precision: warm-up and memory
        try:
            if batches[0].query_x.is_cuda:  # one-time allocations (cuBLAS workspaces) before measuring
                run_batch(learner, batches[0], p)
            out[p] = {"peak_bytes": peak_bytes(learner, batches[0], p),
                      "peak_bytes_sequence_model": peak_bytes(learner, batches[0], p, sequence_model_only=True),
                      "seconds": 0.0, "acc": [], "pred": [], "nonfinite": 0}
        except RuntimeError as exc:  # CUDA out of memory included
            out[p] = {"error": str(exc).strip().splitlines()[0][:200]}
    for ep in batches:
        for p in precisions:
            r = out[p]
            if "error" in r:
                continue
            try:
                logits, seconds = timed(learner, ep, p)
            except RuntimeError as exc:  # CUDA out of memory included
                out[p] = {"error": str(exc).strip().splitlines()[0][:200]}
                continue
            r["seconds"] += seconds
            r["acc"].append(episode_accuracy(logits, ep.query_y).cpu().numpy())
            r["pred"].append(logits.argmax(-1).cpu().numpy())
            r["nonfinite"] += int((~torch.isfinite(logits)).any(-1).sum())
    return out


def streaming_path(learner: Learner, episodes: list[Episode], precisions: list[str]) -> dict[str, dict[str, Any]]:
    """State bytes after the whole stream and median ms per example (step_x + step_y), batch of one."""
    latencies: dict[str, list[float]] = {p: [] for p in precisions}
    state: dict[str, int] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(STREAM_THREADS)
    for episode in episodes:
        for p in precisions:
            trace = run_episode([("l", learner)], episode, EngineConfig(eval_every="none", precision=p))["l"]
            latencies[p] += list(trace.latency_s)
            state[p] = int(trace.state_bytes[-1])
    torch.set_num_threads(threads)
    return {p: {"stream_state_bytes": state[p], "stream_ms_per_step": 1e3 * statistics.median(latencies[p])}
            for p in precisions}


def benchmark(ckpt: Checkpoint, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """One row per precision for one checkpoint (a row with "error" where it cannot run)."""
    learner = ckpt.learner.eval()
    spec = trained_spec(ckpt.metadata, learner.config.y_vocab)
    source = get_source(spec.dataset).to(device)
    seeds = [EVAL_SEED_BASE + i for i in range(args.episodes)]
    batches = [source.batch([spec.with_seed(s) for s in seeds[i: i + args.batch_size]]).to(device)
               for i in range(0, args.episodes, args.batch_size)]
    runnable, skipped = [], {}
    for p in PRECISIONS:
        try:
            runnable.append(check_precision(p, device))
        except ValueError as exc:
            skipped[p] = str(exc)
    par = parallel_path(learner, batches, runnable)
    stream = streaming_path(learner, [source.episode(spec.with_seed(s)).to(device)
                                      for s in seeds[: args.stream_episodes]], runnable)
    rows: dict[str, dict[str, Any]] = {}
    for p in PRECISIONS:
        row: dict[str, Any] = {"learner": ckpt.name, "model": learner.config.model, "checkpoint": _shown(ckpt.path),
                               "parameters": learner.num_parameters(), "precision": p}
        r = par.get(p, {"error": skipped.get(p, "")})
        if "error" in r:
            rows[p] = {**row, "error": r["error"]}
            continue
        acc = np.concatenate(r["acc"])
        mean, ci = mean_ci95(acc)
        rows[p] = {**row, "accuracy": 100 * mean, "accuracy_ci95": 100 * ci, "episodes": len(acc),
                   "predictions": np.concatenate(r["pred"]), "episodes_per_s": len(acc) / r["seconds"],
                   "peak_bytes": r["peak_bytes"], "peak_bytes_sequence_model": r["peak_bytes_sequence_model"],
                   "nonfinite_logit_queries": r["nonfinite"], **stream[p]}
    base = rows["fp32"]
    for p, row in rows.items():
        if "error" in row or "error" in base:
            continue
        row.update(accuracy_change_points=row["accuracy"] - base["accuracy"],
                   predictions_differ_fraction=float((row["predictions"] != base["predictions"]).mean()),
                   **{f"{key}_ratio_vs_fp32": row[key] / max(base[key], 1e-12) for key in RATIOS})
    for row in rows.values():
        row.pop("predictions", None)
        print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                        if k not in ("model", "checkpoint", "parameters")), file=sys.stderr)
    return list(rows.values())


RATIOS = ("episodes_per_s", "peak_bytes", "peak_bytes_sequence_model", "stream_state_bytes", "stream_ms_per_step")


def _shown(path: Path) -> str:
    """A checkpoint path relative to the repository when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README's table: accuracy per precision, changes against fp32, speed and memory."""
    lines = ["| learner | precision | accuracy % | change (points) | predictions changed | episodes/s "
             "| peak memory, whole / sequence model | stream state | stream ms/step |",
             "|---|---|---|---|---|---|---|---|---|"]

    def ratio(r: dict[str, Any], key: str) -> str:
        return "" if r["precision"] == "fp32" or f"{key}_ratio_vs_fp32" not in r else f" ({r[f'{key}_ratio_vs_fp32']:.2f}x)"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['learner']} | {r['precision']} | {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['learner']} | {r['precision']} | {r['accuracy']:.2f} ± {r['accuracy_ci95']:.1f} "
            f"| {r.get('accuracy_change_points', 0.0):+.2f} | {100 * r.get('predictions_differ_fraction', 0.0):.2f}% "
            f"| {r['episodes_per_s']:.2f}{ratio(r, 'episodes_per_s')} "
            f"| {r['peak_bytes'] / 2**20:.1f}{ratio(r, 'peak_bytes')} / "
            f"{r['peak_bytes_sequence_model'] / 2**20:.1f} MiB{ratio(r, 'peak_bytes_sequence_model')} "
            f"| {r['stream_state_bytes']:,} B{ratio(r, 'stream_state_bytes')} "
            f"| {r['stream_ms_per_step']:.2f}{ratio(r, 'stream_ms_per_step')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--episodes", type=int, default=512, help="meta-test episodes per precision")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--stream-episodes", type=int, default=2, help="episodes for the streaming path")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count() or 1, help="torch CPU threads [the CPUs this process may use]")
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints" / "*.pt"), help="glob of checkpoints")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args()
    if args.episodes < 1 or args.batch_size < 1 or args.stream_episodes < 1:
        parser.error("--episodes, --batch-size and --stream-episodes must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    paths = sorted(glob.glob(args.checkpoints))
    if not paths:
        parser.error(f"no checkpoint matches {args.checkpoints}")
    info = device_info()
    if device.type == "cuda":
        info.update(device="cuda", gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows = []
    for path in paths:
        rows += benchmark(load_checkpoint(path, device=device), args, device)
    result = {
        "benchmark": "precision",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **info,
        "setting": {"episodes": args.episodes, "batch_size": args.batch_size, "stream_episodes": args.stream_episodes,
                    "stream_threads": STREAM_THREADS,
                    "split": "test", "seeds": f"{EVAL_SEED_BASE} + i", "episode_spec": "each checkpoint's trained "
                    "setting (the shipped ones: omniglot-mini, 20 tasks x 5 shots, 5 query shots)"},
        "memory_method": ("torch.cuda.max_memory_allocated() - memory_allocated() before, one batch"
                          if device.type == "cuda" else
                          "peak bytes of live tensor storages created by torch ops during one batch "
                          "(TorchDispatchMode); excludes kernels' internal scratch buffers"),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "seconds": time.perf_counter() - start,
        "results": rows,
        "table": markdown_table(rows),
    }
    text = json.dumps(result, indent=2)
    print(text)
    print(result["table"], file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
