"""Longhorn as a continual learner (Liu et al., "Longhorn: State Space Models are Amortized Online
Learners", 2024): Mamba's block, with the state update derived from online associative recall.

Each channel d keeps a memory row s_d in R^N that should recall the input u_d from the key k_t. At every
token it takes the closed-form step of

    s_t = argmin_s ||s - s_{t-1}||^2 + beta_t[d] * (s . k_t - u_t[d])^2

which is s_t = (I - eps k k^T) s_{t-1} + eps u k with eps = beta / (1 + beta |k|^2). Like the paper we keep
the diagonal of k k^T so channels and state indices stay independent (a diagonal scan):

    h_t[d, n] = (1 - eps_t[d] k_t[n]^2) h_{t-1}[d, n] + eps_t[d] u_t[d] k_t[n]

Forgetting is key-dependent (a state index decays only as much as the key writes to it) and there is no
A matrix. beta = sigmoid(dt_proj(dt)) in (0, 1) is the per-channel learning rate; the key k is Mamba's B
and the read-out query is Mamba's C. Since beta k_n^2 <= beta |k|^2, the decay lies in (0, 1]: stable
for any input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from mclstudio.learners.scan import Transition, widen
from mclstudio.learners.ssm import SelectiveMixer, SSMConfig, SSMLearner


@dataclass
class LonghornConfig(SSMConfig):
    """Longhorn hyper-parameters: Mamba's block sizes (see ``SSMConfig``); d_state is the key size."""

    model: ClassVar[str] = "longhorn"


def log1p_nonnegative(x: Tensor) -> Tensor:
    """log(1 + x) for x >= 0, accurate for small x. On the CPU torch's log1p runs element by element (12x
    slower than log here, a quarter of the studio's time with Longhorn loaded), so there it is Goldberg's
    identity log1p(x) = log(u) * x / (u - 1) with u = 1 + x (exact to a few ulps; x itself where u rounds
    to 1); elsewhere torch.log1p."""
    if x.device.type != "cpu":
        return torch.log1p(x)
    u = 1 + x
    d = u - 1
    tiny = d == 0
    return torch.where(tiny, x, torch.log(u) * (x / torch.where(tiny, torch.ones_like(d), d)))


def longhorn_transition(beta: Tensor, k: Tensor) -> Transition:
    """The online-recall step as a Transition. beta: (..., d_inner) in (0, 1); k: (..., N).

    log(1 - eps k_n^2) is computed as log1p(beta (|k|^2 - k_n^2)) - log1p(beta |k|^2), the same value
    without the cancellation of 1 - eps k_n^2 when one key index dominates.
    """
    beta, k = widen(beta), widen(k)
    k2 = k * k
    norm2 = k2.sum(-1, keepdim=True)  # (..., 1)
    b = beta.unsqueeze(-1)  # (..., d_inner, 1)
    log_decay = log1p_nonnegative(b * (norm2.unsqueeze(-2) - k2.unsqueeze(-2))) - log1p_nonnegative(b * norm2.unsqueeze(-2))
    eps = beta / (1 + beta * norm2)
    return Transition(log_decay, eps, k)


class LonghornMixer(SelectiveMixer):
    """Mamba's block with Longhorn's recurrence. Parameters: in_proj, conv1d, x_proj, dt_proj, D, out_proj."""

    def __init__(self, config: SSMConfig) -> None:
        super().__init__(config)
        self.__dict__["_compiled_transition"] = None  # kept out of the module tree (``compile_training``)

    def compile_training(self, backend: str = "inductor") -> None:
        """Under autograd, the transition through torch.compile: its (B, L, d_inner, N) log-decay and the
        backward of its log1p's fused into a few passes instead of about twenty."""
        # dynamic: the stream, its chunks and the queries come in many lengths
        self.__dict__["_compiled_transition"] = torch.compile(longhorn_transition, backend=backend, dynamic=True)

    def transition(self, dt: Tensor, B: Tensor) -> Transition:
        beta = torch.sigmoid(dt + self.dt_proj.bias)
        compiled = self.__dict__["_compiled_transition"]
        if compiled is not None and torch.is_grad_enabled():  # contiguous: one stride pattern, one graph
            return compiled(beta.contiguous(), B.contiguous())
        return longhorn_transition(beta, B)


class LonghornLearner(SSMLearner):
    """Stack of Longhorn layers over interleaved x/y tokens."""

    config_class = LonghornConfig
    mixer_class = LonghornMixer
