"""The selectivity regulariser's hidden-attention rows on a GPU (issue 15): ``learners/kernels/hidden_rows.py``
(keys written once by a Triton kernel, cuBLAS's TF32 products, one pass for the stream's gradients) at
several tile shapes, against the PyTorch code the CPU runs (einsum over ``stream_keys``), timed forward
and forward + backward at a training step's shapes, with their error against float64.

An earlier design made the keys in registers inside three tile-product kernels: 6.5 ms forward and
17.6 ms forward + backward a layer at the paper size on an H200, against 1.36 / 4.53 ms for keys
written once (index-gathered tiles, before the (tokens x channels x states) tiles) and 1.28 / 4.24 ms
with bfloat16 keys (ten times the error: 3.9e-3 against 4.1e-4). Those three were measured with this
script's first version on a working tree never committed in that form (just before commit 59ab117,
which kept float32 keys and moved to the (tokens x channels x states) tiles). The queries' weights were
an input then; now the kernel makes them too.

    python benchmarks/rows_sweep.py --device cuda --out benchmarks/results/rows_sweep_h200.json

Shapes: batch 64, 20 tasks x 5 shots (L = 200 stream tokens, Q = 100 queries), N = 16, d_inner 512
(paper-sized Mamba, d_model 256) and 256 (the shipped size); Mamba's keys (log-decay from (L, d)) and
Longhorn's (log-decay per state entry). Errors: the largest difference from a float64 einsum relative
to its largest value, on batch 4.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mclstudio.learners.hidden_attention import stream_keys
from mclstudio.learners.kernels import hidden_rows
from mclstudio.learners.longhorn import longhorn_transition
from mclstudio.learners.scan import Transition, mamba_transition, query_weights

TILES = [(32, 16), (16, 16), (16, 32), (64, 8), (8, 64)]  # (BLOCK_L, BLOCK_D)


def inputs(batch: int, Q: int, L: int, d_inner: int, N: int, device: torch.device, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "delta_q": (torch.rand(batch, Q, d_inner, generator=g, dtype=dtype) * 0.1).to(device),
        "C": torch.randn(batch, Q, N, generator=g, dtype=dtype).to(device) * 0.3,
        "delta": (torch.rand(batch, L, d_inner, generator=g, dtype=dtype) * 0.1).to(device),
        "B": torch.randn(batch, L, N, generator=g, dtype=dtype).to(device),
        "A": (-torch.rand(d_inner, N, generator=g, dtype=dtype) * 3 - 0.1).to(device),
    }


def transitions(kind: str, x: dict) -> tuple[Transition, Transition]:
    """The queries' and the stream's Transition: Mamba's, or Longhorn's with beta from delta."""
    if kind == "mamba":
        return mamba_transition(x["delta_q"], x["A"], x["C"]), mamba_transition(x["delta"], x["A"], x["B"])
    return (longhorn_transition(torch.sigmoid(x["delta_q"] * 10), x["C"]),
            longhorn_transition(torch.sigmoid(x["delta"] * 10), x["B"]))


def rows(kind: str, x: dict) -> torch.Tensor:
    if kind == "mamba":
        return hidden_rows.mamba_rows(x["delta_q"], x["C"], x["delta"], x["B"], x["A"])
    query_move, move = transitions(kind, x)
    return hidden_rows.transition_rows(query_move, x["C"], move)


def reference(kind: str, x: dict) -> torch.Tensor:
    """The PyTorch code the CPU runs: the queries' weights, the stream's keys and one einsum."""
    query_move, move = transitions(kind, x)
    G = query_weights(x["C"], query_move.log_decay)
    return torch.einsum("bqdn,bldn->bql", G, stream_keys(move)) / G.shape[-2]


def timed_ms(fn, repeat: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU")
    device = torch.device(args.device)
    report: dict = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "batch": args.batch, "cases": []}
    for kind in ("mamba", "longhorn"):
        for d_inner in (512, 256):
            shape = dict(batch=args.batch, Q=100, L=200, d_inner=d_inner, N=16)
            x = inputs(**shape, device=device)
            leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
            weights = torch.randn(args.batch, 100, 200, device=device)
            small = inputs(4, 100, 200, d_inner, 16, device, torch.float64)
            expected = reference(kind, small)
            ways = [("pytorch", None)] + [(f"kernels {bl}x{bd}", (bl, bd)) for bl, bd in TILES]
            for way, tiles in ways:
                fn = reference if tiles is None else rows
                if tiles is not None:
                    hidden_rows.BLOCK_L, hidden_rows.BLOCK_D = tiles
                case = {"keys": kind, **shape, "way": way}
                with torch.no_grad():
                    case["forward_ms"] = round(timed_ms(lambda: fn(kind, x)), 3)

                def train() -> None:
                    out = fn(kind, leaves)
                    wrt = [v for k, v in leaves.items() if kind == "mamba" or k != "A"]  # Longhorn has no A
                    torch.autograd.grad((out * weights).sum(), wrt)

                torch.cuda.reset_peak_memory_stats(device)
                case["forward_backward_ms"] = round(timed_ms(train), 3)
                case["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                got = fn(kind, {k: v.float() for k, v in small.items()}).double()
                case["relative_error"] = float((got - expected).abs().max() / expected.abs().max())
                print(json.dumps(case), flush=True)
                report["cases"].append(case)
    hidden_rows.BLOCK_L, hidden_rows.BLOCK_D = TILES[0]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
