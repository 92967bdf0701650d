"""Ablation of class-level augmentation (issue 16): the same small meta-training run with and without
``--augment``, then meta-test (and, for the over-fitting gap, plain meta-train) accuracy with 95% CIs.
Prints JSON (and writes it with --out).

    OMP_NUM_THREADS=1 python benchmarks/augment_ablation.py --out benchmarks/results/augment_ablation_cpu.json

A small CPU ablation: a tiny Mamba and a few hundred steps, far from the shipped size; it says whether
augmentation narrows the train/test gap at this scale, not what it buys a shipped learner.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming import device_info  # noqa: E402

from mclstudio.data import EpisodeSpec, get_source  # noqa: E402
from mclstudio.training.evaluate import Setting, evaluate_setting  # noqa: E402
from mclstudio.training.trainer import TrainConfig, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mamba")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pretrain-steps", type=int, default=300, help="Prototypical encoder pre-training first.")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--encoder-channels", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=512, help="Evaluation episodes per split.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    learner = {"d_model": args.d_model, "n_layers": args.layers, "encoder_channels": args.encoder_channels}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for augment in (False, True):
            cfg = TrainConfig(
                model=args.model, tasks=args.tasks, train_shots=args.shots, test_shots=5, steps=args.steps,
                batch_size=args.batch_size, lr=args.lr, warmup_steps=20, slct_lambda=0.0, seed=args.seed,
                device="cpu", checkpoint_every=args.steps, log_every=max(1, args.steps // 4),
                out=str(Path(tmp) / f"aug{int(augment)}.pt"), learner=learner, augment=augment,
                pretrain_steps=args.pretrain_steps,
            )
            start = time.perf_counter()
            logs = []
            train(cfg, logs.append)
            train_s = time.perf_counter() - start
            from mclstudio.training.checkpoint import load_checkpoint

            model = load_checkpoint(cfg.out).learner
            source = get_source("omniglot-mini")
            base = EpisodeSpec(tasks=args.tasks, train_shots=args.shots, test_shots=5, num_codes=model.config.y_vocab)
            results = {}
            for split in ("test", "train"):  # meta-train episodes without augmentation: the over-fitting gap
                r = evaluate_setting(model, source, Setting(split, replace(base, split=split)), args.episodes)
                results[split] = {"accuracy": r.mean, "ci95": r.ci95, "episodes": r.episodes}
            runs.append({
                "augment": augment, "train_seconds": round(train_s, 1),
                "final_train_log": {k: getattr(logs[-1], k) for k in ("step", "loss", "accuracy")},
                "meta_test": results["test"], "meta_train_plain": results["train"],
                "gap_points": 100 * (results["train"]["accuracy"] - results["test"]["accuracy"]),
            })
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    doc = {
        "benchmark": "augment_ablation", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "small CPU ablation: tiny learner, few steps; not the shipped size",
        "config": {**vars(args), "dataset": "omniglot-mini", "slct_lambda": 0.0, "test_shots": 5,
                   "augmented": "encoder pre-training and meta-training episodes (augment run only)",
                   "evaluation": f"{args.tasks} tasks x {args.shots} shots, seeds 10,000,000 + i"},
        "runs": runs,
    }
    doc.update(device_info())
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
