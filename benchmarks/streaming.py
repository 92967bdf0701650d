"""Streaming benchmark: per-step latency and state memory of the shipped learners at growing stream
lengths, and the recording overhead per step. Prints JSON (and writes it with --out).

    python benchmarks/streaming.py --out benchmarks/results/streaming_cpu.json

Latency: the engine's step latency (step_x + step_y of one example, batch of one) averaged over the last
``window`` examples before the stream reaches each length (100, 1,000, 10,000 tokens), so it is the cost
of a step *at* that length. The streams are random-label streams of omniglot-mini meta-test images
(drawn with replacement), which is all a timing needs. Memory: ``State.nbytes()`` at that length.

Recording overhead: the shipped-checkpoint recording setting (20 tasks x 5 shots, queries of the tasks
seen evaluated after every step, association maps at task ends). Its time is gathering each snapshot
into the episode trace plus writing the episode to HDF5 (crash-safe copy-append-rename), per step; it
is compared with the step latency (step_x + step_y) and with the engine's whole step (step, evaluation,
association maps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from mclstudio.data.episodes import Episode, EpisodeSpec
from mclstudio.data.sources import get_source
from mclstudio.engine import EngineConfig, EpisodeTrace, StreamEngine
from mclstudio.learners.base import Learner
from mclstudio.recording.hdf5 import RecordingWriter
from mclstudio.recording.session import default_rows_queries, identity
from mclstudio.store.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def device_info() -> dict[str, object]:
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": "cpu",
        "cpu_model": cpu_model or platform.processor(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def random_stream(examples: int, vocab: int, seed: int = 0) -> Episode:
    """One random-label stream of omniglot-mini meta-test images: (1, examples, 1, 32, 32), codes < vocab."""
    source = get_source("omniglot-mini")
    rng = np.random.default_rng(seed)
    classes = source.split_classes["test"]
    ids = source.class_index[rng.choice(classes, examples), rng.integers(0, source.drawers, examples)]
    x = source.images[torch.from_numpy(ids)].float() * (2 / 255) - 1  # (examples, 1, 32, 32)
    y = torch.from_numpy(rng.integers(0, vocab, examples))
    q = x[:4]
    return Episode(
        stream_x=x[None], stream_y=y[None], query_x=q[None], query_y=y[None, :4],
        stream_task=torch.zeros(examples, dtype=torch.long), query_task=torch.zeros(4, dtype=torch.long),
        class_ids=torch.zeros(1, 1, dtype=torch.long), codes=y[None, :1].clone(),
        train_sample_ids=torch.from_numpy(ids)[None, None], test_sample_ids=torch.from_numpy(ids[:4])[None, None],
    )


def stream_benchmark(learners: dict[str, Learner], lengths: list[int], window: int) -> dict[str, dict]:
    """Each learner alone (so one's cache traffic does not slow the other) on the same random stream,
    as long as the longest length (in tokens)."""
    examples = max(lengths) // 2
    vocab = min(learner.config.y_vocab for learner in learners.values())
    stream = random_stream(examples, vocab)
    results: dict[str, dict] = {}
    for name, learner in learners.items():
        t0 = time.perf_counter()
        latencies: list[float] = []
        at_length: list[dict] = []
        for (snap,) in StreamEngine({name: learner}, stream, EngineConfig(eval_every="none")):
            latencies.append(snap.latency_s)
            if snap.tokens in lengths:
                lat = latencies[-window:]
                at_length.append({
                    "tokens": snap.tokens,
                    "step_latency_ms_mean": 1e3 * statistics.fmean(lat),
                    "step_latency_ms_median": 1e3 * statistics.median(lat),
                    "window_steps": len(lat),
                    "state_bytes": snap.state_bytes,
                })
        results[name] = {"at_length": at_length, "whole_stream_steps_s": sum(latencies),
                         "whole_stream_wall_s": time.perf_counter() - t0}
        print(f"stream benchmark {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return results


def recording_benchmark(checkpoints: list, episodes: int) -> dict[str, float]:
    """Time the recorder's own work per step against the step itself, in the recording setting."""
    vocab = min(c.learner.config.y_vocab for c in checkpoints)
    spec = EpisodeSpec(tasks=20, train_shots=5, test_shots=5, seed=1000, num_codes=vocab)
    config = EngineConfig(eval_every="step", rows_queries=default_rows_queries(spec), rows_every="task")
    names = [c.name for c in checkpoints]
    learners = list(zip(names, (c.learner for c in checkpoints)))
    source = get_source(spec.dataset)
    step_s = engine_s = gather_s = write_s = 0.0
    steps = 0
    with tempfile.TemporaryDirectory() as tmp:
        writer = RecordingWriter(Path(tmp) / "bench.h5", [identity(n, c) for n, c in zip(names, checkpoints)], config)
        for e in range(episodes):
            episode = source.episode(spec.with_seed(spec.seed + e))
            engine = StreamEngine(learners, episode, config)
            traces = {n: EpisodeTrace.empty(n, engine, lr.config.n_layers) for n, lr in learners}
            it = iter(engine)
            while True:
                t0 = time.perf_counter()
                snaps = next(it, None)
                t1 = time.perf_counter()
                if snaps is None:
                    break
                for snap in snaps:
                    traces[snap.learner].add(snap)
                    step_s += snap.latency_s
                gather_s += time.perf_counter() - t1
                engine_s += t1 - t0
                steps += 1
            t0 = time.perf_counter()
            writer.write_episode(episode, traces)
            write_s += time.perf_counter() - t0
        size = (Path(tmp) / "bench.h5").stat().st_size
    record_s = gather_s + write_s
    return {
        "learners": names,
        "episodes": episodes,
        "steps": steps,
        "step_ms": 1e3 * step_s / steps,  # step_x + step_y of every learner in the lock-step
        "engine_step_ms": 1e3 * engine_s / steps,  # the engine's whole step: steps, evaluation, rows
        "recording_ms_per_step": 1e3 * record_s / steps,  # gathering + HDF5 writing, amortised
        "gather_ms_per_step": 1e3 * gather_s / steps,  # snapshots into the episode trace
        "write_ms_per_step": 1e3 * write_s / steps,  # HDF5 episode write (gzip, copy, fsync, rename), amortised
        "recording_overhead_vs_step": record_s / step_s,
        "recording_overhead_vs_engine_step": record_s / engine_s,
        "file_bytes_per_episode": size / episodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 10000], help="stream lengths in tokens")
    parser.add_argument("--window", type=int, default=50, help="steps averaged before each length")
    parser.add_argument("--record-episodes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); batch-of-one steps are latency-bound and more "
                             "threads only oversubscribe a shared machine")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpts = [load_checkpoint(ROOT / "checkpoints" / f"{name}.pt") for name in ("mamba", "transformer")]
    learners = {c.name: c.learner for c in ckpts}
    result = {
        "benchmark": "streaming",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **device_info(),
        "checkpoints": {c.name: {"path": str(c.path.relative_to(ROOT)), "sha256": c.sha256,
                                 "parameters": c.learner.num_parameters()} for c in ckpts},
        "batch_size": 1,
        "stream": stream_benchmark(learners, args.lengths, args.window),
        "recording": recording_benchmark(ckpts, args.record_episodes),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
