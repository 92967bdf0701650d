"""The selective state-space block that Mamba and Longhorn share, and the stack of them.

Both models use Mamba-1's outer block (in_proj -> causal depthwise conv -> SiLU -> SSM, gated by
SiLU(z) -> out_proj) and a diagonal recurrence per channel d and state index n:

    h_t[d, n] = decay_t[d, n] * h_{t-1}[d, n] + rate_t[d] * u_t[d] * key_t[n]
    y_t[d]    = sum_n C_t[n] * h_t[d, n] + D[d] * u_t[d]

They differ only in the *transition*: how (decay, rate, key) come from the token. ``SelectiveMixer``
holds everything else once; a subclass supplies ``transition``. The recurrence itself lives in
``scan.py`` and the hidden attention in ``hidden_attention.py``.

The memory of a layer is its last d_conv conv inputs and the (d_inner, d_state) matrix h: O(1) in the
stream's length.
"""

from __future__ import annotations

import functools
import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mclstudio.learners.base import Learner, LearnerConfig, State
from mclstudio.learners.hidden_attention import normalised_rows, query_rows, stream_keys
from mclstudio.learners.kernels import fused_states_supported
from mclstudio.learners.kernels.hidden_rows import transition_rows
from mclstudio.learners.kernels.conv_token import conv_token, fused_conv_token_supported
from mclstudio.learners.scan import ScanBackend, Transition, diagonal_read, diagonal_scan, diagonal_step, query_weights


@dataclass
class SSMConfig(LearnerConfig):
    """The outer block's hyper-parameters, with mamba_ssm's defaults. dt_rank 0 means ceil(d_model / 16)."""

    model: ClassVar[str] = ""
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4


@dataclass
class SSMState(State):
    """conv[l]: (B, d_inner, d_conv) last inputs of layer l's convolution; ssm[l]: (B, d_inner, d_state).
    history[l]: the stream's (dt, B) of layer l, (B, L, d_inner) and (B, L, N), kept only for rows.
    ends: None, or (K,) increasing token counts: then the state is the memory after each of the first
    ends[k] tokens (for queries with boundaries), conv[l] (B, K, d_inner, d_conv), ssm[l] (B, K, d_inner,
    d_state), and only ``SSMLearner.read`` with query_end takes it."""

    conv: list[Tensor]
    ssm: list[Tensor]
    length: int
    history: list[tuple[Tensor, Tensor]] | None = None
    ends: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        return [*self.conv, *self.ssm]

    def layer_norms(self) -> Tensor:
        # The SSM state is the memory; the conv buffer only holds the last few inputs.
        return torch.stack([s.flatten(1).norm(dim=1) for s in self.ssm], dim=1)


