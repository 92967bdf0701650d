"""Runs the fused Triton kernels on the CPU through Triton's interpreter and prints, as JSON, how far each
is from the PyTorch code it replaces. test_kernels.py runs this in a subprocess, because
TRITON_INTERPRET must be set before Triton compiles anything:

    TRITON_INTERPRET=1 python tests/triton_interpreted.py
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"

from mclstudio.learners.encoders import ConvEncoder  # noqa: E402
from mclstudio.learners.kernels.conv_block import conv_gn_relu_pool, fused_block_supported  # noqa: E402
from mclstudio.learners.kernels.conv_token import conv_token  # noqa: E402
from mclstudio.learners.kernels.mamba_read import mamba_read  # noqa: E402
from mclstudio.learners.kernels.hidden_rows import mamba_rows, transition_rows  # noqa: E402
from mclstudio.learners.longhorn import longhorn_transition  # noqa: E402
from mclstudio.learners.kernels.diagonal_scan import fused_diagonal_scan  # noqa: E402
from mclstudio.learners.hidden_attention import stream_keys  # noqa: E402
from mclstudio.learners.mamba import MambaConfig, MambaMixer  # noqa: E402
from mclstudio.learners.kernels.query_recall import mamba_recall  # noqa: E402
from mclstudio.learners.scan import diagonal_read, mamba_transition, query_weights  # noqa: E402


def block_errors() -> dict[str, float]:
    """conv -> GroupNorm -> ReLU -> MaxPool as one op vs the modules: with the conv inside the kernel (up to
    4 input channels), fewer than 16 channels (padded tiles) and with cuDNN's conv (more input channels;
    channels not a power of 2, so padding channels form their own groups)."""
    errors = {}
    for c_in, c_out, groups, H, W in [(1, 64, 8, 32, 32), (3, 16, 4, 10, 6), (2, 8, 8, 4, 4), (8, 32, 8, 8, 6),
                                      (16, 16, 4, 4, 4), (24, 40, 5, 4, 8)]:
        conv, norm = nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out)
        nn.init.normal_(norm.weight)  # negative scales too: max-pooling must come after the affine map
        nn.init.normal_(norm.bias)
        x = torch.randn(3, c_in, H, W) + 0.5
        with torch.no_grad():
            expected = F.max_pool2d(torch.relu(norm(conv(x))), 2)
            got = conv_gn_relu_pool(x, conv.weight, conv.bias, norm.weight, norm.bias, groups, norm.eps, torch.float32)
        key = f"{c_in}x{H}x{W}->{c_out}/{groups}"
        errors[f"block {key}"] = (got - expected).abs().max().item()
        errors[f"channels-last {key}"] = float(not got.is_contiguous(memory_format=torch.channels_last))
    return errors


def encoder_errors() -> dict[str, float]:
    """A whole ConvEncoder's fused feature path vs its modules, and one the kernels must decline."""
    torch.manual_seed(1)
    errors = {}
    for in_channels, channels, side in [(1, 16, 16), (3, 8, 8), (1, 16, 32)]:
        encoder = ConvEncoder(in_channels, channels, 12, side)
        x = torch.rand(4, in_channels, side, side)
        with torch.no_grad():
            errors[f"encoder {in_channels}x{side}x{side} c{channels}"] = (
                encoder._fused_features(x) - encoder.features(x)
            ).abs().max().item()
    errors["declines odd sides"] = float(fused_block_supported(torch.zeros(1, 1, 5, 6), 8, 16))
    errors["declines 3 channels a group"] = float(fused_block_supported(torch.zeros(1, 1, 8, 8), 4, 12))
    return errors


def read_errors() -> dict[str, float]:
    """Mamba's fused query read vs diagonal_read, with strided views (as in the model), d_inner not a power
    of 2, more queries than one program takes, and a dt past softplus's threshold."""
    torch.manual_seed(2)
    errors = {}
    for batch, Q, d_inner, N in [(2, 37, 40, 16), (1, 3, 64, 4)]:
        state = torch.randn(batch, d_inner, N)
        A = -torch.rand(d_inner, N) * 4
        D, dt_bias = torch.randn(d_inner), torch.randn(d_inner)
        u, z = torch.randn(batch, Q, 2 * d_inner).chunk(2, dim=-1)
        dt = torch.randn(batch, Q, d_inner) * 3
        dt[0, 0, :5] = 25.0
        BC = torch.randn(batch, Q, 3 + 2 * N)
        B, C = BC[..., 3 : 3 + N], BC[..., 3 + N :]
        expected = diagonal_read(state, u, z, C, D, mamba_transition(F.softplus(dt + dt_bias), A, B))
        got = mamba_read(state, A, D, dt_bias, u, z, dt, B, C)
        errors[f"read b{batch} q{Q} d{d_inner} n{N}"] = ((got - expected).abs().max() / expected.abs().max()).item()
    return errors


