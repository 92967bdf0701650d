"""The one interface every learner implements.

A learner reads a stream of tokens x1, y1, x2, y2, ... and answers queries (x tokens) from what it has
read, with no gradient step. Three ways in:

(a) ``forward(stream_x, stream_y, query_x)``: the parallel path for training and evaluation. The
    stream is processed at once (``scan``), then every query is read from the final state on its own
    (queries never see each other).
(b) the recurrent path for streaming: ``init_state``, ``step_x``/``step_y`` (one token in, new state)
    and ``query`` (logits for some x, state unchanged).
(c) introspection: ``state_norms`` and ``state_nbytes`` of a state, and association rows of queries
    over the past tokens (``forward(..., with_rows=True)``).

Anytime queries: ``forward(..., query_end=e)`` with e (Q,) int64 gives each query its own boundary, the
number of stream pairs it may see; query q is answered exactly as if the stream had stopped after
e[q] pairs (its rows cover that prefix only, zeros beyond). ``scan`` then gets the distinct boundaries
(``ends``, in tokens) and ``read`` each query's boundary (``query_end``, in tokens).

A model supplies four operations on token embeddings h: ``init_state``, ``scan``, ``step`` and
``read``. Everything else (embedding, head, the three paths) lives here, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mclstudio.learners.encoders import TokenEmbedding
from mclstudio.transfer import to_device


@dataclass
class LearnerConfig:
    """Fields shared by every learner; each model's config subclasses this.

    y_vocab > 0 means classification over that many label codes (size it for the longest stream to
    be tested); y_vocab == 0 means regression onto y_dim targets.
    """

    model: ClassVar[str] = ""
    d_model: int = 128
    n_layers: int = 4
    x_shape: tuple[int, ...] = (1, 32, 32)
    y_vocab: int = 100
    y_dim: int = 0
    encoder_channels: int = 64

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["x_shape"] = list(self.x_shape)
        d["model"] = self.model
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnerConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "x_shape" in kwargs:
            kwargs["x_shape"] = tuple(kwargs["x_shape"])
        return cls(**kwargs)

    @property
    def is_regression(self) -> bool:
        return self.y_vocab == 0


def checked_query_end(query_end: Tensor, n_queries: int, n_pairs: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The anytime objective's query_end (Q,) pair counts, checked to lie in 0..n_pairs, on ``device``, with
    its distinct values (K,) increasing and each query's index among them (Q,). The checks and the
    distinct values are worked out on the host (the trainer's query_end is a host tensor), so that a GPU
    never has a value read back mid-step. ValueError (one line) for a bad query_end."""
    host = query_end.cpu().long()
    if host.shape != (n_queries,) or int(host.min()) < 0 or int(host.max()) > n_pairs:
        raise ValueError(f"query_end must be ({n_queries},) pair counts in 0..{n_pairs}")
    distinct, index = torch.unique(host, return_inverse=True)
    return to_device(host, device), to_device(distinct, device), to_device(index, device)


class LearnerOutput(NamedTuple):
    """logits: (B, Q, y_vocab) or predictions (B, Q, y_dim) for regression.
    rows: None, or one (B, Q, L) tensor per layer: each query's association over the L past tokens,
    non-negative and summing to 1 over those tokens."""

    logits: Tensor
    rows: list[Tensor] | None


