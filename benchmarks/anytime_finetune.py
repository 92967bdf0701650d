"""Does the anytime objective change what a learner answers mid-stream? A small CPU check.

Starts from a shipped checkpoint, fine-tunes it for a few steps with the encoder frozen (the image pool
embedded once) under each objective ("end": every query after the whole stream; "anytime": each query
after a random task boundary at or after its task), from the same weights and the same episodes, then
measures meta-test accuracy on the tasks seen so far after k of 20 tasks (queries of tasks < k, each
seeing the first k tasks' pairs, through ``forward(..., query_end)``).

    OMP_NUM_THREADS=1 python benchmarks/anytime_finetune.py checkpoints/transformer.pt --steps 100 \
        --out benchmarks/results/anytime_finetune_transformer_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mclstudio.data import EpisodeSpec, get_source
from mclstudio.training.anytime import anytime_generator, sample_query_end
from mclstudio.store.checkpoint import load_checkpoint
from mclstudio.training.loop import embed_pool, meta_train_step, warmup_halving_schedule

BOUNDARIES = (1, 5, 10, 15, 20)


@torch.no_grad()
def anytime_accuracy(learner, table, source, episodes: int, shots: int) -> dict[int, float]:
    """Accuracy on the tasks seen after k tasks, for k in BOUNDARIES (meta-test split, 20 tasks)."""
    learner.eval()
    spec = EpisodeSpec(split="test", tasks=20, train_shots=shots, test_shots=5, num_codes=learner.config.y_vocab)
    ep = source.batch([spec.with_seed(10_000 + i) for i in range(episodes)])
    stream, queries = table[ep.train_sample_ids.flatten(1)], table[ep.test_sample_ids.flatten(1)]
    result = {}
    for k in BOUNDARIES:
        seen = torch.nonzero(ep.query_task < k).flatten()
        query_end = torch.full((len(seen),), k * shots)
        logits = learner(stream, ep.stream_y, queries[:, seen], embedded=True, query_end=query_end).logits
        result[k] = (logits.argmax(-1) == ep.query_y[:, seen]).float().mean().item()
    learner.train()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--episodes", type=int, default=128, help="Meta-test episodes per evaluation.")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    source = get_source("omniglot-mini")
    base = load_checkpoint(args.checkpoint).learner
    table = embed_pool(base, source)
    results = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} thread(s))", "checkpoint": args.checkpoint,
               "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "eval_episodes": args.episodes,
               "boundaries_tasks": list(BOUNDARIES), "before": anytime_accuracy(base, table, source, args.episodes, 5),
               "before_1_shot": anytime_accuracy(base, table, source, args.episodes, 1)}
    print("before", results["before"])
    spec = EpisodeSpec(split="train", tasks=20, train_shots=5, test_shots=5, num_codes=base.config.y_vocab)
    for objective in ("end", "anytime"):
        learner = load_checkpoint(args.checkpoint).learner.train()
        learner.embedding.x_encoder.requires_grad_(False)
        params = [p for p in learner.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=args.lr)
        schedule = warmup_halving_schedule(optimizer, 10, 10_000)
        t0 = time.perf_counter()
        for step in range(args.steps):
            ep = source.batch([spec.with_seed(step * args.batch_size + i) for i in range(args.batch_size)])
            query_end = None
            if objective == "anytime":
                query_end = sample_query_end(ep.stream_task, ep.query_task, anytime_generator(0, step))
            meta_train_step(learner, ep, optimizer, schedule, params, 0.5, 1.0, "fp32", table, step, query_end)
        results[objective] = {"seconds": time.perf_counter() - t0,
                              "accuracy_after_k_tasks": anytime_accuracy(learner, table, source, args.episodes, 5),
                              "accuracy_after_k_tasks_1_shot": anytime_accuracy(learner, table, source, args.episodes, 1)}
        print(objective, results[objective])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
