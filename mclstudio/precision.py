"""The numeric precision learners run at: fp32, or mixed precision in bf16 or fp16.

Mixed precision means ``torch.autocast``, as Halloran et al. (2024) run Mamba in mixed precision:
the weights stay float32, and matmuls and convolutions (with whatever else autocast's op lists put
in the low type on the device) compute in bf16 or fp16. Three things stay float32 whatever the
precision, because they accumulate over the whole stream and rounding there would compound:
Mamba's selective scan and its SSM state, the kernel attentions' S and z (with their features), and
the association rows. Memory that only stores activations (the Transformer's KV cache, Mamba's
convolution buffer) takes the low type, as in the parallel path. docs/precision.md says more.

Autocast works on the CPU and on CUDA, with bf16 and fp16 on both in recent torch; its op lists differ
between the two devices (on the CPU, GroupNorm runs in the low type; on CUDA in float32), so the
same precision is not bit-identical across devices.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

import warnings

import torch
import torch.nn.functional as F

from mclstudio.choices import PRECISIONS
from mclstudio.formatting import clip, error_line

# Under autocast, RMSNorm (Mamba's) gets a low-precision input and a float32 weight; torch warns once that
# it falls back from its fused kernel to the composite one (same result). Noise for a command's user.
warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight", category=UserWarning)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``precision`` if it can run on ``device``; else ValueError with a one-line reason."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "fp32":
        reason = _unsupported(precision, str(torch.device(device)))
        if reason:
            raise ValueError(reason)
    return precision


@lru_cache(maxsize=None)
def _unsupported(precision: str, device: str) -> str:
    """Why ``precision`` cannot run on ``device`` ("" when it can): autocast must exist there and the
    operations every learner uses (conv, linear, group norm, attention) must run under it."""
    dev = torch.device(device)
    where = "the CPU" if dev.type == "cpu" else str(dev)
    if not torch.amp.is_autocast_available(dev.type):
        return f"{precision} needs torch.autocast, which torch {torch.__version__} lacks on {where}"
    if dev.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return f"{precision} is not supported by {torch.cuda.get_device_name(dev)}; use fp16 or fp32"
    try:
        with torch.no_grad(), autocast(precision, dev):
            x = F.group_norm(F.conv2d(torch.ones(1, 1, 4, 4, device=dev), torch.ones(2, 1, 3, 3, device=dev), padding=1), 2)
            q = F.linear(x.flatten(1).view(1, 1, 2, 16), torch.ones(8, 16, device=dev))
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError as exc:
        first = error_line(exc)
        return f"{precision} does not run on {where} with torch {torch.__version__} ({clip(first, 120)})"
    return ""


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager[object]:
    """The context to run a learner in at ``precision`` on ``device``: nothing for fp32, else autocast."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])
