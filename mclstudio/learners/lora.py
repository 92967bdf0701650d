"""Low-rank adapters (LoRA, Hu et al. 2021) on a learner's linear maps: parameter-efficient adaptation
of a frozen learner to a new domain (after Halloran et al. 2024, who adapt Mamba's projections).

An adapted weight is W' = W + (alpha / r) B A with A: (r, in) and B: (out, r); W stays frozen, only A and
B train. B starts at zero, so an untrained adapter leaves the learner exactly as it was.

The delta is a ``torch.nn.utils.parametrize`` parametrization of the module's ``weight``, not a wrapper
around its ``forward``: every read of ``weight`` sees W', including the places that read it directly
rather than calling the module (Mamba's ``F.linear(dt, dt_proj.weight)``). peft wraps ``forward`` and
would silently leave such reads unadapted (docs/adapters.md says why we do not use it).

Target groups (module paths are matched by suffix, as peft does):
- sequence model: Mamba-like mixers' ``in_proj``, ``x_proj``, ``out_proj``; attention blocks' fused
  ``attn.qkv`` (q, k and v, sharing A), ``attn.out`` and the feed-forward ``mlp.0``, ``mlp.2``;
- SSM (optional): ``dt_proj``, the low-rank map that makes the step size Delta (A_log and D stay frozen);
- encoder (optional): ``x_encoder.project``, the CNN's final linear map to d_model.
The output head is never adapted: its weight is the label-embedding table (tied), shared with the input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

SEQUENCE_TARGETS = ("in_proj", "x_proj", "out_proj", "attn.qkv", "attn.out", "mlp.0", "mlp.2")
SSM_TARGETS = ("dt_proj",)
ENCODER_TARGETS = ("x_encoder.project",)


class LowRankDelta(nn.Module):
    """The parametrization W -> W + scale * B A of an (out, in) weight; A: (r, in), B: (out, r);
    scale = alpha / r with the r asked for."""

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft and the LoRA paper's code
        self.scale = scale

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A).to(weight.dtype)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def find_targets(model: nn.Module, ssm: bool = False, encoder: bool = False) -> list[str]:
    """Paths of the nn.Linear modules to adapt: the sequence-model group, plus the SSM and encoder
    groups if asked. Raises ValueError (one line) if a group asked for has nothing to adapt."""
    groups = [("sequence-model", SEQUENCE_TARGETS)]
    if ssm:
        groups.append(("SSM", SSM_TARGETS))
    if encoder:
        groups.append(("encoder", ENCODER_TARGETS))
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    targets: list[str] = []
    for group, patterns in groups:
        found = [name for name in linear if any(_matches(name, p) for p in patterns)]
        if not found:
            raise ValueError(f"this learner has no {group} projections to adapt ({', '.join(patterns)})")
        targets += found
    return [name for name in linear if name in set(targets)]  # model order, each once


def add_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> list[nn.Parameter]:
    """Parametrize each target's weight with a fresh LowRankDelta; returns the new (trainable) parameters.
    The caller freezes the rest (``model.requires_grad_(False)`` before this call)."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, not {rank}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, not {alpha}")
    new: list[nn.Parameter] = []
    for name in targets:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name} is not a linear map; LoRA adapts nn.Linear weights only")
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"{name} already carries an adapter")
        out_features, in_features = module.weight.shape
        # A map narrower than r (Mamba's dt_proj reads dt_rank = d_model / 16 inputs) gets full rank instead.
        delta = LowRankDelta(out_features, in_features, min(rank, out_features, in_features), alpha / rank)
        delta.to(module.weight.device)
        parametrize.register_parametrization(module, "weight", delta)
        new += [delta.lora_A, delta.lora_B]
    return new


def _deltas(model: nn.Module) -> dict[str, LowRankDelta]:
    """Module path -> the LowRankDelta on its weight, for every adapted module."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations["weight"]:
                if isinstance(p, LowRankDelta):
                    out[name] = p
    return out


def lora_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' weights, keyed "<module path>.lora_A" / ".lora_B" (on the CPU, detached)."""
    tensors = {}
    for name, delta in _deltas(model).items():
        tensors[f"{name}.lora_A"] = delta.lora_A.detach().cpu()
        tensors[f"{name}.lora_B"] = delta.lora_B.detach().cpu()
    return tensors


def load_lora_tensors(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Copy saved adapter weights into the model's adapters (same targets, same shapes)."""
    deltas = _deltas(model)
    expected = {f"{n}.lora_{m}" for n in deltas for m in "AB"}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"adapter tensors do not match its targets (missing {missing[:2]}, unexpected {extra[:2]})")
    with torch.no_grad():
        for name, delta in deltas.items():
            for which, param in (("A", delta.lora_A), ("B", delta.lora_B)):
                value = tensors[f"{name}.lora_{which}"]
                if value.shape != param.shape:
                    raise ValueError(f"{name}.lora_{which} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
                param.copy_(value)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight (W <- W + scale B A) and drop the parametrizations: the model is a
    plain learner again, with no per-step cost."""
    for name in _deltas(model):
        parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=True)
