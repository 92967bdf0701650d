"""The engine's fused step (engine/graphs.py: one CUDA graph per step for every learner with a fixed-shape state)
against the op-by-op path, on a GPU: the same predictions, the norms within float tolerance, and the
engine's own rate (no studio), every shipped learner alone and all together. Prints JSON (--out writes it).

    python benchmarks/fused_step_check.py --device cuda --out benchmarks/results/fused_step_h200.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from mclstudio.data import EpisodeSpec, get_source
from mclstudio.engine.stream import EngineConfig, StreamEngine
from mclstudio.store.checkpoint import load_checkpoint
from mclstudio.store.device import resolve_device

MODELS = ["mamba", "transformer", "linear_transformer", "performer", "longhorn", "protonet"]


def stream(learners: dict, episode, mode: str) -> tuple[list, float]:
    """Every snapshot of one episode and the model steps per second (all learners stepped = one step)."""
    engine = StreamEngine(learners, episode, EngineConfig(fused_step=mode, rows_queries=(0,)))
    if episode.query_x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    snaps = engine.run()
    return snaps, len(snaps) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    learners = {m: load_checkpoint(f"checkpoints/{m}.pt", device=device).learner for m in MODELS}
    spec = EpisodeSpec(tasks=args.tasks, train_shots=args.shots, num_codes=100, seed=0)
    episode = get_source("omniglot-mini").batch([spec]).to(device)
    rows = []
    for names in [[m] for m in MODELS] + [MODELS[:5], MODELS]:
        chosen = {m: learners[m] for m in names}
        stream(chosen, episode, "auto")  # warm-up (kernels compiled, graphs captured once)
        rates = {}
        results = {}
        for mode in ("off", "auto", "off", "auto"):  # interleaved; the best of two
            results[mode], rate = stream(chosen, episode, mode)
            rates[mode] = max(rates.get(mode, 0.0), rate)
        same = all(np.array_equal(a.predictions, b.predictions) for sa, sb in zip(results["off"], results["auto"])
                   for a, b in zip(sa, sb))
        norm_error = max(float(np.max(np.abs(a.layer_norms - b.layer_norms) / np.maximum(np.abs(a.layer_norms), 1e-6)))
                         for sa, sb in zip(results["off"], results["auto"]) for a, b in zip(sa, sb))
        rows.append({"learners": names, "steps_per_s_op_by_op": round(rates["off"], 1),
                     "steps_per_s_fused": round(rates["auto"], 1), "same_predictions": same,
                     "max_relative_norm_difference": norm_error})
        print(json.dumps(rows[-1]), flush=True)
    out = {"benchmark": "fused_step_check", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
           "episode": f"{args.tasks} tasks x {args.shots} shots, omniglot-mini meta-test, 1 association row per task end",
           "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
