"""Devices: the torch device a command's ``--device`` names, and the device a learner lives on."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` (the GPU when there is one, else the CPU), ``cpu`` or ``cuda[:N]`` as a torch.device;
    ValueError with a one-line reason for a CUDA device on a machine without one or an unknown name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None


def learner_device(module: torch.nn.Module) -> torch.device:
    """The device of a learner's (or any module's) parameters: its first parameter's."""
    return next(module.parameters()).device
