"""Mutation check (issue 14): plant one bug at a time in a copy of the repository and run the tests that
should catch it; report which tests failed. Every mutant aims at a definition (a metric, what the engine
evaluates, what a recording stores, the selectivity loss, Mamba's discretisation, DDP), not at a line.

    OMP_NUM_THREADS=1 python tools/mutation_check.py [--out benchmarks/results/mutation_check_cpu.json] [N ...]

N: run only those mutants (1-based). Exits 1 if a mutant goes uncaught. A mutant whose text is no longer
in its file (the code changed) is reported as "stale", not run. 8-22 s a mutant on a 2-core CPU
(the DDP ones about 20 s; all 34 in about 6.5 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["tests/test_metrics.py", "tests/test_recording_values.py", "tests/test_reference_maths.py",
        "tests/test_engine.py", "tests/test_recording.py", "tests/test_training.py", "tests/test_ssm_learners.py"]
DDP = ["tests/test_ddp.py"]
# (what the bug is, file, text replaced, replacement, tests run)
M = [
 # metrics
 ("metrics: forgetting from the first accuracy, not the best earlier", "mclstudio/metrics.py",
  "out[j] = np.nanmax(earlier) - A[k, j] if earlier.size else 0.0", "out[j] = A[j, j] - A[k, j] if earlier.size else 0.0", FAST),
 ("metrics: best 'earlier' includes the current row", "mclstudio/metrics.py",
  "earlier = A[j:k, j]", "earlier = A[j : k + 1, j]", FAST),
 ("metrics: mean forgetting includes the newest task", "mclstudio/metrics.py",
  "return float(f[:-1].mean()) if f.size > 1 else 0.0", "return float(f.mean()) if f.size > 1 else 0.0", FAST),
 ("metrics: forgetting clamped at 0", "mclstudio/metrics.py",
  "out[j] = np.nanmax(earlier) - A[k, j] if earlier.size else 0.0", "out[j] = max(0.0, np.nanmax(earlier) - A[k, j]) if earlier.size else 0.0", FAST),
 ("metrics: seen-task accuracy divides by all T tasks", "mclstudio/metrics.py",
  "out[k] = np.nanmean(row)", "out[k] = np.nansum(row) / A.shape[1]", FAST),
 ("metrics: accuracy is the batch mean, not per episode", "mclstudio/metrics.py",
  "return (logits.argmax(-1) == targets).float().mean(-1)", "return (logits.argmax(-1) == targets).float().mean().expand(targets.shape[0])", FAST),
 ("metrics: MSE as mean absolute error", "mclstudio/metrics.py",
  "(predictions.float() - targets.float()).pow(2).mean(dim=(1, 2))", "(predictions.float() - targets.float()).abs().mean(dim=(1, 2))", FAST),
 ("metrics: CI from the population std (ddof=0)", "mclstudio/metrics.py",
  "v.std(ddof=1)", "v.std(ddof=0)", FAST),
 ("metrics: per-task accuracy divided by all queries", "mclstudio/metrics.py",
  "return (hits / counts)[:tasks_seen]", "return (hits / len(correct))[:tasks_seen]", FAST),
 # engine
 ("engine: queries of every task evaluated, not only those seen", "mclstudio/engine/stream.py",
  "seen = torch.nonzero(ep.query_task <= task).squeeze(1)", "seen = torch.nonzero(ep.query_task >= 0).squeeze(1)", FAST),
 ("engine: accuracy-matrix row filled one example late (task end marked at the next task's first example)", "mclstudio/data/layout.py",
  "ends = torch.ones_like(stream_task, dtype=torch.bool)\n    ends[:-1] = stream_task[1:] != stream_task[:-1]",
  "ends = torch.zeros_like(stream_task, dtype=torch.bool)\n    ends[1:] = stream_task[1:] != stream_task[:-1]", FAST),
 ("engine: per-task accuracy with the queries' tasks misaligned", "mclstudio/engine/stream.py",
  "per_task_accuracy(correct, ep.query_task[seen], task + 1)", "per_task_accuracy(correct, ep.query_task[seen].flip(0), task + 1)", FAST),
 ("engine: snapshot forgetting from the whole matrix, NaN rows included", "mclstudio/engine/stream.py",
  "snap.forgetting = forgetting(matrix[:done, :done])", "snap.forgetting = forgetting(matrix[:done])", FAST),
 # recording
 ("recording: accuracy matrix written transposed", "mclstudio/recording/hdf5.py",
  'lg.create_dataset("accuracy_matrix", data=tr.accuracy_matrix.astype(np.float32))', 'lg.create_dataset("accuracy_matrix", data=tr.accuracy_matrix.T.astype(np.float32))', FAST),
 ("recording: reader keeps episodes without complete=True", "mclstudio/recording/hdf5.py",
  'if not g.attrs.get("complete", False):', 'if not g.attrs.get("complete", True):', FAST),
 ("recording: running accuracy stored at float16", "mclstudio/recording/hdf5.py",
  'lg.create_dataset("accuracy", data=tr.accuracy.astype(np.float32))', 'lg.create_dataset("accuracy", data=tr.accuracy.astype(np.float16))', FAST),
 ("recording: same-class pattern with tokens tiled, not repeated", "mclstudio/data/layout.py",
  "return stream_task.repeat_interleave(2)", "return stream_task.repeat(2)", FAST),
 ("recording: layer norms of the last step written for every step", "mclstudio/recording/hdf5.py",
  'lg.create_dataset("layer_norms", data=tr.layer_norms.astype(np.float32))', 'lg.create_dataset("layer_norms", data=np.repeat(tr.layer_norms[-1:], len(tr.layer_norms), 0).astype(np.float32))', FAST),
 ("summary: forgetting averaged over every task, the newest included", "mclstudio/recording/session.py",
  '"forgetting": float(np.mean([mean_forgetting(t.accuracy_matrix) for t in traces])),', '"forgetting": float(np.mean([t.forgetting.mean() for t in traces])),', FAST),
 ("summary: curve is the accuracy on the newest task (diagonal)", "mclstudio/recording/session.py",
  "curves = np.stack([seen_task_accuracy(t.accuracy_matrix) for t in traces])", "curves = np.stack([np.diag(t.accuracy_matrix) for t in traces])", FAST),
 # losses
 # (the anytime objective's loss, query_end given: the default; the "end" objective's are #32-#34)
 ("losses: selectivity loss from the last layer only", "mclstudio/training/losses.py",
  "counted.sum().clamp(min=1))\n    return torch.stack(losses).mean()", "counted.sum().clamp(min=1))\n    return losses[-1]", FAST),
 ("losses: selectivity loss from the first episode only", "mclstudio/training/losses.py",
  "losses.append((kl * counted).sum() / counted.sum().clamp(min=1))", "losses.append((kl * counted)[0].sum() / counted[0].sum().clamp(min=1))", FAST),
 ("losses: summed over layers", "mclstudio/training/losses.py",
  "counted.sum().clamp(min=1))\n    return torch.stack(losses).mean()", "counted.sum().clamp(min=1))\n    return torch.stack(losses).sum()", FAST),
 # scan
 ("scan: drive without delta (rate 1)", "mclstudio/learners/scan.py",
  "return Transition(delta.unsqueeze(-1) * A, delta, widen(B))", "return Transition(delta.unsqueeze(-1) * A, torch.ones_like(delta), widen(B))", FAST),
 ("scan: decay exp(A), delta left out", "mclstudio/learners/scan.py",
  "return Transition(delta.unsqueeze(-1) * A, delta, widen(B))", "return Transition(A.expand(*delta.shape, A.shape[-1]).clone(), delta, widen(B))", FAST),
 ("mamba: A = -A_log instead of -exp(A_log)", "mclstudio/learners/mamba.py",
  "return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))", "return -self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)).abs()", FAST),
 ("scan: last state from drives decays each token by its own step too", "mclstudio/learners/scan.py",
  "return torch.exp(torch.flip(torch.cumsum(torch.flip(log_decay, [1]), dim=1), [1]) - log_decay)", "return torch.exp(torch.flip(torch.cumsum(torch.flip(log_decay, [1]), dim=1), [1]))", FAST),
 ("scan: states read by probe tokens detached (no gradient)", "mclstudio/learners/scan.py",
  "return gated.to(u.dtype), (states[:, 0] if ends is None else states)",
  "return gated.to(u.dtype), (states[:, 0] if ends is None else states).detach()", FAST),
 # DDP
 ("ddp: model not wrapped in DistributedDataParallel", "mclstudio/training/trainer.py",
  "        if world > 1:\n            model = DistributedDataParallel(", "        if False:\n            model = DistributedDataParallel(", DDP),
 ("ddp: every rank draws the same episodes", "mclstudio/training/loop.py",
  "return base_seed * 1_000_003_000 + (step * world + rank) * batch + index", "return base_seed * 1_000_003_000 + (step * world) * batch + index", DDP),
 ("ddp: logged losses not averaged over ranks", "mclstudio/training/loop.py",
  "                window.average_over_ranks(s.device)", "                pass", DDP),
 # the "end" objective's selectivity loss (query_end None: every query reads after the whole stream)
 ("losses (end objective): selectivity loss from the last layer only", "mclstudio/training/losses.py",
  "for q in rows]\n        return torch.stack(losses).mean()", "for q in rows]\n        return losses[-1]", FAST),
 ("losses (end objective): selectivity loss from the first episode only", "mclstudio/training/losses.py",
  "(entropy_term - (p * (q.float() + KL_EPS).log()).sum(-1)).mean() for q in rows]",
  "(entropy_term - (p * (q.float() + KL_EPS).log()).sum(-1))[0].mean() for q in rows]", FAST),
 ("losses (end objective): summed over layers", "mclstudio/training/losses.py",
  "for q in rows]\n        return torch.stack(losses).mean()", "for q in rows]\n        return torch.stack(losses).sum()", FAST),
]


def run_mutant(name: str, path: str, old: str, new: str, tests: list[str], work: Path) -> dict:
    copy = work / "repo"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", ".venv", "*.egg-info", "tools"))
    target = copy / path
    text = target.read_text()
    if text.count(old) != 1:
        return {"mutant": name, "file": path, "stale": True}
    target.write_text(text.replace(old, new))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(copy)}
    env.pop("CI", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=1200)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)))
    first_error = next((line.strip() for line in proc.stdout.splitlines() if line.startswith("E ")), "")
    return {"mutant": name, "file": path, "caught": proc.returncode != 0, "pytest_exit": proc.returncode,
            "failed": failed, "first_error": first_error[:200], "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", type=int, help="mutant numbers to run (default: all)")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, path, old, new, tests) in enumerate(M, 1):
            if args.only and n not in args.only:
                continue
            result = {"n": n, **run_mutant(name, path, old, new, tests, Path(tmp))}
            results.append(result)
            print(json.dumps(result), flush=True)
    uncaught = [r for r in results if not r.get("caught") and not r.get("stale")]
    doc = {
        "benchmark": "mutation_check",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "python": platform.python_version(),
        "mutants": len(results),
        "caught": sum(bool(r.get("caught")) for r in results),
        "stale": sum(bool(r.get("stale")) for r in results),
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{doc['caught']} of {len(results)} mutants caught, {doc['stale']} stale", file=sys.stderr)
    sys.exit(1 if uncaught else 0)


if __name__ == "__main__":
    main()
