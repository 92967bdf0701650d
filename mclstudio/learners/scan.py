"""The selective scan of Mamba-1, in one place.

h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state index n)
y_t = C_t . h_t + D * u_t, then gated by silu(z_t)

``selective_scan`` runs the whole sequence: on CUDA it uses mamba_ssm's fused kernel when that package
imports, otherwise the reference loop below (float32, any device). ``selective_step`` advances one token,
for streaming. Shapes follow mamba_ssm: channels before time.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mclstudio.learners.hidden_attention import stream_keys



def _import_cuda_scan() -> tuple[Callable[..., Any] | None, str]:
    """mamba_ssm's fused selective_scan_fn, or None and the reason it is missing.

    mamba_ssm's package __init__ also imports its language-model code, which breaks with some
    transformers releases (5.x removed names it imports). The scan needs none of that, so when the
    normal import fails for such a reason we import the ops module with the package body skipped.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn, ""
    except ModuleNotFoundError as exc:
        if exc.name in ("mamba_ssm", "selective_scan_cuda"):
            return None, f"{exc.name} is not installed"
        first_error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a build whose extension fails to load, or a broken dependency
        first_error = f"{type(exc).__name__}: {exc}"
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        return None, first_error
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        del sys.modules[name]
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = package
    try:
        module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        return module.selective_scan_fn, ""
    except Exception as exc:
        del sys.modules["mamba_ssm"]
        return None, f"{first_error}; without the package body: {type(exc).__name__}: {exc}"


_cuda_selective_scan, CUDA_SCAN_IMPORT_ERROR = _import_cuda_scan()

ScanBackend = Literal["auto", "reference", "cuda"]
SCAN_CHUNK = 64


def cuda_scan_available() -> bool:
    """True when mamba_ssm's fused selective scan imported and a GPU is present."""
    return _cuda_selective_scan is not None and torch.cuda.is_available()


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    z: Tensor,
    delta_bias: Tensor,
    backend: ScanBackend = "auto",
    keys: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Scan a whole sequence; delta goes through softplus(delta + delta_bias).

    u, delta, z: (batch, d_inner, L); A: (d_inner, N) (negative); B, C: (batch, N, L);
    D, delta_bias: (d_inner,). keys: the stream's hidden-attention keys if the caller has them
    (``hidden_attention.stream_keys``), reused by the CUDA path for a differentiable last state.
    Returns y: (batch, d_inner, L) in u's dtype and the last state (batch, d_inner, N) in float32.
    """
    use_cuda = backend == "cuda" or (backend == "auto" and u.is_cuda and _cuda_selective_scan is not None)
    if use_cuda:
        if _cuda_selective_scan is None:
            raise RuntimeError(f"the CUDA selective scan is unavailable ({CUDA_SCAN_IMPORT_ERROR}); "
                               "pip install 'mclstudio[cuda]' on a machine with nvcc")
        y, last_state = _cuda_selective_scan(
            u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
            D.float(), z=z.contiguous(), delta_bias=delta_bias.float(), delta_softplus=True,
            return_last_state=True,
        )
        if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, delta_bias)):
            # mamba_ssm's backward ignores the gradient of last_state, and our queries are read from
            # it: rebuild the same state differentiably as sum_j H_j * u_j (see hidden_attention).
            if keys is None:
                keys = stream_keys(F.softplus(delta.float() + delta_bias.float()[:, None]), A, B)
            last_state = torch.einsum("bldn,bdl->bdn", keys, u.float())
        return y, last_state.float()
    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias)


def _wide(t: Tensor) -> Tensor:
    """At least float32 (float64 stays float64, so tests can check in double precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def selective_scan_reference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor
) -> tuple[Tensor, Tensor]:
    """The scan as a loop over time, in float32. Same arguments and results as ``selective_scan``."""
    dtype_in = u.dtype
    u, z, B, C = _wide(u), _wide(z), _wide(B), _wide(C)
    delta = F.softplus(_wide(delta) + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    # What does not depend on the state is computed for a chunk of steps at once: (batch, d_inner, T, N).
    # Chunks bound that memory on long streams (a whole 1,000-token stream would need gigabytes).
    for start in range(0, u.shape[2], SCAN_CHUNK):
        t_slice = slice(start, start + SCAN_CHUNK)
        decay = torch.exp(delta[:, :, t_slice].unsqueeze(-1) * A[:, None, :])
        drive = (delta[:, :, t_slice] * u[:, :, t_slice]).unsqueeze(-1) * B[:, :, t_slice].transpose(1, 2).unsqueeze(1)
        hs = []
        for t in range(decay.shape[2]):  # the only sequential part: one fused multiply-add per token
            h = torch.addcmul(drive[:, :, t], decay[:, :, t], h)
            hs.append(h)
        # the readout of the whole chunk in one contraction (one op per chunk, not one per token)
        ys.append(torch.einsum("bdtn,bnt->bdt", torch.stack(hs, dim=2), C[:, :, t_slice]))
    y = torch.cat(ys, dim=2) + D[:, None] * u
    y = y * F.silu(z)
    return y.to(dtype_in), h


def selective_step(
    state: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor
) -> tuple[Tensor, Tensor]:
    """One token of the scan, for any leading batch dims (...), broadcasting the state against them.

    state: (..., d_inner, N) float32; u, delta (already softplus-ed), z: (..., d_inner);
    A: (d_inner, N); B, C: (..., N); D: (d_inner,).
    Returns y: (..., d_inner) in u's dtype and the new state (..., d_inner, N) in float32.
    """
    delta_f, u_f = _wide(delta), _wide(u)
    decay = torch.exp(delta_f.unsqueeze(-1) * A)
    new_state = state * decay + (delta_f * u_f).unsqueeze(-1) * _wide(B).unsqueeze(-2)
    y = torch.einsum("...dn,...n->...d", new_state, _wide(C)) + D * u_f
    y = y * F.silu(_wide(z))
    return y.to(u.dtype), new_state
