"""Each sequence learner against class means on its own encoder: the comparison issue 16's targets ask
for ("within 3 points of ProtoNet on the same encoder").

Every shipped learner has its own frozen image encoder (pre-trained the same way, but not to the same
weights). For each checkpoint this builds a ProtoNet with the same config and the learner's encoder
weights (nearest class mean of the stream's embeddings, no sequence model) and scores both on the same
grid of meta-test episodes (`mclstudio eval --grid`'s seeds). Runs on the CPU in a few minutes:

    python benchmarks/own_encoder_prototypes.py --episodes 32
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming import device_info  # noqa: E402

from mclstudio.cli.grid_report import parse_int_list  # noqa: E402
from mclstudio.data import get_source  # noqa: E402
from mclstudio.learners.registry import build_learner, make_config  # noqa: E402
from mclstudio.store.checkpoint import load_checkpoint  # noqa: E402
from mclstudio.training.evaluate import evaluate_setting, grid_settings, trained_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEQUENCE_LEARNERS = ("mamba", "transformer", "linear_transformer", "performer", "longhorn")


def prototypes_on_encoder_of(learner: torch.nn.Module) -> torch.nn.Module:
    """A ProtoNet whose image encoder is ``learner``'s (same d_model, channels, codes and input shape)."""
    cfg = learner.config
    proto = build_learner(make_config("protonet", x_shape=tuple(cfg.x_shape), d_model=cfg.d_model,
                                      y_vocab=cfg.y_vocab, encoder_channels=cfg.encoder_channels))
    proto.embedding.x_encoder.load_state_dict(learner.embedding.x_encoder.state_dict())
    return proto.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SEQUENCE_LEARNERS))
    parser.add_argument("--tasks", default="5,20,40")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "own_encoder_prototypes_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks, shots = parse_int_list(args.tasks, "--tasks"), parse_int_list(args.shots, "--shots")
    runs = []
    for model in args.models.split(","):
        ckpt = load_checkpoint(ROOT / "checkpoints" / f"{model}.pt")
        learner = ckpt.learner.eval()
        base = trained_spec(ckpt.metadata, learner.config.y_vocab)
        source = get_source(base.dataset)
        proto = prototypes_on_encoder_of(learner)
        cells = {}
        for setting in grid_settings(base, tasks, shots):
            mine = evaluate_setting(learner, source, setting, args.episodes, 32)
            means = evaluate_setting(proto, source, setting, args.episodes, 32)
            cells[setting.name] = {"learner": mine.mean, "learner_ci95": mine.ci95,
                                   "own_encoder_prototypes": means.mean, "prototypes_ci95": means.ci95}
            print(f"{model} {setting.name}: learner {100 * mine.mean:.1f}, "
                  f"class means on its encoder {100 * means.mean:.1f}", flush=True)
        runs.append({"model": model, "checkpoint_sha256": ckpt.sha256, "cells": cells})
    doc = {"benchmark": "own_encoder_prototypes", "episodes": args.episodes, "runs": runs,
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **device_info()}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