def shifted_causal_conv(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Depthwise causal convolution as a sum of shifted products: x (B, d, L), weight (d, K), bias (d,)
    -> (B, d, L). A compiler fuses it into one pass; cuDNN's depthwise kernel took 5% of a compiled
    Mamba's inference on an H100."""
    L, K = x.shape[-1], weight.shape[-1]
    padded = F.pad(x, (K - 1, 0))
    weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    out = bias[:, None] + weight[:, :1] * padded[..., :L]
    for k in range(1, K):
        out = out + weight[:, k : k + 1] * padded[..., k : k + L]
    return out


def channels_first_linear(h: Tensor, weight: Tensor) -> Tensor:
    """h (B, L, in) times weight (out, in)^T, as (B, out, L) laid out (out, B, L): computed as
    weight @ h^T, as mamba_ssm's Mamba does, so the scan kernel reads x, z and delta in place (time is
    contiguous) instead of from transposed copies."""
    batch, L, _ = h.shape
    return (weight.to(h.dtype) @ h.reshape(batch * L, -1).transpose(0, 1)).view(-1, batch, L).transpose(0, 1)


class SelectiveMixer(nn.Module):
    """Mamba-1's block around a diagonal selective recurrence. (B, L, d_model) -> (B, L, d_model).

    Parameter names and shapes follow mamba_ssm.modules.mamba_simple.Mamba (in_proj, conv1d, x_proj,
    dt_proj, D, out_proj); x_proj makes (dt, B, C) per token and dt_proj lifts dt to d_inner channels.
    """

    def __init__(self, config: SSMConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.d_state = config.d_state
        self.d_conv = config.d_conv
        self.d_inner = config.expand * config.d_model
        self.dt_rank = config.dt_rank or math.ceil(config.d_model / 16)
        self.in_proj = nn.Linear(self.d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, config.d_conv, groups=self.d_inner, padding=config.d_conv - 1
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=False)
        self.D = nn.Parameter(torch.ones(self.d_inner))

        # mamba_ssm's initialisation: dt_proj keeps the variance, and its bias puts softplus(bias)
        # log-uniformly in [dt_min, dt_max].
        dt_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        log_lo, log_hi = math.log(config.dt_min), math.log(config.dt_max)
        dt = torch.exp(torch.rand(self.d_inner) * (log_hi - log_lo) + log_lo).clamp(min=config.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    # ---- what a model supplies ----------------------------------------------------------------
    @abstractmethod
    def transition(self, dt: Tensor, B: Tensor) -> Transition:
        """dt: (..., d_inner) before dt_proj's bias; B: (..., N) -> the token's Transition."""

    def scan_sequence(
        self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, z: Tensor, backend: ScanBackend, ends: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The recurrence over a whole sequence. x, dt, z: (B, d_inner, L); B, C: (B, N, L).
        Returns gated y (B, d_inner, L) in x's dtype and the last state (B, d_inner, N) float32, or with
        ends (K,) the states after each of the first ends[k] tokens (B, K, d_inner, N).
        Mamba overrides this to use mamba_ssm's fused kernel on CUDA."""
        return diagonal_scan(
            x, z, C, self.D,
            lambda t: self.transition(dt[:, :, t].transpose(1, 2), B[:, :, t].transpose(1, 2)),
            ends=ends,
        )

    # ---- shared ----------------------------------------------------------------------------------
    def _x_proj(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (..., d_inner) post-conv -> dt before dt_proj (..., dt_rank), B (..., N), C (..., N)."""
        return torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)

    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (..., d_inner) post-conv -> dt before bias (..., d_inner), B (..., N), C (..., N)."""
        dt, B, C = self._x_proj(x)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(
        self, h: Tensor, backend: ScanBackend = "auto", keep_history: bool = False, ends: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """Whole sequence. h: (B, L, d_model) -> out (B, L, d_model), conv state (B, d_inner, d_conv),
        SSM state (B, d_inner, d_state) and, if keep_history, the stream's (dt, B) for rows.
        ends: (K,) increasing token counts: return the conv and SSM states after each of the first ends[k]
        tokens instead, (B, K, d_inner, d_conv) and (B, K, d_inner, d_state)."""
        L = h.shape[1]
        x, z = channels_first_linear(h, self.in_proj.weight).chunk(2, dim=1)  # (B, d_inner, L) each
        if ends is None:
            conv_state = F.pad(x, (self.d_conv - L, 0)) if L < self.d_conv else x[..., -self.d_conv :]
        else:  # the d_conv inputs before each boundary (zeros before the stream)
            window = ends[:, None] + torch.arange(self.d_conv, device=ends.device)  # (K, d_conv)
            conv_state = F.pad(x, (self.d_conv, 0))[:, :, window].transpose(1, 2)
        x = F.silu(self._causal_conv(x))
        dt, B, C = self._x_proj(x.transpose(1, 2))
        dt = channels_first_linear(dt, self.dt_proj.weight)  # (B, d_inner, L), before dt_proj's bias
        history = (dt.transpose(1, 2), B) if keep_history else None
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        y, ssm_state = self.scan_sequence(x, dt, B, C, z, backend, ends)
        return self.out_proj(y.transpose(1, 2)), conv_state.contiguous(), ssm_state, history

    def _causal_conv(self, x: Tensor) -> Tensor:
        """The depthwise causal convolution of a sequence x: (B, d_inner, L) -> (B, d_inner, L).
        On a GPU as shifted products (``shifted_causal_conv``); the CPU keeps conv1d."""
        if x.is_cuda:
            return shifted_causal_conv(x, self.conv1d.weight.squeeze(1), self.conv1d.bias)
        return self.conv1d(x)[..., : x.shape[-1]]

    def _conv_token(self, conv_state: Tensor, x: Tensor) -> Tensor:
        """The causal conv's output (after SiLU, in x's dtype) for one new input x (..., d_inner) after the
        inputs in conv_state (..., d_inner, d_conv) (broadcast against x's leading dims), without building
        the new buffer."""
        weight = self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        past = (conv_state[..., 1:] * weight[:, :-1]).sum(-1)
        return F.silu(past + x * weight[:, -1] + self.conv1d.bias).to(x.dtype)

    def step(self, h: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One token. h: (B, d_model); conv_state (B, d_inner, d_conv); ssm_state (B, d_inner, N).
        Returns out (B, d_model) and the new conv and SSM states (the given ones are not modified)."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        new_conv = torch.cat([conv_state[..., 1:], x.unsqueeze(-1)], dim=-1)
        x = self._conv_token(conv_state, x)
        dt, B, C = self._ssm_inputs(x)
        y, ssm_state = diagonal_step(ssm_state, x, z, C, self.D, self.transition(dt, B))
        return self.out_proj(y), new_conv, ssm_state

    def read(
        self, h: Tensor, conv_state: Tensor, ssm_state: Tensor, history: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Queries, each one more token after the stream. h: (B, Q, d_model); conv_state
        (B, d_inner, d_conv); ssm_state (B, d_inner, N), or per query (B, Q, d_inner, d_conv) and
        (B, Q, d_inner, N). Returns out (B, Q, d_model) and, given the stream's history, the association
        rows (B, Q, L) of a query read right after the whole stream."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        if conv_state.dim() == 4:  # one state per query
            x = self._conv_token(conv_state, x)
        elif x.is_cuda and not torch.is_grad_enabled() and fused_conv_token_supported(x):
            x = conv_token(conv_state, x, self.conv1d.weight.squeeze(1), self.conv1d.bias)
        else:
            x = self._conv_token(conv_state.unsqueeze(1), x)
        dt, B, C = self._ssm_inputs(x)
        # The queries' (B, Q, d_inner, N) transition, made once and only if a path below needs it (the
        # fused kernels work from dt and C).
        query_move = functools.cache(lambda: self.transition(dt, B))
        y = self.read_queries(ssm_state, x, z, dt, B, C, query_move)
        rows = None if history is None else self.association_rows(history, dt, C, query_move)
        return self.out_proj(y), rows

    def compile_training(self, backend: str = "inductor") -> None:
        """Compile what this mixer's training pass spends in PyTorch elementwise ops (``Learner.
        compile_training``); Mamba's kernels need nothing, Longhorn compiles its transition."""

    def read_queries(
        self, ssm_state: Tensor, x: Tensor, z: Tensor, dt: Tensor, B: Tensor, C: Tensor,
        query_move: Callable[[], Transition],
    ) -> Tensor:
        """The SSM part of ``read``: x, z, dt (before dt_proj's bias) (B, Q, d_inner); B, C (B, Q, N);
        query_move() the queries' Transition. Returns gated y (B, Q, d_inner).
        Mamba overrides this with fused kernels on CUDA."""
        return diagonal_read(ssm_state, x, z, C, self.D, query_move())

    def association_rows(
        self, history: tuple[Tensor, Tensor], dt: Tensor, C: Tensor, query_move: Callable[[], Transition]
    ) -> Tensor:
        """Association rows (B, Q, L) of queries (dt before dt_proj's bias (B, Q, d_inner), C (B, Q, N),
        query_move() their Transition) over the stream whose (dt, B) are history. Under autograd the
        (B, L, d_inner, N) keys are recomputed in the backward pass rather than stored: they are the
        largest tensor of a training step."""
        if C.is_cuda and fused_states_supported(C.shape[-1]):  # keys and weights made by a kernel
            return normalised_rows(transition_rows(query_move(), C, self.transition(*history)))
        G = query_weights(C, query_move().log_decay)

        def rows(dt: Tensor, B: Tensor, G: Tensor) -> Tensor:
            return query_rows(G, stream_keys(self.transition(dt, B)))

        if torch.is_grad_enabled():
            return checkpoint(rows, *history, G, use_reentrant=False)
        return rows(*history, G)


class SSMLayer(nn.Module):
    """Pre-norm residual block around a mixer, as mamba_ssm's Block: h + mixer(norm(h))."""

    def __init__(self, mixer: SelectiveMixer, d_model: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = mixer


class SSMLearner(Learner):
    """A stack of selective SSM layers over interleaved x/y tokens, laid out like mamba_ssm's MixerModel
    (``layers.{i}.norm``, ``layers.{i}.mixer``, ``norm_f``); no positional encoding (the scan is ordered)."""

    config_class: ClassVar[type[SSMConfig]] = SSMConfig
    fixed_shape_state: ClassVar[bool] = True  # (conv, ssm) per layer; the length is bookkeeping only
    mixer_class: ClassVar[type[SelectiveMixer]]

    def __init__(self, config: SSMConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(
            SSMLayer(self.mixer_class(config), config.d_model) for _ in range(config.n_layers)
        )
        self.scan_backend: ScanBackend = "auto"
        # mamba_ssm's MixerModel rescales each residual branch's output projection by 1/sqrt(n_layers).
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(config.n_layers)

    def compile_training(self, backend: str = "inductor") -> None:
        super().compile_training(backend)
        for layer in self.layers:
            layer.mixer.compile_training(backend)

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_tokens: int | None = None
    ) -> SSMState:
        mixers = [layer.mixer for layer in self.layers]
        return SSMState(
            conv=[torch.zeros(batch_size, m.d_inner, m.d_conv, device=device, dtype=dtype) for m in mixers],
            ssm=[
                torch.zeros(batch_size, m.d_inner, m.d_state, device=device, dtype=torch.promote_types(dtype, torch.float32))
                for m in mixers
            ],
            length=0,
        )

    def scan(self, h: Tensor, keep_history: bool = False, ends: Tensor | None = None) -> SSMState:
        conv, ssm, history = [], [], []
        for layer in self.layers:
            out, conv_state, ssm_state, layer_history = layer.mixer(layer.norm(h), self.scan_backend, keep_history, ends)
            h = h + out
            conv.append(conv_state)
            ssm.append(ssm_state)
            history.append(layer_history)
        return SSMState(conv, ssm, h.shape[1], history if keep_history else None, ends)

    def step(self, state: SSMState, h: Tensor) -> SSMState:
        conv, ssm = [], []
        for i, layer in enumerate(self.layers):
            out, conv_state, ssm_state = layer.mixer.step(layer.norm(h), state.conv[i], state.ssm[i])
            h = h + out
            conv.append(conv_state)
            ssm.append(ssm_state)
        return SSMState(conv, ssm, state.length + 1)

    def read(
        self, state: SSMState, hq: Tensor, with_rows: bool = False, query_end: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor] | None]:
        """With query_end (Q,) (token counts, all in ``state.ends``), each query is read from the state at
        its own boundary. Rows are then given only for queries whose boundary is the stream's end; the
        others' rows are zero (exact rows at every boundary would need the stream's keys relative to each
        boundary: K times the largest tensor of a step). ``selectivity_kl`` skips zero rows."""
        if with_rows and state.history is None:
            raise ValueError("rows need a state from scan(..., keep_history=True)")
        if (query_end is None) != (state.ends is None):
            raise ValueError("query_end needs a state from scan(..., ends=...) and the other way round")
        slot = None if query_end is None or state.ends is None else torch.searchsorted(state.ends, query_end)
        rows: list[Tensor] = []
        h = hq  # (B, Q, D): each query is one more step from the same state
        for i, layer in enumerate(self.layers):
            history = state.history[i] if with_rows and state.history is not None else None
            conv, ssm = (state.conv[i], state.ssm[i]) if slot is None else (state.conv[i][:, slot], state.ssm[i][:, slot])
            out, layer_rows = layer.mixer.read(layer.norm(h), conv, ssm, history)
            if layer_rows is not None:
                if query_end is not None:
                    layer_rows = layer_rows * (query_end == state.length).to(layer_rows.dtype)[None, :, None]
                rows.append(layer_rows)
            h = h + out
        return h, rows if with_rows else None
