"""Pre-training the input encoder before meta-training (optional, ``--pretrain-steps``).

MambaCL feeds its learners the features of a pretrained image encoder (CLIP); Lee et al. train a CNN
from scratch. Meta-training from scratch sits for a long time on a plateau where the learner answers
with the codes it has seen but cannot yet tell which image goes with which; a discriminative encoder
moves it off that plateau much sooner. We pre-train the encoder on the same meta-train episodes with a
prototypical loss (Snell et al., 2017): each query is classified by its squared distance to the mean
embedding of every task's stream examples. It uses only meta-train classes, and the encoder keeps
training jointly with the learner afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mclstudio.data import EpisodeSource, EpisodeSpec
from mclstudio.learners.encoders import TokenEmbedding

PRETRAIN_SEED_OFFSET = 7_777_777_777


def prototypical_logits(stream_z: Tensor, stream_task: Tensor, query_z: Tensor, tasks: int) -> Tensor:
    """stream_z (B, N, D), stream_task (N,), query_z (B, Q, D) -> (B, Q, tasks): minus squared distance
    of each query to each task's prototype (the mean of its stream embeddings)."""
    one_hot = F.one_hot(stream_task, tasks).to(stream_z.dtype)  # (N, T)
    prototypes = torch.einsum("bnd,nt->btd", stream_z, one_hot) / one_hot.sum(0)[None, :, None]
    return -torch.cdist(query_z.float(), prototypes.float()).pow(2)


def pretrain_encoder(
    embedding: TokenEmbedding,
    source: EpisodeSource,
    spec: EpisodeSpec,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_log: Callable[[int, float, float], None] | None = None,
) -> float:
    """Train embedding.x_encoder with the prototypical loss on ``steps`` batches of meta-train episodes.
    Returns the query accuracy over the last 10% of steps. on_log(step, loss, accuracy)."""
    optimizer = torch.optim.Adam(embedding.x_encoder.parameters(), lr=lr)
    recent: list[float] = []
    embedding.train()
    for step in range(steps):
        specs = [spec.with_seed(PRETRAIN_SEED_OFFSET + seed * 1_000_003 + step * batch_size + i) for i in range(batch_size)]
        ep = source.batch(specs)
        logits = prototypical_logits(
            embedding.embed_x(ep.stream_x), ep.stream_task, embedding.embed_x(ep.query_x), ep.tasks
        )
        target = ep.query_task.expand(ep.batch_size, -1)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(-1) == target).float().mean().item()
        if step >= steps - max(1, steps // 10):
            recent.append(accuracy)
        if on_log is not None and ((step + 1) % 50 == 0 or step + 1 == steps):
            on_log(step + 1, loss.item(), accuracy)
    return sum(recent) / max(1, len(recent))
