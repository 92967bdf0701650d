"""A deterministic stand-in learner for the engine and recording tests: nearest neighbour in pixel space
with a memory of the last ``memory`` stream pairs, behind the real Learner interface.

It does much better than chance (so recorded curves are not all zeros) and forgets tasks whose examples
have left its memory (so forgetting is not zero), and ``expected_accuracy_matrix`` says what it must score
without going through the engine: plain numpy on the episode's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mclstudio.data.episodes import Episode
from mclstudio.learners.base import Learner, LearnerConfig, State


@dataclass
class TokenState(State):
    """tokens: (B, L, D), every token read so far, x and y interleaved."""

    tokens: Tensor
    length: int

    def tensors(self) -> list[Tensor]:
        return [self.tokens]

    def layer_norms(self) -> Tensor:
        return self.tokens.flatten(1).norm(dim=1, keepdim=True)  # (B, 1)


class PixelEmbedding(nn.Module):
    """An x token is its pixels followed by V zeros; a y token is P zeros followed by the label's one-hot."""

    def __init__(self, x_shape: tuple[int, ...], y_vocab: int) -> None:
        super().__init__()
        self.x_shape, self.pixels, self.y_vocab = tuple(x_shape), int(np.prod(x_shape)), y_vocab

    def embed_x(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - len(self.x_shape)]
        return F.pad(x.reshape(*lead, self.pixels), (0, self.y_vocab))

    def embed_y(self, y: Tensor) -> Tensor:
        return F.pad(F.one_hot(y, self.y_vocab).float(), (self.pixels, 0))

    def interleave(self, hx: Tensor, stream_y: Tensor) -> Tensor:
        return torch.stack([hx, self.embed_y(stream_y).to(hx.dtype)], dim=2).flatten(1, 2)

    def stream(self, stream_x: Tensor, stream_y: Tensor) -> Tensor:
        return self.interleave(self.embed_x(stream_x), stream_y)


class NearestNeighbourLearner(Learner):
    """Answers a query with the label of the nearest x (Euclidean, pixels) among the last ``memory`` pairs
    read; its association row is one-hot on that x token. One layer."""

    def __init__(self, x_shape: tuple[int, ...], y_vocab: int, memory: int) -> None:
        pixels = int(np.prod(x_shape))
        super().__init__(LearnerConfig(d_model=pixels + y_vocab, n_layers=1, x_shape=x_shape, y_vocab=y_vocab,
                                       encoder_channels=1))
        self.memory, self.pixels = memory, pixels
        self.embedding = PixelEmbedding(x_shape, y_vocab)  # type: ignore[assignment]
        self.norm_f = nn.Identity()  # type: ignore[assignment]
        self.head = nn.Linear(pixels + y_vocab, y_vocab, bias=False)
        with torch.no_grad():  # logits = the label part of the answer
            self.head.weight.copy_(torch.cat([torch.zeros(y_vocab, pixels), torch.eye(y_vocab)], dim=1))

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_tokens: int | None = None
    ) -> TokenState:
        return TokenState(torch.zeros(batch_size, 0, self.config.d_model, device=device, dtype=dtype), 0)

    def scan(self, h: Tensor, keep_history: bool = False) -> TokenState:
        return TokenState(h, h.shape[1])

    def step(self, state: State, h: Tensor) -> TokenState:
        assert isinstance(state, TokenState)
        return TokenState(torch.cat([state.tokens, h[:, None]], dim=1), state.length + 1)

    def read(self, state: State, hq: Tensor, with_rows: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        assert isinstance(state, TokenState)
        pairs = state.length // 2
        first = max(0, pairs - self.memory)
        xs = state.tokens[:, 0::2][:, first:pairs, : self.pixels]  # (B, M, P)
        labels = state.tokens[:, 1::2][:, first:pairs, self.pixels :].argmax(-1)  # (B, M)
        nearest = torch.cdist(hq[..., : self.pixels], xs).argmin(-1)  # (B, Q)
        answer = F.one_hot(labels.gather(1, nearest), self.config.y_vocab).to(hq.dtype)
        out = F.pad(answer, (self.pixels, 0))
        rows = None
        if with_rows:
            rows = [F.one_hot(2 * (first + nearest), state.length).to(hq.dtype)]
        return out, rows


def expected_accuracy_matrix(episode: Episode, memory: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``NearestNeighbourLearner(memory)`` must score on a batch-of-one episode, in numpy:
    the accuracy matrix (T, T) (NaN above the diagonal) and the running accuracy on the queries of the
    tasks seen so far after every stream example (N,)."""
    sx = episode.stream_x[0].flatten(1).double().numpy()
    sy = episode.stream_y[0].numpy()
    qx = episode.query_x[0].flatten(1).double().numpy()
    qy = episode.query_y[0].numpy()
    st, qt = episode.stream_task.numpy(), episode.query_task.numpy()
    T, N = episode.tasks, len(sy)
    matrix = np.full((T, T), np.nan)
    running = np.zeros(N)
    for i in range(N):
        kept = range(max(0, i + 1 - memory), i + 1)
        seen = [q for q in range(len(qy)) if qt[q] <= st[i]]
        hits = {}
        for q in seen:
            distances = [np.sqrt(((qx[q] - sx[s]) ** 2).sum()) for s in kept]
            hits[q] = sy[list(kept)[int(np.argmin(distances))]] == qy[q]
        running[i] = np.mean([hits[q] for q in seen])
        if i == N - 1 or st[i + 1] != st[i]:
            k = st[i]
            for j in range(k + 1):
                matrix[k, j] = np.mean([hits[q] for q in seen if qt[q] == j])
    return matrix, running
