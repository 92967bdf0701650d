"""What a whole-step CUDA graph buys meta-training (issue 15's remaining lever), measured on a GPU.

The step of ``train_speed.py`` (bf16 autocast, 20 tasks x 5 shots, 5 query shots, the end-of-stream
objective, selectivity lambda 0.5, gradient clipping, fused Adam) is captured once into a CUDA graph:
forward, losses, backward, clipping and a capturable fused Adam. Each training step then samples its
batch as ``train`` does, copies it into the graph's input tensors and replays the graph, so the host no
longer launches the step's 1,000-5,000 kernels one by one. The schedule stays out of the graph (the
learning rate is a tensor the graph reads).

Per learner and size it reports episodes/s of the eager step and of the graphed step (sampling
included, as in ``train_speed.py``), the replay alone, and whether the two train the same: from the
same weights, on the same batches, the losses of both for a few steps (bf16 rounding and atomics make
them differ slightly; the JSON gives the largest relative difference). A learner whose step cannot be
captured is reported with the error, and the next one runs.

    python benchmarks/graph_step.py --models transformer,mamba --sizes shipped --out graph_step.json
"""

from __future__ import annotations

import argparse
import json
import sys
import itertools
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import GRAD_CLIP, SLCT_LAMBDA, Setup, compiled_encoder_error, timed  # noqa: E402

from mclstudio.data import get_source  # noqa: E402
from mclstudio.learners.registry import LEARNERS  # noqa: E402
from mclstudio.learners.scan import cuda_scan_available  # noqa: E402
from mclstudio.training.loop import meta_train_step  # noqa: E402

# the Episode fields the step reads; a new batch is copied into the captured ones
STEP_FIELDS = ("stream_x", "stream_y", "query_x", "query_y", "stream_task", "query_task")


class _NoSchedule:
    """Stands in for the schedule inside the graph: the learning rate tensor is set outside it."""

    def step(self) -> None:
        pass


class GraphedStep:
    """One training step captured as a CUDA graph, replayed on new batches of the same shape."""

    def __init__(self, setup: Setup, batch: int, warmup: int = 3) -> None:
        self.setup = setup
        learner = setup.learner
        # a capturable fused Adam reads its learning rate and step count from device tensors
        self.lr = torch.tensor(1e-4, device=setup.device)
        self.optimizer = torch.optim.Adam(learner.parameters(), lr=self.lr, fused=True, capturable=True)
        self.static = setup.sample(0, batch)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: autotuning, compiled code, Adam's state
            for _ in range(warmup):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.stats = self._step()

    def _step(self):
        return meta_train_step(self.setup.learner, self.static, self.optimizer, _NoSchedule(), self.setup.params,
                               SLCT_LAMBDA, GRAD_CLIP, "bf16")

    def load(self, ep) -> None:
        for name in STEP_FIELDS:
            getattr(self.static, name).copy_(getattr(ep, name), non_blocking=True)

    def step(self, ep) -> torch.Tensor:
        """Train on ``ep`` (same shape as the captured batch); the step's loss (a device tensor)."""
        self.load(ep)
        self.graph.replay()
        return self.stats.loss


def graphed_rate(graphed: GraphedStep, args: argparse.Namespace, device: torch.device) -> float:
    """Episodes/s of the graphed training loop: sampling + replay (``Setup.loop_rate``'s eager twin)."""
    counter = itertools.count()
    setup = graphed.setup
    return args.batch / timed(lambda: graphed.step(setup.sample(next(counter), args.batch)), device, args.warmup,
                              args.steps)


def bench(model: str, size: str, args: argparse.Namespace, device: torch.device, source) -> dict:
    result: dict = {}
    eager = Setup(model, size, device, source)
    if args.compile:
        result["compiled_encoder_error"] = compiled_encoder_error(eager)
    result["eager_episodes_per_s"] = round(eager.loop_rate(args.batch, args.steps, args.warmup), 2)
    # the same-training check: eager from fresh weights (Setup seeds them) against the graph from the same
    graphed_setup = Setup(model, size, device, source)
    reference = Setup(model, size, device, source)
    if args.compile:
        graphed_setup.learner.compile_training()
        reference.learner.compile_training()
    try:
        started = time.perf_counter()
        graphed = GraphedStep(graphed_setup, args.batch)
        result["capture_seconds"] = round(time.perf_counter() - started, 2)
    except Exception as exc:  # report it and go on
        result["capture_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        result["capture_traceback"] = traceback.format_exc().splitlines()[-12:]
        print(model, size, json.dumps(result), flush=True)
        return result
    # the graph's warm-up took three steps on its first batch (still in graphed.static): give the reference
    # the same; its own Adam (Setup's is under a warm-up schedule) at the graph's constant learning rate
    first = graphed.static
    ref_optimizer = torch.optim.Adam(reference.learner.parameters(), lr=1e-4, fused=True)
    for _ in range(3):
        meta_train_step(reference.learner, first, ref_optimizer, _NoSchedule(), reference.params, SLCT_LAMBDA,
                        GRAD_CLIP, "bf16")
    losses_graph, losses_eager = [], []
    for i in range(1, 1 + args.check_steps):
        ep = graphed_setup.sample(10_000 + i, args.batch)
        losses_graph.append(float(graphed.step(ep)))
        losses_eager.append(float(meta_train_step(reference.learner, ep, ref_optimizer, _NoSchedule(), reference.params,
                                                  SLCT_LAMBDA, GRAD_CLIP, "bf16").loss))
    result["check_losses"] = {"graph": losses_graph, "eager": losses_eager}
    result["check_max_relative_difference"] = max(abs(g - e) / abs(e) for g, e in zip(losses_graph, losses_eager))
    result["graph_episodes_per_s"] = round(graphed_rate(graphed, args, device), 2)
    ep = graphed_setup.sample(1, args.batch)
    result["replay_only_episodes_per_s"] = round(args.batch / timed(lambda: graphed.step(ep), device, args.warmup,
                                                                    args.steps), 2)
    seeds = itertools.count()
    result["sampling_ms"] = round(1000 * timed(lambda: graphed_setup.sample(next(seeds), args.batch), device, 1,
                                               args.steps), 3)
    result["speedup"] = round(result["graph_episodes_per_s"] / result["eager_episodes_per_s"], 3)
    print(model, size, json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="transformer,mamba")
    parser.add_argument("--sizes", default="shipped,paper")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--check-steps", type=int, default=5, help="steps of the graph-vs-eager loss check")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: graph_step.py measures CUDA graphs and needs a CUDA GPU")
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(LEARNERS))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(LEARNERS)}")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    # three learners per (model, size) each compile their encoder blocks: keep dynamo from giving up on them
    torch._dynamo.config.cache_size_limit = 64
    source = get_source("omniglot-mini").to(device)
    report: dict = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                    "mamba_ssm_scan": cuda_scan_available(), "global_batch": args.batch,
                    "compiled": args.compile, "episode": "omniglot-mini meta-train, 20 tasks x 5 shots, 5 query shots",
                    "learners": {}}
    for model in models:
        for size in [s for s in args.sizes.split(",") if s]:
            try:
                report["learners"][f"{model}_{size}"] = bench(model, size, args, device, source)
            except Exception as exc:
                report["learners"][f"{model}_{size}"] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                                                          "traceback": traceback.format_exc().splitlines()[-12:]}
            torch.cuda.empty_cache()
            if args.out:  # after every learner, so a run cut short keeps what it measured
                args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