class State(ABC):
    """A learner's memory after some tokens. ``length`` is how many tokens it has read."""

    length: int

    @abstractmethod
    def tensors(self) -> list[Tensor]:
        """The tensors that make up the memory proper (not any kept history)."""

    @abstractmethod
    def layer_norms(self) -> Tensor:
        """(B, n_layers): the Frobenius norm of each layer's memory, per episode."""

    def counters(self) -> list[Tensor]:
        """Device-side counters a step advances in place (a position), not memory proper: a step replayed
        from a CUDA graph (engine/graphs.py) reads them from the device instead of ``length``."""
        return []

    def nbytes(self) -> int:
        """Bytes of memory proper the state holds (used, not reserved)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


class Learner(nn.Module, ABC):
    """Base of every learner: token embedding -> model -> final norm -> head."""

    config_class: ClassVar[type[LearnerConfig]] = LearnerConfig
    # A state made with ``init_state(..., max_tokens=n)`` keeps its tensors' shapes for n tokens and
    # ``step`` reads no Python-level counter: the streaming engine may then capture a step as a CUDA
    # graph (engine/graphs.py).
    fixed_shape_state: ClassVar[bool] = False

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.embedding = TokenEmbedding(
            config.x_shape, d, config.y_vocab, config.y_dim, config.encoder_channels
        )
        self.norm_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.y_vocab if config.y_vocab > 0 else config.y_dim)
        if config.y_vocab > 0:
            # Tie the output to the label embedding (as nanoGPT ties lm_head to wte): answering a query
            # then means retrieving the embedding of the right y token, which meta-training finds far
            # sooner than learning a separate code-to-logit map, and every code stays interchangeable.
            self.head.weight = self.embedding.y_embed.weight
            # Unit-scale logits at init: the head reads a LayerNorm-ed (unit-variance) vector.
            nn.init.normal_(self.head.weight, std=d**-0.5)

    # ---- what a model supplies ---------------------------------------------------------------
    @abstractmethod
    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_tokens: int | None = None
    ) -> State:
        """The empty memory for batch_size episodes. max_tokens: the most tokens it will read, where that
        is known (streaming an episode): a memory that grows (the Transformer's KV cache) is then
        preallocated for them and keeps one shape (``fixed_shape_state``); a fixed-size memory ignores it.
        None: a growing memory grows as needed."""

    @abstractmethod
    def scan(self, h: Tensor, keep_history: bool = False, ends: Tensor | None = None) -> State:
        """Read a whole stream of token embeddings h: (B, L, D) in parallel; return the state after it.
        keep_history: also keep what ``read(..., with_rows=True)`` needs to form association rows.
        ends: (K,) increasing token counts in 0..L: also keep what ``read(..., query_end=...)`` needs to
        answer queries as if the stream had stopped after ends[k] tokens."""

    @abstractmethod
    def step(self, state: State, h: Tensor) -> State:
        """Read one token embedding h: (B, D). May update ``state`` in place; returns the new state."""

    @abstractmethod
    def read(
        self, state: State, hq: Tensor, with_rows: bool = False, query_end: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Read queries hq: (B, Q, D) from state, each as one extra token that nothing else sees.
        Returns the last layer's outputs (B, Q, D) and, if with_rows (which needs a state from
        ``scan(..., keep_history=True)``), each layer's association rows (B, Q, state.length).
        query_end: (Q,) token counts (each in the ``ends`` given to ``scan``): query q sees only the first
        query_end[q] tokens, as if the stream stopped there. The state is left unchanged."""

    # ---- the three paths, shared -------------------------------------------------------------
    def forward(
        self,
        stream_x: Tensor,
        stream_y: Tensor,
        query_x: Tensor,
        with_rows: bool = False,
        embedded: bool = False,
        query_end: Tensor | None = None,
    ) -> LearnerOutput:
        """Parallel path. stream_x (B, N, *x_shape), stream_y (B, N[, y_dim]), query_x (B, Q, *x_shape)
        -> logits (B, Q, y_vocab) (or (B, Q, y_dim)) and, if with_rows, rows over the 2N stream tokens.
        embedded: stream_x and query_x are already x embeddings (B, N, D) and (B, Q, D).
        query_end: None (every query sees the whole stream) or (Q,) int64 in 0..N, shared by the batch:
        query q is answered as if the stream had stopped after query_end[q] pairs."""
        if not embedded:
            stream_x, query_x = self.embedding.embed_x(stream_x), self.embedding.embed_x(query_x)
        h = self.embedding.interleave(stream_x, stream_y)
        if query_end is None:
            return self.answer_embedded(self.scan(h, keep_history=with_rows), query_x, with_rows)
        query_end, distinct, _ = checked_query_end(query_end, query_x.shape[1], stream_x.shape[1], h.device)
        state = self.scan(h, keep_history=with_rows, ends=2 * distinct)  # token counts
        out, rows = self.read(state, query_x, with_rows, query_end=2 * query_end)
        return LearnerOutput(self.head(self.norm_f(out)), rows)

    def answer(self, state: State, query_x: Tensor, with_rows: bool = False) -> LearnerOutput:
        """Logits of queries query_x: (B, Q, *x_shape) read from state (unchanged)."""
        return self.answer_embedded(state, self.embedding.embed_x(query_x), with_rows)

    def answer_embedded(self, state: State, hq: Tensor, with_rows: bool = False) -> LearnerOutput:
        """Like ``answer`` for queries already embedded, hq: (B, Q, D) (streaming re-reads the same
        queries after every step; their embeddings never change, so callers embed them once)."""
        out, rows = self.read(state, hq, with_rows)
        return LearnerOutput(self.head(self.norm_f(out)), rows)

    def step_x(self, state: State, x: Tensor) -> State:
        """Recurrent path: feed one x token per episode, x: (B, *x_shape)."""
        return self.step(state, self.embedding.embed_x(x))

    def step_y(self, state: State, y: Tensor) -> State:
        """Recurrent path: feed one y token per episode, y: (B,) codes or (B, y_dim) targets."""
        return self.step(state, self.embedding.embed_y(y).to(self.head.weight.dtype))

    def query(self, state: State, query_x: Tensor) -> Tensor:
        """Recurrent path: logits (B, Q, ...) for query_x (B, Q, *x_shape); the state is unchanged."""
        return self.answer(state, query_x).logits

    def empty_state(self, batch_size: int = 1, max_tokens: int | None = None) -> State:
        """The empty memory, in the dtype activations have here: the weights' dtype, or the low type of
        an autocast in effect (mixed precision, ``mclstudio.precision``). Each model's ``init_state``
        keeps its accumulating memory (SSM state, S and z) in at least float32 all the same.
        max_tokens: see ``init_state``."""
        p = self.head.weight
        dtype = torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype
        return self.init_state(batch_size, p.device, dtype, max_tokens)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def compile_training(self, backend: str = "inductor") -> None:
        """Run the training pass's elementwise hot spots through torch.compile (``train`` does this on
        CUDA): the image encoder's blocks here; learners add their own (Longhorn: its transition).
        Parameters and checkpoints do not change; inference keeps its own kernels."""
        encoder = self.embedding.x_encoder
        if hasattr(encoder, "compile_training"):
            encoder.compile_training(backend)
