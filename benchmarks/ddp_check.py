"""DDP meta-training against one process with the same global batch (issue 7's check).

Runs ``mclstudio train`` twice with the same seed and settings: once as one process with a batch of
P x B episodes, once under torchrun as P processes of B episodes each. The trainer gives rank r of step s
exactly the episodes that the single process draws at positions r*B .. r*B+B-1 of that step, and DDP
averages the ranks' gradients, so the two runs take the same optimisation steps up to floating-point
summation order. The check compares the logged loss curves (``--log-file``: global means over all
ranks, full precision) and the episodes/s. In float32 the first step must agree exactly (same episodes, same
weights); later steps drift apart as rounding differences get amplified by Adam (its update divides by
the root of tiny second moments), so the curve is compared step by step for the first few steps and by
its mean over the second half. Encoder pre-training is left off: it runs per rank before DDP wraps the model.

    python benchmarks/ddp_check.py --device cpu --procs 2 --out benchmarks/results/ddp_cpu.json
    python benchmarks/ddp_check.py --device cuda --procs 2 --model mamba --d-model 256 --layers 12 \\
        --batch-size 32 --steps 300 --out benchmarks/results/ddp_h200x2.json     # on nvidia-h200-x2

``--single-only`` runs the one-process half alone, on a machine with one GPU: the reference curve and
the 1-GPU rate that a later DDP run is compared with.

On CUDA (bf16 autocast) the one-process run is also made in float32: a valid DDP run differs from the
one-process bf16 run by about as much as bf16 rounding moves the loss, so the tolerances become 3 times
the bf16-vs-float32 difference of the one-process runs (early steps, and the second half's mean) where
that is larger than the float32 tolerances of the options, and the first step need not agree exactly.

Writes JSON naming the device; exits 1 if the curves differ beyond the tolerances.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

def train_command(args: argparse.Namespace, batch: int, out: Path, amp: bool = True) -> list[str]:
    cmd = ["-m", "mclstudio", "train", "--model", args.model, "--device", args.device, "--tasks", str(args.tasks),
           "--shots", str(args.shots), "--test-shots", str(args.shots), "--steps", str(args.steps),
           "--batch-size", str(batch), "--lr", str(args.lr), "--warmup", "10", "--slct-lambda", "0.5",
           "--d-model", str(args.d_model), "--layers", str(args.layers), "--encoder-channels", str(args.encoder_channels),
           "--y-vocab", "100", "--log-every", "1", "--checkpoint-every", str(10 * args.steps), "--seed", "0",
           "-o", str(out), "--log-file", str(out.with_suffix(".jsonl"))]
    if args.model not in ("mamba", "longhorn"):
        cmd += ["--heads", "4", "--d-ff", str(2 * args.d_model)]
    if not amp:
        cmd += ["--precision", "fp32"]
    return cmd


def run(cmd: list[str], procs: int, threads: int, log_file: Path) -> tuple[list[dict], float]:
    """Run a training command (under torchrun when procs > 1); its per-step logs and wall seconds."""
    launcher = [sys.executable]
    if procs > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_port=29541"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.run(launcher + cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"error: training failed ({' '.join(cmd[:6])} ...):\n{proc.stdout}{proc.stderr}")
    return [json.loads(line) for line in log_file.read_text().splitlines()], seconds


def device_name(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count() or 1} cores)"


def run_single(args: argparse.Namespace, tmp: str, amp: bool = True) -> tuple[list[dict], float]:
    """The one-process half: one process with the global batch of P x B episodes."""
    one = Path(tmp) / ("one.pt" if amp else "one_fp32.pt")
    return run(train_command(args, args.procs * args.batch_size, one, amp), 1, os.cpu_count() or 1, one.with_suffix(".jsonl"))


def relative_differences(a: list[dict], b: list[dict]) -> list[float]:
    return [abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-12) for x, y in zip(a, b)]


def second_half_mean(logs: list[dict], key: str) -> float:
    """The mean of a logged value over the second half of the steps: the steady state, after warm-up and
    first-step overheads."""
    tail = logs[len(logs) // 2:]
    return sum(x[key] for x in tail) / len(tail)


def single_reference(args: argparse.Namespace) -> None:
    """The one-process half alone: its loss curve and episodes/s, to compare a DDP run against later."""
    with tempfile.TemporaryDirectory() as tmp:
        logs, seconds = run_single(args, tmp)
    if len(logs) != args.steps:
        sys.exit(f"error: expected {args.steps} log lines, got {len(logs)}")
    report = {
        "device": device_name(args),
        "torch": torch.__version__,
        "settings": vars(args),
        "global_batch": args.procs * args.batch_size,
        "episodes_per_s_second_half": second_half_mean(logs, "episodes_per_s"),
        "second_half_mean_loss": second_half_mean(logs, "loss"),
        "final_loss": logs[-1]["loss"],
        "wall_seconds": seconds,
        "curve": logs,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--model", default="mamba")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--encoder-channels", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="episodes per process")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--early-steps", type=int, default=5, help="steps compared one by one")
    parser.add_argument("--early-tolerance", type=float, default=1e-4, help="max relative loss difference there")
    parser.add_argument("--curve-tolerance", type=float, default=0.02,
                        help="max relative difference of the second half's mean loss")
    parser.add_argument("--single-only", action="store_true",
                        help="run only the one-process half (global batch P x B) on one device: the reference "
                             "curve and 1-GPU rate for a later DDP run, on a machine with fewer devices than P")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.procs < 2:
        sys.exit("error: --procs must be at least 2")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda needs a GPU; this machine has none")
    if args.single_only:
        single_reference(args)
        return
    if args.device.startswith("cuda") and torch.cuda.device_count() < args.procs:
        sys.exit(f"error: {args.procs} processes need {args.procs} GPUs; this machine has {torch.cuda.device_count()}")
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    # Under bf16 (CUDA) a valid DDP run differs from one process at the rounding level of bf16 itself (the
    # ranks' smaller batches take other kernels and summation orders), so the tolerances come from the
    # same process run in float32: DDP may differ from the bf16 run by up to 3 times as much as that does.
    bf16 = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        many = Path(tmp) / "ddp.pt"
        single, single_s = run_single(args, tmp)
        fp32 = run_single(args, tmp, amp=False)[0] if bf16 else None
        ddp, ddp_s = run(train_command(args, args.batch_size, many), args.procs, max(1, cores // args.procs),
                         many.with_suffix(".jsonl"))
    if len(single) != args.steps or len(ddp) != args.steps:
        sys.exit(f"error: expected {args.steps} log lines, got {len(single)} and {len(ddp)}")
    diffs = relative_differences(single, ddp)
    loss = {"single": second_half_mean(single, "loss"), "ddp": second_half_mean(ddp, "loss")}
    rate = {"single": second_half_mean(single, "episodes_per_s"), "ddp": second_half_mean(ddp, "episodes_per_s")}
    curve_diff = abs(loss["single"] - loss["ddp"]) / abs(loss["single"])
    early_tolerance, curve_tolerance, bf16_noise = args.early_tolerance, args.curve_tolerance, None
    if fp32 is not None:
        noise = relative_differences(single, fp32)
        fp32_curve = abs(loss["single"] - second_half_mean(fp32, "loss")) / abs(loss["single"])
        bf16_noise = {"early_steps_max_relative_loss_difference": max(noise[: args.early_steps]),
                      "second_half_mean_loss_relative_difference": fp32_curve}
        early_tolerance = max(early_tolerance, 3 * bf16_noise["early_steps_max_relative_loss_difference"])
        curve_tolerance = max(curve_tolerance, 3 * fp32_curve)
    first_step_ok = diffs[0] <= early_tolerance if bf16 else diffs[0] == 0.0
    ok = first_step_ok and max(diffs[: args.early_steps]) <= early_tolerance and curve_diff <= curve_tolerance
    report = {
        "device": device_name(args),
        "torch": torch.__version__,
        "settings": vars(args),
        "global_batch": args.procs * args.batch_size,
        "first_step_relative_loss_difference": diffs[0],
        "early_steps_max_relative_loss_difference": max(diffs[: args.early_steps]),
        "all_steps_max_relative_loss_difference": max(diffs),
        "second_half_mean_loss": loss,
        "second_half_mean_loss_relative_difference": curve_diff,
        "final_loss": {"single": single[-1]["loss"], "ddp": ddp[-1]["loss"]},
        "episodes_per_s_second_half": rate,
        "scaling": rate["ddp"] / rate["single"],
        "bf16_vs_fp32_one_process": bf16_noise,
        "tolerances": {"early_steps": early_tolerance, "second_half_mean_loss": curve_tolerance},
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "wall_seconds": {"single": single_s, "ddp": ddp_s},
        "curves": {"single": single, "ddp": ddp},
        "ok": ok,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
