"""The fast training paths against references written from the equations, on the CPU (issue 15).

- The last state read by probe tokens (``scan.scan_with_state_probes``, Mamba's CUDA training path with
  mamba_ssm's scan standing in for ``ungated_loop`` here) equals the recurrence's last state, and its
  gradients equal those of the reference scan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mclstudio.learners.scan import PROBE_DT, scan_with_state_probes, selective_scan_reference


def ungated_loop(u, delta, A, B, C, D, delta_bias):
    """Mamba-1's discretised recurrence, token by token, in the input's dtype, without the gate:
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t + D u_t, dt_t = softplus(delta_t + bias).
    u, delta: (batch, d, L); A: (d, N); B, C: (batch, N, L) -> y (batch, d, L)."""
    dt = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def scan_inputs(batch=2, d=3, N=4, L=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, d, L, generator=g, dtype=torch.float64),
        delta=torch.randn(batch, d, L, generator=g, dtype=torch.float64),
        A=-torch.rand(d, N, generator=g, dtype=torch.float64) * 2 - 0.1,
        B=torch.randn(batch, N, L, generator=g, dtype=torch.float64),
        C=torch.randn(batch, N, L, generator=g, dtype=torch.float64),
        D=torch.randn(d, generator=g, dtype=torch.float64),
        z=torch.randn(batch, d, L, generator=g, dtype=torch.float64),
        delta_bias=torch.randn(d, generator=g, dtype=torch.float64),
    )


def test_state_probes_give_the_last_state_and_its_gradients():
    inputs = scan_inputs()
    ref = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    probed = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y_ref, last_ref = selective_scan_reference(*ref.values())
    # The probes run in float32 (as on the GPU): compare at float32 precision.
    y, last = scan_with_state_probes(lambda *a: ungated_loop(*(t.double() for t in a)), *probed.values())
    assert last.shape == last_ref.shape == (2, 3, 4)
    torch.testing.assert_close(last.double(), last_ref.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), y_ref.double(), rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    w_y, w_last = torch.randn(y.shape, generator=g, dtype=torch.float64), torch.randn(last.shape, generator=g, dtype=torch.float64)
    ((y_ref * w_y).sum() + (last_ref * w_last).sum()).backward()
    ((y.double() * w_y).sum() + (last.double() * w_last).sum()).backward()
    for name in inputs:
        torch.testing.assert_close(probed[name].grad, ref[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_probe_token_has_a_zero_step_for_any_learned_bias():
    """softplus(PROBE_DT + bias) is exactly 0 in float32 (so the decay is exactly 1 and the drive exactly
    0) for biases far beyond what dt_proj learns (its init puts softplus(bias) in [1e-3, 0.1])."""
    bias = torch.tensor([-30.0, 0.0, 5.0, 100.0])
    assert torch.equal(F.softplus(torch.full((4,), PROBE_DT) + bias), torch.zeros(4))