def conv_token_errors() -> dict[str, float]:
    """The queries' causal conv vs SelectiveMixer._conv_token: the conv state channel-major (as the stream
    leaves it), queries a strided half of in_proj's output, d_inner and Q not multiples of the tiles;
    float32 and bfloat16 queries."""
    torch.manual_seed(3)
    errors = {}
    for batch, Q, d_model, dtype in [(2, 37, 20, torch.float32), (3, 5, 8, torch.bfloat16)]:
        mixer = MambaMixer(MambaConfig(d_model=d_model))
        nn.init.normal_(mixer.conv1d.bias)
        d_inner, K = mixer.d_inner, mixer.d_conv
        conv_state = torch.randn(d_inner, batch, K).permute(1, 0, 2)
        x = torch.randn(batch, Q, 2 * d_inner).to(dtype)[..., :d_inner]
        with torch.no_grad():
            expected = mixer._conv_token(conv_state.unsqueeze(1), x)
            got = conv_token(conv_state, x, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias)
        key = f"conv token b{batch} q{Q} d{d_inner} {str(dtype).split('.')[-1]}"
        errors[key] = ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
        errors[f"dtype {key}"] = float(got.dtype != dtype or expected.dtype != dtype)
    return errors


def rows_errors() -> dict[str, float]:
    """The fused hidden-attention rows and their gradients vs the PyTorch einsum of query_weights over
    stream_keys, with Mamba's keys (gradients of the queries' delta and C, the stream's delta and B, and
    A) and Longhorn's (the queries' and the stream's beta, C, B): Q, L and d_inner not multiples of the
    tiles, N smaller than 16."""
    torch.manual_seed(4)
    errors = {}
    for batch, Q, L, d_inner, N in [(2, 37, 70, 12, 16), (1, 5, 9, 8, 4)]:
        delta_q = (torch.rand(batch, Q, d_inner) * 0.5).requires_grad_()
        C = torch.randn(batch, Q, N, requires_grad=True)
        delta = (torch.rand(batch, L, d_inner) * 0.5).requires_grad_()
        B = torch.randn(batch, L, N, requires_grad=True)
        A = (-torch.rand(d_inner, N) * 3 - 0.1).requires_grad_()
        weights = torch.randn(batch, Q, L)
        inputs = {"delta_q": delta_q, "C": C, "delta": delta, "B": B, "A": A}
        G = query_weights(C, mamba_transition(delta_q, A, C).log_decay)
        expected = torch.einsum("bqdn,bldn->bql", G, stream_keys(mamba_transition(delta, A, B))) / d_inner
        expected_grads = torch.autograd.grad((expected * weights).sum(), list(inputs.values()))
        got = mamba_rows(delta_q, C, delta, B, A)
        got_grads = torch.autograd.grad((got * weights).sum(), list(inputs.values()))
        key = f"rows b{batch} q{Q} l{L} d{d_inner} n{N}"
        errors[key] = ((got - expected).abs().max() / expected.abs().max()).item()
        for name, g, e in zip(inputs, got_grads, expected_grads):
            errors[f"{key} grad {name}"] = ((g - e).abs().max() / e.abs().max()).item()
        # Longhorn's transition: the log-decay per state entry (beta in (0, 1) from delta's role)
        beta_q, beta = torch.sigmoid(delta_q * 4 - 1), torch.sigmoid(delta * 4 - 1)
        longhorn = {"beta_q": beta_q, "C": C, "beta": beta, "B": B}
        G = query_weights(C, longhorn_transition(beta_q, C).log_decay)
        expected = torch.einsum("bqdn,bldn->bql", G, stream_keys(longhorn_transition(beta, B))) / d_inner
        expected_grads = torch.autograd.grad((expected * weights).sum(), list(longhorn.values()))
        got = transition_rows(longhorn_transition(beta_q, C), C, longhorn_transition(beta, B))
        got_grads = torch.autograd.grad((got * weights).sum(), list(longhorn.values()))
        key = f"longhorn rows b{batch} q{Q} l{L} d{d_inner} n{N}"
        errors[key] = ((got - expected).abs().max() / expected.abs().max()).item()
        for name, g, e in zip(longhorn, got_grads, expected_grads):
            errors[f"{key} grad {name}"] = ((g - e).abs().max() / e.abs().max()).item()
    return errors


