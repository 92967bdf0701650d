"""Check the CUDA path against the CPU path (run on a GPU machine with mamba_ssm installed).

1. mamba_ssm's fused selective scan vs our reference scan on random inputs: outputs, last state and
   gradients of every input through both (mamba_ssm's own backward ignores the last state's
   gradient; selective_scan rebuilds that state differentiably), in float32.
2. State-dict interchange: our MambaMixer's state_dict loads strictly into mamba_ssm.Mamba and both give
   the same outputs.
3. Whole learners: Mamba's logits and rows with the CUDA scan on the GPU (with autograd, and without it,
   where the kernel runs as the torch op that torch.compile and CUDA graphs take) vs the reference scan on
   the CPU; Longhorn's with the GPU's chunk-parallel scan vs the CPU's token loop.
4. The training path: logits, rows and every parameter's gradient of a loss on both, through the GPU's
   training kernels (the queries' recall, the rows' keys and weights with TF32 products, mamba_ssm's
   backward) vs the CPU's PyTorch code, with every query at the stream's end and with the anytime
   objective's per-query boundaries (looser tolerance: TF32 products feed the rows).

Prints a JSON report (and writes it to --out); exits 1 if any check fails its tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from mclstudio.learners.longhorn import LonghornConfig, LonghornLearner
from mclstudio.learners.mamba import MambaConfig, MambaLearner, MambaMixer
from mclstudio.learners.scan import CUDA_SCAN_IMPORT_ERROR, cuda_scan_available, selective_scan

TOLERANCE = 1e-3  # relative error ||a - b|| / ||b||; float32 lands far below
TRAINING_TOLERANCE = 1e-2  # the rows' products run in TF32 (10-bit mantissas) on the GPU


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def check_scan(seed: int, batch: int = 4, d_inner: int = 64, d_state: int = 16, length: int = 200) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = {"u": (batch, d_inner, length), "delta": (batch, d_inner, length), "B": (batch, d_state, length),
              "C": (batch, d_state, length), "z": (batch, d_inner, length), "D": (d_inner,), "bias": (d_inner,)}
    cpu = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    cpu["A"] = -torch.rand(d_inner, d_state, generator=g) * 8 - 0.1
    results = {}
    outs = {}
    for backend in ("cuda", "reference"):
        t = {k: v.cuda().requires_grad_(True) for k, v in cpu.items()}
        y, last = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], backend=backend)
        weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).cuda()
        ((y * weight).sum() + last.sum()).backward()
        outs[backend] = {"y": y.detach(), "last_state": last.detach(), **{f"grad_{k}": v.grad for k, v in t.items()}}
    for name in outs["cuda"]:
        results[name] = rel(outs["cuda"][name], outs["reference"][name])
    return results


def check_state_dict_interchange(seed: int) -> dict:
    try:
        from mamba_ssm.modules.mamba_simple import Mamba
    except Exception as exc:  # see scan._import_cuda_scan: the package body may not import
        return {"skipped": f"mamba_ssm.modules.mamba_simple does not import: {type(exc).__name__}: {exc}"[:300]}

    torch.manual_seed(seed)
    ours = MambaMixer(MambaConfig(d_model=64)).cuda()
    theirs = Mamba(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same names and shapes, or this raises
    x = torch.randn(3, 50, 64, device="cuda")
    with torch.no_grad():
        a = ours(x, backend="cuda")[0]
        b = theirs(x)
        c = ours(x, backend="reference")[0]
    return {"ours_cuda_vs_mamba_ssm": rel(a, b), "ours_reference_vs_mamba_ssm": rel(c, b)}


def tiny_learners(seed: int):
    """(name, a small Mamba or Longhorn learner on the CPU, (stream_x, stream_y, query_x) of 40 pairs and
    10 queries), the same for a given seed."""
    for name, learner_class, config_class in (("mamba", MambaLearner, MambaConfig), ("longhorn", LonghornLearner, LonghornConfig)):
        torch.manual_seed(seed)
        cfg = config_class(d_model=64, n_layers=2, x_shape=(1, 32, 32), y_vocab=20, encoder_channels=32)
        model = learner_class(cfg).eval()
        yield name, model, (torch.randn(2, 40, 1, 32, 32), torch.randint(0, 20, (2, 40)), torch.randn(2, 10, 1, 32, 32))


def check_learner(seed: int) -> dict:
    results = {}
    for name, model, (sx, sy, qx) in tiny_learners(seed):
        with torch.no_grad():
            cpu = model(sx, sy, qx, with_rows=True)
            model.cuda()
            gpu = model(sx.cuda(), sy.cuda(), qx.cuda(), with_rows=True)
        results[f"{name}_logits_gpu_vs_cpu"] = rel(gpu.logits.cpu(), cpu.logits)
        results[f"{name}_rows_gpu_vs_cpu"] = max(rel(a.cpu(), b) for a, b in zip(gpu.rows, cpu.rows))
        # with autograd on, Mamba's scan goes through mamba_ssm's autograd function instead of the op
        graded = model(sx.cuda(), sy.cuda(), qx.cuda())
        results[f"{name}_logits_gpu_autograd_vs_cpu"] = rel(graded.logits.detach().cpu(), cpu.logits)
    return results


def training_path(model: torch.nn.Module, device: str, inputs: tuple, query_end: torch.Tensor | None, seed: int):
    """Logits, rows and parameter gradients of one loss (weighted logits and rows) on ``device``."""
    model.to(device).zero_grad()
    sx, sy, qx = (t.to(device) for t in inputs)
    out = model(sx, sy, qx, with_rows=True, query_end=None if query_end is None else query_end.to(device))
    g = torch.Generator().manual_seed(seed)
    w_logits = torch.randn(out.logits.shape, generator=g).to(device)
    w_rows = torch.randn(out.rows[0].shape, generator=g).to(device)
    (torch.sum(out.logits * w_logits) + sum(torch.sum(r * w_rows) for r in out.rows)).backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach().cpu(), [r.detach().cpu() for r in out.rows], grads


def check_training(seed: int) -> dict:
    results = {}
    for name, model, inputs in tiny_learners(seed):
        for objective, query_end in (("end", None), ("anytime", torch.tensor([40, 40, 30, 30, 20, 20, 10, 10, 40, 5]))):
            cpu = training_path(model, "cpu", inputs, query_end, seed)
            gpu = training_path(model, "cuda", inputs, query_end, seed)
            key = f"{name}_{objective}"
            results[f"{key}_logits"] = rel(gpu[0], cpu[0])
            results[f"{key}_rows"] = max(rel(a, b) for a, b in zip(gpu[1], cpu[1]))
            results[f"{key}_gradients"] = max(rel(gpu[2][n], cpu[2][n]) for n in cpu[2])
        model.cpu()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not cuda_scan_available():
        print(json.dumps({"error": "needs a CUDA GPU and mamba_ssm (pip install 'mclstudio[cuda]')",
                          "cuda": torch.cuda.is_available(), "mamba_ssm_import": CUDA_SCAN_IMPORT_ERROR}))
        sys.exit(1)
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "tolerance": TOLERANCE,
        "scan": [check_scan(seed) for seed in range(3)],
        "state_dict_interchange": check_state_dict_interchange(0),
        "learner": check_learner(0),
        "training_tolerance": TRAINING_TOLERANCE,
        "training": check_training(0),
    }
    errors = [v for s in report["scan"] for v in s.values()]
    errors += [v for v in report["state_dict_interchange"].values() if isinstance(v, float)]
    errors += list(report["learner"].values())
    report["max_relative_error"] = max(errors)
    report["max_training_relative_error"] = max(report["training"].values())
    report["ok"] = report["max_relative_error"] < TOLERANCE and report["max_training_relative_error"] < TRAINING_TOLERANCE
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
