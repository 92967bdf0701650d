"""Mamba as a continual learner (Zhao & Gong, MambaCL): a stack of Mamba-1 blocks.

``MambaMixer`` has mamba_ssm.modules.mamba_simple.Mamba's parameter names, shapes and initialisation
(in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), and the stack is laid out like mamba_ssm's
MixerModel (``layers.{i}.norm``, ``layers.{i}.mixer``, ``norm_f``), so state dicts carry over. The block
around the SSM is shared with Longhorn (``ssm.py``); what is Mamba's own is the transition
exp(delta * A) with a learned A, and the fused CUDA scan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mclstudio.learners.hidden_attention import normalised_rows
from mclstudio.learners.kernels.mamba_read import fused_read_supported, mamba_read
from mclstudio.learners.kernels import fused_states_supported
from mclstudio.learners.kernels.hidden_rows import mamba_rows
from mclstudio.learners.kernels.query_recall import fused_recall_supported, mamba_recall
from mclstudio.learners.scan import ScanBackend, Transition, mamba_transition, read_output, selective_scan
from mclstudio.learners.ssm import SelectiveMixer, SSMConfig, SSMLearner


@dataclass
class MambaConfig(SSMConfig):
    """Mamba-1 hyper-parameters, with mamba_ssm's defaults (see ``SSMConfig``)."""

    model: ClassVar[str] = "mamba"


class MambaMixer(SelectiveMixer):
    """One Mamba-1 mixer (selective SSM with gating). (B, L, d_model) -> (B, L, d_model)."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__(config)
        # A = -(1..d_state) per channel (S4D-real), as mamba_ssm initialises it.
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))

    @property
    def A(self) -> Tensor:
        """(d_inner, d_state), negative."""
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def transition(self, dt: Tensor, B: Tensor) -> Transition:
        return mamba_transition(F.softplus(dt + self.dt_proj.bias), self.A, B)

    def scan_sequence(
        self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, z: Tensor, backend: ScanBackend, ends: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return selective_scan(x, dt, self.A, B, C, self.D, z, self.dt_proj.bias, backend, ends)

    def association_rows(
        self, history: tuple[Tensor, Tensor], dt: Tensor, C: Tensor, query_move: Callable[[], Transition]
    ) -> Tensor:
        """On CUDA, the rows by ``kernels.hidden_rows`` with Mamba's keys and the queries' weights made
        from (L, d), (Q, d) and (., N) inputs (the generic fused rows first form the (B, L, d_inner, N)
        log-decay)."""
        if C.is_cuda and fused_states_supported(C.shape[-1]):
            stream_dt, B = history
            return normalised_rows(mamba_rows(self._delta(dt), C, self._delta(stream_dt), B, self.A))
        return super().association_rows(history, dt, C, query_move)

    def read_queries(
        self, ssm_state: Tensor, x: Tensor, z: Tensor, dt: Tensor, B: Tensor, C: Tensor,
        query_move: Callable[[], Transition],
    ) -> Tensor:
        """On CUDA: in inference the whole read as one kernel (``kernels.mamba_read``); in training what
        the queries recall of the state by ``kernels.query_recall`` (forward and backward), the rest
        (``scan.read_output``) in PyTorch."""
        if x.is_cuda and not torch.is_grad_enabled() and fused_read_supported(ssm_state):
            return mamba_read(ssm_state, self.A, self.D, self.dt_proj.bias, x, z, dt, B, C)
        if x.is_cuda and fused_recall_supported(ssm_state):
            delta = self._delta(dt)
            return read_output(mamba_recall(ssm_state, delta, C, self.A), x, z, C, self.D, delta, B)
        return super().read_queries(ssm_state, x, z, dt, B, C, query_move)

    def _delta(self, dt: Tensor) -> Tensor:
        """Step sizes softplus(dt + dt_proj's bias) in float32; dt before the bias (..., d_inner)."""
        return F.softplus(dt.float() + self.dt_proj.bias.float())


class MambaLearner(SSMLearner):
    """Stack of Mamba-1 layers over interleaved x/y tokens."""

    config_class = MambaConfig
    mixer_class = MambaMixer
