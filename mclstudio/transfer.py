"""Host-to-device copies that do not stall the host.

A copy from ordinary (pageable) host memory to a GPU waits for every kernel queued before it: in a
training step, each small index tensor made on the host and copied over made the host wait for the GPU
to finish, then left the GPU idle while the host queued the next kernels. Through pinned memory the
copy is queued like a kernel and the host goes on.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """t on ``device``; a CPU tensor bound for a CUDA device goes through pinned memory as a non-blocking
    copy (the pinned buffer is kept until the copy is done by torch's caching host allocator)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
