"""The selective scan of Mamba-1, in one place.

h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state index n)
y_t = C_t . h_t + D * u_t, then gated by silu(z_t)

``selective_scan`` runs the whole sequence: on CUDA it uses mamba_ssm's fused kernel when that package
imports, otherwise the reference loop below (float32, any device). ``selective_step`` advances one token,
for streaming. Shapes follow mamba_ssm: channels before time.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # The CUDA kernel is optional: `pip install mclstudio[cuda]` on a machine with nvcc.
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_selective_scan
except Exception:  # ImportError, or a build whose extension fails to load
    _cuda_selective_scan = None

ScanBackend = Literal["auto", "reference", "cuda"]


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
) -> tuple[Tensor, Tensor]:
    """Scan a whole sequence; delta goes through softplus(delta + delta_bias).

    u, delta, z: (batch, d_inner, L); A: (d_inner, N) (negative); B, C: (batch, N, L);
    D, delta_bias: (d_inner,).
    Returns y: (batch, d_inner, L) in u's dtype and the last state (batch, d_inner, N) in float32.
    """
    use_cuda = backend == "cuda" or (backend == "auto" and u.is_cuda and _cuda_selective_scan is not None)
    if use_cuda:
        if _cuda_selective_scan is None:
            raise RuntimeError("the CUDA selective scan needs mamba_ssm: pip install 'mclstudio[cuda]'")
        y, last_state = _cuda_selective_scan(
            u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
            D.float(), z=z.contiguous(), delta_bias=delta_bias.float(), delta_softplus=True,
            return_last_state=True,
        )
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
    # Everything that does not depend on the state, for all steps at once: (batch, d_inner, L, N).
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2) + D[:, None] * u
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
