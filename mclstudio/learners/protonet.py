"""ProtoNet as a continual learner (Snell et al. 2017; a baseline of Lee et al. 2023): no sequence model.

The state is, per label code v, the sum of the x embeddings seen with that label and their count (fixed
size: y_vocab x d_model + y_vocab, whatever the stream's length; it cannot forget). A query's logit for
code v is minus the squared Euclidean distance from its embedding to the code's mean (prototype); codes
with no example yet get ``EMPTY_LOGIT``. The x embeddings come from the same image encoder as every
other learner (``TokenEmbedding``); labels are used as codes, so the label embedding, final norm and
head of the base class are not used (the label table is frozen).

Association rows (one "layer"): the query's softmax over the stream's visible examples of minus the
squared distance to each example's embedding, each pair's share split evenly between its x and y
tokens. Its selectivity loss against the same-class target is then a soft nearest-neighbour loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mclstudio.learners.base import Learner, LearnerConfig, LearnerOutput, State, checked_query_end

EMPTY_LOGIT = -1e9  # a code with no example: never predicted while any code has one


@dataclass
class ProtoNetConfig(LearnerConfig):
    """ProtoNet has no layers (n_layers must stay 1: its one memory) and needs label codes (y_vocab > 0)."""

    model: ClassVar[str] = "protonet"
    n_layers: int = 1

    def __post_init__(self) -> None:
        if self.n_layers != 1:
            raise ValueError(f"protonet has no layers to stack (n_layers must be 1, not {self.n_layers})")
        if self.y_vocab < 1:
            raise ValueError("protonet classifies label codes: it needs y_vocab > 0 (no regression)")


@dataclass
class ProtoState(State):
    """sums: (B, V, D) float32 (at least) per-code sums of x embeddings; counts: (B, V) examples per code.
    pending: (B, D) the x embedding waiting for its label (after step_x), or None; not part of the memory
    proper (like an SSM's conv buffer it only bridges one x token to its y token)."""

    sums: Tensor
    counts: Tensor
    length: int
    pending: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        return [self.sums, self.counts]

    def layer_norms(self) -> Tensor:
        """(B, 1): the Frobenius norm of the per-code sums."""
        return self.sums.flatten(1).norm(dim=1, keepdim=True)


def prototype_logits(hq: Tensor, sums: Tensor, counts: Tensor, slot: Tensor | None = None) -> Tensor:
    """Minus the squared distance of each query to each code's mean, EMPTY_LOGIT for codes without examples.

    hq: (B, Q, D) query embeddings; sums (B, K, V, D) and counts (B, K, V): K memories (one per boundary);
    slot: (Q,) which memory each query reads (None: K must be 1). Returns (B, Q, V) in float32 (at least).
    Expanded as |q|^2 - 2 q.m + |m|^2 so no (B, Q, V, D) tensor is formed; in float32 (autocast off:
    the expansion cancels, which bf16 would not survive)."""
    with torch.autocast(hq.device.type, enabled=False):
        return _prototype_logits(hq, sums, counts, slot)


def _prototype_logits(hq: Tensor, sums: Tensor, counts: Tensor, slot: Tensor | None) -> Tensor:
    ct = torch.promote_types(hq.dtype, torch.float32)
    hq, sums, counts = hq.to(ct), sums.to(ct), counts.to(ct)
    means = sums / counts.clamp(min=1).unsqueeze(-1)  # (B, K, V, D)
    Q = hq.shape[1]
    slot = torch.zeros(Q, dtype=torch.long, device=hq.device) if slot is None else slot
    queries = torch.arange(Q, device=hq.device)
    cross = torch.einsum("bqd,bkvd->bkqv", hq, means)[:, slot, queries]  # (B, Q, V)
    dist = hq.pow(2).sum(-1, keepdim=True) - 2 * cross + means.pow(2).sum(-1)[:, slot]
    return torch.where(counts[:, slot] > 0, -dist, torch.full_like(dist, EMPTY_LOGIT))


def example_rows(hq: Tensor, hx: Tensor, visible: Tensor | None = None) -> Tensor:
    """Association rows (B, Q, 2N): softmax over the visible stream examples of minus the squared distance
    from the query, each pair's share split between its x and y tokens; zero rows where nothing is visible.
    hq (B, Q, D); hx (B, N, D) stream x embeddings; visible: (Q, N) bool or None (all)."""
    ct = torch.promote_types(hq.dtype, torch.float32)
    with torch.autocast(hq.device.type, enabled=False):
        hq, hx = hq.to(ct), hx.to(ct)
        score = 2 * hq @ hx.transpose(1, 2) - hx.pow(2).sum(-1)[:, None, :]  # -dist up to a per-query constant
    if visible is not None:
        score = score.masked_fill(~visible, float("-inf"))
    weight = torch.softmax(score, dim=-1)
    if visible is not None:
        weight = torch.where(visible.any(-1)[:, None], weight, torch.zeros_like(weight))
    return (weight / 2).unsqueeze(-1).expand(*weight.shape, 2).flatten(-2)


class ProtoNetLearner(Learner):
    """Nearest class mean on the learner's own image encoder; the same paths as every learner."""

    config_class: ClassVar[type[LearnerConfig]] = ProtoNetConfig
    fixed_shape_state: ClassVar[bool] = True  # per-code sums and counts

    def __init__(self, config: ProtoNetConfig) -> None:
        super().__init__(config)
        # Codes are used as they are: the label table (tied to the head) and the head take no part, and
        # are frozen (DDP requires every trainable parameter to get a gradient).
        self.embedding.y_embed.requires_grad_(False)
        self.head.requires_grad_(False)
        self.norm_f = nn.Identity()

    # ---- the four model operations: ProtoNet reads codes, not label embeddings ----------------------
    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_tokens: int | None = None
    ) -> ProtoState:
        ct = torch.promote_types(dtype, torch.float32)
        V, D = self.config.y_vocab, self.config.d_model
        return ProtoState(torch.zeros(batch_size, V, D, device=device, dtype=ct),
                          torch.zeros(batch_size, V, device=device, dtype=ct), 0)

    def scan(self, h: Tensor, keep_history: bool = False, ends: Tensor | None = None) -> State:
        raise NotImplementedError("protonet reads label codes, not label embeddings: use forward or step_x/step_y")

    def step(self, state: State, h: Tensor) -> State:
        raise NotImplementedError("protonet reads label codes, not label embeddings: use step_x/step_y")

    def read(self, state: State, hq: Tensor, with_rows: bool = False, query_end: Tensor | None = None):
        assert isinstance(state, ProtoState)
        if with_rows:
            raise ValueError("protonet's streaming state keeps no examples: rows come from forward(..., with_rows=True)")
        return prototype_logits(hq, state.sums.unsqueeze(1), state.counts.unsqueeze(1)), None

    # ---- the paths ------------------------------------------------------------------------------------
    def forward(
        self,
        stream_x: Tensor,
        stream_y: Tensor,
        query_x: Tensor,
        with_rows: bool = False,
        embedded: bool = False,
        query_end: Tensor | None = None,
    ) -> LearnerOutput:
        """As ``Learner.forward``: logits (B, Q, y_vocab) and, if with_rows, one row tensor (B, Q, 2N)."""
        if not embedded:
            stream_x, query_x = self.embedding.embed_x(stream_x), self.embedding.embed_x(query_x)
        n = stream_x.shape[1]
        ct = torch.promote_types(stream_x.dtype, torch.float32)
        codes = F.one_hot(stream_y, self.config.y_vocab).to(ct)  # (B, N, V)
        if query_end is None:
            visible, slot = None, None
            seen = torch.ones(1, n, dtype=ct, device=stream_x.device)  # (K=1, N)
        else:
            query_end, ends, slot = checked_query_end(query_end, query_x.shape[1], n, stream_x.device)
            positions = torch.arange(n, device=stream_x.device)
            seen = (positions[None, :] < ends[:, None]).to(ct)  # (K, N)
            visible = positions[None, :] < query_end[:, None]  # (Q, N)
        with torch.autocast(stream_x.device.type, enabled=False):  # sums in float32
            sums = torch.einsum("kn,bnv,bnd->bkvd", seen, codes, stream_x.to(ct))
            counts = torch.einsum("kn,bnv->bkv", seen, codes)
        logits = prototype_logits(query_x, sums, counts, slot)
        return LearnerOutput(logits, [example_rows(query_x, stream_x, visible)] if with_rows else None)

    def answer_embedded(self, state: State, hq: Tensor, with_rows: bool = False) -> LearnerOutput:
        logits, rows = self.read(state, hq, with_rows)
        return LearnerOutput(logits, rows)

    def step_x(self, state: State, x: Tensor) -> ProtoState:
        assert isinstance(state, ProtoState)
        return ProtoState(state.sums, state.counts, state.length + 1, self.embedding.embed_x(x))

    def step_y(self, state: State, y: Tensor) -> ProtoState:
        """Add the pending x embedding to code y's sum (y: (B,) codes)."""
        assert isinstance(state, ProtoState)
        if state.pending is None:
            raise ValueError("step_y needs an x token first (step_x)")
        code = F.one_hot(y, self.config.y_vocab).to(state.sums.dtype)  # (B, V)
        sums = state.sums + code.unsqueeze(-1) * state.pending.to(state.sums.dtype).unsqueeze(1)
        return ProtoState(sums, state.counts + code, state.length + 1)
