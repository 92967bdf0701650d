"""Mamba as a continual learner (Zhao & Gong, MambaCL): a stack of Mamba-1 blocks.

``MambaMixer`` has mamba_ssm.modules.mamba_simple.Mamba's parameter names, shapes and initialisation
(in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), and the stack is laid out like mamba_ssm's
MixerModel (``layers.{i}.norm``, ``layers.{i}.mixer``, ``norm_f``), so state dicts carry over. Streaming
keeps, per layer, the last d_conv inputs of the convolution and the (d_inner, d_state) SSM state: O(1)
in the stream's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mclstudio.learners.base import Learner, LearnerConfig, State
from mclstudio.learners.hidden_attention import query_rows, stream_keys
from mclstudio.learners.scan import ScanBackend, selective_scan, selective_step


@dataclass
class MambaConfig(LearnerConfig):
    """Mamba-1 hyper-parameters, with mamba_ssm's defaults. dt_rank 0 means ceil(d_model / 16)."""

    model: ClassVar[str] = "mamba"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4


@dataclass
class MambaState(State):
    """conv[l]: (B, d_inner, d_conv) last inputs of layer l's convolution; ssm[l]: (B, d_inner, d_state).
    keys[l]: the stream's hidden-attention keys (B, L, d_inner, d_state), kept only for rows."""

    conv: list[Tensor]
    ssm: list[Tensor]
    length: int
    keys: list[Tensor] | None = None

    def tensors(self) -> list[Tensor]:
        return [*self.conv, *self.ssm]

    def layer_norms(self) -> Tensor:
        # The SSM state is the memory; the conv buffer only holds the last few inputs.
        return torch.stack([s.flatten(1).norm(dim=1) for s in self.ssm], dim=1)


class MambaMixer(nn.Module):
    """One Mamba-1 mixer (selective SSM with gating). (B, L, d_model) -> (B, L, d_model)."""

    def __init__(self, config: MambaConfig) -> None:
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

        # mamba_ssm's initialisation: dt_proj keeps the variance, and its bias puts softplus(bias)
        # log-uniformly in [dt_min, dt_max]; A = -(1..d_state) per channel (S4D-real).
        dt_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        log_lo, log_hi = math.log(config.dt_min), math.log(config.dt_max)
        dt = torch.exp(torch.rand(self.d_inner) * (log_hi - log_lo) + log_lo).clamp(min=config.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    @property
    def A(self) -> Tensor:
        """(d_inner, d_state), negative."""
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (..., d_inner) post-conv -> dt before bias (..., d_inner), B (..., N), C (..., N)."""
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(
        self, h: Tensor, backend: ScanBackend = "auto", keep_keys: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Whole sequence. h: (B, L, d_model) -> out (B, L, d_model), conv state (B, d_inner, d_conv),
        SSM state (B, d_inner, d_state) and, if keep_keys, hidden-attention keys (B, L, d_inner, d_state)."""
        L = h.shape[1]
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        conv_state = F.pad(x, (self.d_conv - L, 0)) if L < self.d_conv else x[..., -self.d_conv :]
        x = F.silu(self.conv1d(x)[..., :L])
        dt, B, C = self._ssm_inputs(x.transpose(1, 2))
        dt, B, C = dt.transpose(1, 2), B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        keys = None
        if keep_keys:
            keys = stream_keys(F.softplus(dt.float() + self.dt_proj.bias[:, None]), self.A, B)
        y, ssm_state = selective_scan(x, dt, self.A, B, C, self.D, z, self.dt_proj.bias, backend, keys)
        return self.out_proj(y.transpose(1, 2)), conv_state.contiguous(), ssm_state, keys

    def step(
        self, h: Tensor, conv_state: Tensor, ssm_state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One token for any leading dims (...); states broadcast against them.

        h: (..., d_model); conv_state (..., d_inner, d_conv); ssm_state (..., d_inner, d_state).
        Returns out (..., d_model), new conv and SSM states, and the token's C (..., N) and
        delta (..., d_inner) for hidden attention. The given states are not modified.
        """
        x, z = self.in_proj(h).chunk(2, dim=-1)
        lead = x.shape[:-1]
        conv_state = torch.cat(
            [conv_state[..., 1:].expand(*lead, self.d_inner, self.d_conv - 1), x.unsqueeze(-1)], dim=-1
        )
        x = F.silu((conv_state * self.conv1d.weight.squeeze(1)).sum(-1) + self.conv1d.bias)
        dt, B, C = self._ssm_inputs(x)
        delta = F.softplus(dt + self.dt_proj.bias)
        y, ssm_state = selective_step(ssm_state, x, delta, self.A, B, C, self.D, z)
        return self.out_proj(y), conv_state, ssm_state, C, delta


class MambaLayer(nn.Module):
    """Pre-norm residual block around a mixer, as mamba_ssm's Block: h + mixer(norm(h))."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=1e-5)
        self.mixer = MambaMixer(config)


class MambaLearner(Learner):
    """Stack of Mamba-1 layers over interleaved x/y tokens; no positional encoding (the scan is ordered)."""

    config_class = MambaConfig

    def __init__(self, config: MambaConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(MambaLayer(config) for _ in range(config.n_layers))
        self.scan_backend: ScanBackend = "auto"
        # mamba_ssm's MixerModel rescales each residual branch's output projection by 1/sqrt(n_layers).
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(config.n_layers)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        mixers = [layer.mixer for layer in self.layers]
        return MambaState(
            conv=[torch.zeros(batch_size, m.d_inner, m.d_conv, device=device, dtype=dtype) for m in mixers],
            ssm=[
                torch.zeros(batch_size, m.d_inner, m.d_state, device=device, dtype=torch.promote_types(dtype, torch.float32))
                for m in mixers
            ],
            length=0,
        )

    def scan(self, h: Tensor, keep_history: bool = False) -> MambaState:
        conv, ssm, keys = [], [], []
        for layer in self.layers:
            out, conv_state, ssm_state, layer_keys = layer.mixer(
                layer.norm(h), self.scan_backend, keep_keys=keep_history
            )
            h = h + out
            conv.append(conv_state)
            ssm.append(ssm_state)
            keys.append(layer_keys)
        return MambaState(conv, ssm, h.shape[1], keys if keep_history else None)

    def step(self, state: MambaState, h: Tensor) -> MambaState:
        conv, ssm = [], []
        for i, layer in enumerate(self.layers):
            out, conv_state, ssm_state, _, _ = layer.mixer.step(layer.norm(h), state.conv[i], state.ssm[i])
            h = h + out
            conv.append(conv_state)
            ssm.append(ssm_state)
        return MambaState(conv, ssm, state.length + 1)

    def read(
        self, state: MambaState, hq: Tensor, with_rows: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        if with_rows and state.keys is None:
            raise ValueError("rows need a state from scan(..., keep_history=True)")
        rows: list[Tensor] = []
        h = hq  # (B, Q, D): each query is one more step from the same state
        for i, layer in enumerate(self.layers):
            mixer = layer.mixer
            out, _, _, C, delta = mixer.step(
                layer.norm(h), state.conv[i].unsqueeze(1), state.ssm[i].unsqueeze(1)
            )
            if with_rows:
                assert state.keys is not None
                rows.append(query_rows(C, delta, mixer.A, state.keys[i]))
            h = h + out
        return h, rows if with_rows else None
