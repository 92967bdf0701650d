"""DDP on the CPU (2 gloo processes): after several steps the weights equal those of one process with the
global batch, and differ from a run whose gradients were never synchronised. Tiny model, 4 steps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
# Float32 summation order is all that separates DDP from one process (measured: under 1e-6); a run without
# synchronisation differs from it by about the learning rate (1e-3) per step. 16 encoder channels in 8
# GroupNorm groups: with one channel per group a conv bias has no effect on the loss, its gradient is pure
# rounding noise, and Adam turns that noise into steps of +-lr that differ between any two runs.
SAME = 1e-5
APART = 1e-4


def train_args(out: Path, batch: int) -> list[str]:
    return ["train", "--model", "mamba", "--device", "cpu", "--tasks", "2", "--shots", "1", "--test-shots", "1",
            "--steps", str(STEPS), "--batch-size", str(batch), "--lr", "1e-3", "--warmup", "1", "--d-model", "16",
            "--layers", "1", "--encoder-channels", "16", "--y-vocab", "4", "--log-every", "1", "-o", str(out),
            "--log-file", str(out.with_suffix(".jsonl"))]


def run(cmd: list[str]) -> None:
    """Run a command; on failure show its whole output (a rank's abort names its cause anywhere in it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCH_SHOW_CPP_STACKTRACES": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}: {' '.join(cmd)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def torchrun(*args: str) -> list[str]:
    # --standalone: a rendezvous on a free port, so parallel runs or a stale port cannot collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_ddp_weights_match_one_process_with_the_global_batch(tmp_path):
    ddp, one, unsynced = tmp_path / "ddp.pt", tmp_path / "one.pt", tmp_path / "unsynced.pt"
    run(torchrun("-m", "mclstudio", *train_args(ddp, 2)))
    run([sys.executable, "-m", "mclstudio", *train_args(one, 4)])
    run(torchrun(str(ROOT / "tests" / "ddp_unsynced.py"), *train_args(unsynced, 2)))

    raw = torch.load(ddp, weights_only=True)
    assert raw["metadata"]["world_size"] == 2 and raw["metadata"]["steps"] == STEPS
    start = weights(tmp_path / "one.pt")
    assert max_difference(weights(ddp), start) < SAME
    assert max_difference(weights(unsynced), start) > APART
    # rank 0 alone writes the log, one line a step; the first step's loss (same weights, same episodes)
    # equals the one process's
    logs = [json.loads(line) for line in ddp.with_suffix(".jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in one.with_suffix(".jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs] == list(range(1, STEPS + 1)) and all(math.isfinite(log["loss"]) for log in logs)
    assert math.isclose(logs[0]["loss"], single[0]["loss"], rel_tol=1e-6)