def recall_errors() -> dict[str, float]:
    """What Mamba's queries recall of the state (kernels.query_recall) and its gradients (h, delta, C, A)
    vs the PyTorch product of query_weights and h, with one state for all queries and one per query;
    Q and d_inner not multiples of the tiles, N smaller than 16."""
    torch.manual_seed(6)
    errors = {}
    for batch, Q, d_inner, N in [(2, 37, 20, 16), (1, 5, 8, 4)]:
        for per_query in (False, True):
            h = torch.randn(batch, *((Q,) if per_query else ()), d_inner, N, requires_grad=True)
            delta = (torch.rand(batch, Q, d_inner) * 0.5).requires_grad_()
            C = torch.randn(batch, Q, N, requires_grad=True)
            A = (-torch.rand(d_inner, N) * 3 - 0.1).requires_grad_()
            weights = torch.randn(batch, Q, d_inner)
            inputs = {"h": h, "delta": delta, "C": C, "A": A}
            G = query_weights(C, mamba_transition(delta, A, C).log_decay)
            expected = (G * (h if per_query else h.unsqueeze(1))).sum(-1)
            expected_grads = torch.autograd.grad((expected * weights).sum(), list(inputs.values()))
            got = mamba_recall(h, delta, C, A)
            got_grads = torch.autograd.grad((got * weights).sum(), list(inputs.values()))
            key = f"recall {'per-query' if per_query else 'shared'} b{batch} q{Q} d{d_inner} n{N}"
            errors[key] = ((got - expected).abs().max() / expected.abs().max()).item()
            for name, g, e in zip(inputs, got_grads, expected_grads):
                errors[f"{key} grad {name}"] = ((g - e).abs().max() / e.abs().max()).item()
    return errors


def diagonal_scan_errors() -> dict[str, float]:
    """The Triton diagonal scan and its gradients (log_decay, rate, key, u, C, D), with gradients on both
    outputs (y and the last state), vs the recurrence token by token in float64; d_inner not a multiple
    of the channel block."""
    torch.manual_seed(5)
    errors = {}
    for batch, L, d_inner, N in [(2, 13, 40, 16), (1, 5, 8, 4)]:
        inputs = {
            "log_decay": -torch.rand(batch, L, d_inner, N) * 2,
            "rate": torch.rand(batch, L, d_inner),
            "key": torch.randn(batch, L, N),
            "u": torch.randn(batch, d_inner, L),
            "C": torch.randn(batch, N, L),
            "D": torch.randn(d_inner),
        }
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        ref = {k: v.double().requires_grad_() for k, v in inputs.items()}
        h = torch.zeros(batch, d_inner, N, dtype=torch.float64)
        ys, hs_list = [], []
        for t in range(L):
            h = torch.exp(ref["log_decay"][:, t]) * h + (ref["rate"][:, t] * ref["u"][:, :, t])[..., None] * ref["key"][:, t, None, :]
            hs_list.append(h)
            ys.append((h * ref["C"][:, None, :, t]).sum(-1) + ref["D"] * ref["u"][:, :, t])
        y_ref, last_ref = torch.stack(ys, dim=-1), h
        w_y, w_last = torch.randn(y_ref.shape, dtype=torch.float64), torch.randn(last_ref.shape, dtype=torch.float64)
        grads_ref = torch.autograd.grad((y_ref * w_y).sum() + (last_ref * w_last).sum(), list(ref.values()), retain_graph=True)
        y, last = fused_diagonal_scan(*leaves.values())
        grads = torch.autograd.grad((y.double() * w_y).sum() + (last.double() * w_last).sum(), list(leaves.values()))
        key = f"diagonal scan b{batch} l{L} d{d_inner} n{N}"
        errors[key] = max(((y.double() - y_ref).abs().max() / y_ref.abs().max()).item(),
                          ((last.double() - last_ref).abs().max() / last_ref.abs().max()).item())
        for name, g, e in zip(inputs, grads, grads_ref):
            errors[f"{key} grad {name}"] = ((g.double() - e).abs().max() / e.abs().max()).item()
        # states kept at boundaries (0 = the empty state, a repeat, the end) and their gradients
        ends = torch.tensor([0, 2, 2, L - 1, L])
        hs_ref = torch.stack([torch.zeros_like(hs_list[0])] + hs_list, dim=1)[:, ends]
        w_ends = torch.randn(hs_ref.shape, dtype=torch.float64)
        grads_ref = torch.autograd.grad((y_ref * w_y).sum() + (hs_ref * w_ends).sum(), list(ref.values()))
        y, at_ends = fused_diagonal_scan(*leaves.values(), ends=ends)
        grads = torch.autograd.grad((y.double() * w_y).sum() + (at_ends.double() * w_ends).sum(), list(leaves.values()))
        errors[f"{key} ends"] = ((at_ends.double() - hs_ref).abs().max() / hs_ref.abs().max()).item()
        for name, g, e in zip(inputs, grads, grads_ref):
            errors[f"{key} ends grad {name}"] = ((g.double() - e).abs().max() / e.abs().max()).item()
    return errors


if __name__ == "__main__":
    torch.manual_seed(0)
    print(json.dumps({**block_errors(), **encoder_errors(), **read_errors(), **conv_token_errors(), **rows_errors(), **recall_errors(),
                      **diagonal_scan_errors()}))
