"""Over-fitting of the meta-train classes: a learner's accuracy on meta-train episodes against meta-test
episodes of the same shape, measured on the CPU.

The same evaluation as `mclstudio eval` (its episode seeds, 20 tasks x 5 shots, 5 query shots by default),
once on the dataset's meta-train split (the characters the learner was meta-trained on) and once on its
meta-test split. The gap between the two is what meta-training learned about the training characters
rather than about learning in context. Results are merged into the JSON file, one entry per model and shape:

    python benchmarks/split_gap.py --model mamba --episodes 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming import device_info  # noqa: E402

from mclstudio.data import get_source  # noqa: E402
from mclstudio.store.checkpoint import load_checkpoint  # noqa: E402
from mclstudio.training.evaluate import Setting, evaluate_setting, trained_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mamba", help="a shipped learner: checkpoints/<model>.pt")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "split_gap_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    os.chdir(ROOT)

    checkpoint = load_checkpoint(f"checkpoints/{args.model}.pt", device="cpu")
    base = replace(trained_spec(checkpoint.metadata, checkpoint.learner.config.y_vocab), tasks=args.tasks,
                   train_shots=args.shots)
    source = get_source(base.dataset)
    accuracy = {}
    for split in ("train", "test"):
        setting = Setting(f"{args.tasks}x{args.shots} {split}", replace(base, split=split))
        result = evaluate_setting(checkpoint.learner, source, setting, args.episodes, args.batch_size)
        accuracy[split] = {"accuracy": result.mean, "ci95": result.ci95, "episodes": result.episodes}
        print(split, accuracy[split], file=sys.stderr, flush=True)

    entry = {
        "model": args.model,
        "checkpoint_sha256": checkpoint.sha256,
        "tasks": args.tasks,
        "train_shots": args.shots,
        "test_shots": base.test_shots,
        "accuracy": accuracy,
        "gap_points": 100 * (accuracy["train"]["accuracy"] - accuracy["test"]["accuracy"]),
        "training_accuracy_at_end": checkpoint.metadata.get("final_metrics", {}).get("accuracy"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    doc = json.loads(out.read_text()) if out.exists() else {"benchmark": "split_gap", "runs": []}
    doc.update(device_info())
    key = (entry["model"], entry["tasks"], entry["train_shots"])
    doc["runs"] = [r for r in doc["runs"] if (r["model"], r["tasks"], r["train_shots"]) != key] + [entry]
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
