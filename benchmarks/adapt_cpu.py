"""Parameter-efficient adaptation of a shipped learner to a shifted domain, measured on the CPU. The bases
are the previous shipped learners by default (checkpoints/previous/, the 20-task checkpoints the adapters
in checkpoints/previous/adapters/ were trained on); --base-dir checkpoints takes the current ones.

For each model: `mclstudio adapt` (the same function) trains low-rank adapters on the frozen shipped
checkpoint on the shifted domain's meta-train split; then the base and the adapted learner are meta-tested
(the "trained" setting of `mclstudio eval`: the base's shape, 20 tasks x 5 shots for checkpoints/previous/ and
40 x 5 for the current learners, the same evaluation seeds) on the shifted
domain's meta-test split and on the original domain's. Results are merged into the JSON file (one entry
per model, domain, rank and target set), so models can be run one at a time:

    python benchmarks/adapt_cpu.py --model mamba --dataset omniglot-mini:inverted --rank 4 --steps 300

Equivalent commands: `mclstudio adapt checkpoints/previous/mamba.pt --dataset omniglot-mini:inverted --rank 4
--alpha 8 --steps 300`, then `mclstudio eval checkpoints/previous/mamba.pt [--adapter FILE] --episodes 256
--domain omniglot-mini:inverted` (its "trained" and "domain" rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming import device_info  # noqa: E402

from mclstudio.data import get_source  # noqa: E402
from mclstudio.errors import USER_ERRORS  # noqa: E402
from mclstudio.files import claim_output  # noqa: E402
from mclstudio.training.adapt import AdaptConfig, adapt, default_adapter_path  # noqa: E402
from mclstudio.store.adapters import load_learners  # noqa: E402
from mclstudio.training.evaluate import Setting, evaluate_setting, trained_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def meta_test(ckpt, dataset: str, episodes: int) -> dict[str, float]:
    """The `mclstudio eval` trained setting of ``ckpt`` on ``dataset``'s meta-test split."""
    base = trained_spec(ckpt.metadata, ckpt.learner.config.y_vocab)
    r = evaluate_setting(ckpt.learner, get_source(dataset), Setting(dataset, replace(base, dataset=dataset)), episodes)
    return {"accuracy": r.mean, "ci95": r.ci95, "episodes": r.episodes, "episodes_per_s": r.episodes_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="omniglot-mini:inverted")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ssm", action="store_true")
    parser.add_argument("--encoder", action="store_true")
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-dir", default="checkpoints/previous",
                        help="the bases' folder, relative to the repository (checkpoints/: the shipped learners)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adapt_cpu.json"))
    parser.add_argument("--force", action="store_true", help="replace the adapter file if it exists")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    os.chdir(ROOT)  # relative paths in the adapter files and the results

    checkpoint = Path(args.base_dir) / f"{args.model}.pt"  # the adapter's base
    suffix = "-ssm" if args.ssm else ""
    suffix += "-encoder" if args.encoder else ""
    adapter_path = default_adapter_path(checkpoint, args.dataset, args.rank)
    adapter_path = adapter_path.with_name(adapter_path.stem + suffix + ".pt")
    cfg = AdaptConfig(
        checkpoint=str(checkpoint), dataset=args.dataset, rank=args.rank, alpha=args.alpha, ssm=args.ssm,
        encoder=args.encoder, steps=args.steps, batch_size=args.batch_size, lr=args.lr, device="cpu",
        out=str(adapter_path),
    )
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    logs = []
    try:  # as `mclstudio adapt` does: an existing adapter file is refused unless --force, before any compute
        with claim_output(adapter_path, replace=args.force, inputs=[checkpoint], what="adapter file"):
            result = adapt(cfg, on_log=lambda log: (logs.append(log.__dict__), print(log, file=sys.stderr, flush=True)))
    except USER_ERRORS as exc:
        sys.exit(f"error: {exc}")
    adapt_s = time.perf_counter() - started

    original = get_source("omniglot-mini").name
    [base] = load_learners([str(checkpoint)])
    [adapted] = load_learners([str(checkpoint)], [str(adapter_path)])
    accuracy = {}
    for label, ckpt in (("base", base), ("adapted", adapted)):
        for domain in (args.dataset, original):
            accuracy[f"{label} on {domain}"] = meta_test(ckpt, domain, args.episodes)
            print(label, domain, accuracy[f"{label} on {domain}"], file=sys.stderr, flush=True)

    entry = {
        "model": args.model,
        "base": str(checkpoint),
        "dataset": args.dataset,
        "rank": args.rank,
        "alpha": args.alpha,
        "targets": "sequence" + (" + dt_proj" if args.ssm else "") + (" + encoder" if args.encoder else ""),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "adapter": str(adapter_path),
        "adapter_bytes": result["bytes"],
        "trainable_parameters": result["trainable_parameters"],
        "base_parameters": result["base_parameters"],
        "adapt_seconds": adapt_s,
        "adapt_log": logs,
        "load_average_at_start": load_before,
        "meta_test": accuracy,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    doc = json.loads(out.read_text()) if out.exists() else {"benchmark": "adapt_cpu", "runs": []}
    doc.update(device_info())
    doc["note"] = ("2-core CPU shared with other jobs: wall times and episodes/s are upper bounds of the cost, "
                   "accuracies are unaffected")
    def key(run: dict) -> tuple:  # runs written before "base" existed used checkpoints/previous/
        return (run["model"], run.get("base", f"checkpoints/previous/{run['model']}.pt"), run["dataset"], run["rank"],
                run["targets"])

    doc["runs"] = [r for r in doc["runs"] if key(r) != key(entry)] + [entry]
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in entry.items() if k != "adapt_log"}, indent=2))


if __name__ == "__main__":
    main()
