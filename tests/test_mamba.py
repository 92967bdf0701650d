"""The Mamba learner: parallel == recurrent, O(1) state, hidden attention, mamba_ssm's parameter layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mclstudio.learners.hidden_attention import hidden_attention_matrix
from mclstudio.learners.mamba import MambaConfig, MambaLearner, MambaMixer
from mclstudio.learners.scan import selective_scan_reference, selective_step
from learner_helpers import inputs, stream_recurrently


def tiny(**overrides) -> MambaLearner:
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=32, n_layers=2, x_shape=(1, 8, 8), y_vocab=10, encoder_channels=8, **overrides)
    return MambaLearner(cfg).eval().double()


def test_parallel_and_recurrent_paths_agree():
    model = tiny()
    sx, sy, qx = inputs()
    parallel = model(sx, sy, qx).logits
    state = stream_recurrently(model, sx, sy)
    torch.testing.assert_close(model.query(state, qx), parallel, rtol=1e-9, atol=1e-9)
    # and the states themselves agree with the parallel scan's final state
    scanned = model.scan(model.embedding.stream(sx, sy))
    for a, b in zip(state.tensors(), scanned.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_query_leaves_state_unchanged_and_queries_are_independent():
    model = tiny()
    sx, sy, qx = inputs()
    state = stream_recurrently(model, sx, sy)
    before = [t.clone() for t in state.tensors()]
    all_logits = model.query(state, qx)
    for a, b in zip(before, state.tensors()):
        assert torch.equal(a, b)
    alone = model.query(state, qx[:, 2:3])
    torch.testing.assert_close(alone[:, 0], all_logits[:, 2], rtol=1e-9, atol=1e-9)


def test_state_size_is_constant_in_stream_length():
    model = tiny()
    sx, sy, _ = inputs(N=3)
    short = stream_recurrently(model, sx, sy)
    sx, sy, _ = inputs(N=12)
    long = stream_recurrently(model, sx, sy)
    assert short.nbytes() == long.nbytes() > 0
    assert long.length == 24
    assert long.layer_norms().shape == (2, 2)


def test_scan_reference_matches_step_by_step_recurrence():
    torch.manual_seed(3)
    b, d, n, L = 2, 5, 4, 7
    u, dt, z = torch.randn(b, d, L), torch.randn(b, d, L), torch.randn(b, d, L)
    A = -torch.rand(d, n) * 3
    B, C = torch.randn(b, n, L), torch.randn(b, n, L)
    D, bias = torch.randn(d), torch.randn(d)
    y, last = selective_scan_reference(u, dt, A, B, C, D, z, bias)
    state = torch.zeros(b, d, n)
    for t in range(L):
        yt, state = selective_step(state, u[..., t], F.softplus(dt[..., t] + bias), A, B[..., t], C[..., t], D, z[..., t])
        torch.testing.assert_close(yt, y[..., t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)


def test_rows_match_brute_force_hidden_attention():
    model = tiny()
    sx, sy, qx = inputs(Q=3)
    out = model(sx, sy, qx, with_rows=True)
    assert out.rows is not None and len(out.rows) == 2
    L = 2 * sx.shape[1]
    for rows in out.rows:
        assert rows.shape == (2, 3, L)
        assert (rows >= 0).all()
        torch.testing.assert_close(rows.sum(-1), torch.ones(2, 3, dtype=rows.dtype))
    # Layer 0 by brute force: run the mixer over stream + one query and read the last row.
    layer = model.layers[0]
    mixer = layer.mixer
    h = torch.cat([model.embedding.stream(sx, sy), model.embedding.embed_x(qx[:, 1:2])], dim=1)
    x, _ = mixer.in_proj(layer.norm(h)).transpose(1, 2).chunk(2, dim=1)
    x = F.silu(mixer.conv1d(x)[..., : h.shape[1]])
    dt, B, C = mixer._ssm_inputs(x.transpose(1, 2))
    delta = F.softplus(dt + mixer.dt_proj.bias).transpose(1, 2)
    alpha = hidden_attention_matrix(delta, mixer.A, B.transpose(1, 2), C.transpose(1, 2))
    row = alpha[:, -1, :L].abs()
    torch.testing.assert_close(out.rows[0][:, 1], row / row.sum(-1, keepdim=True), rtol=1e-7, atol=1e-9)


def test_hidden_attention_matrix_reproduces_the_scan():
    # y_i = sum_j alpha[i, j][d] x_j[d] + D x_i, before gating; checked on the channel mean with D = 0.
    torch.manual_seed(5)
    b, d, n, L = 1, 3, 4, 6
    x, dt = torch.randn(b, d, L, dtype=torch.float64), torch.randn(b, d, L, dtype=torch.float64)
    A = -torch.rand(d, n, dtype=torch.float64)
    B, C = torch.randn(b, n, L, dtype=torch.float64), torch.randn(b, n, L, dtype=torch.float64)
    zero, big = torch.zeros(d, dtype=torch.float64), torch.full((b, d, L), 30.0, dtype=torch.float64)
    y, _ = selective_scan_reference(x, dt, A, B, C, zero, big, zero)  # silu(30) ~ 30: undo the gate
    y = y / F.silu(big)
    delta = F.softplus(dt)
    # with one channel the channel mean is exact
    for ch in range(d):
        alpha = hidden_attention_matrix(delta[:, ch : ch + 1], A[ch : ch + 1], B, C)
        torch.testing.assert_close(torch.einsum("bij,bj->bi", alpha, x[:, ch]), y[:, ch], rtol=1e-8, atol=1e-8)


def test_rows_are_differentiable():
    model = tiny()
    sx, sy, qx = inputs()
    out = model(sx, sy, qx, with_rows=True)
    loss = sum(-(r[..., 0] + 1e-9).log().mean() for r in out.rows)
    loss.backward()
    grad = model.layers[0].mixer.x_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_parameter_names_shapes_and_init_follow_mamba_ssm():
    cfg = MambaConfig(d_model=64, n_layers=1)
    mixer = MambaMixer(cfg)
    d_inner, n, rank = 128, 16, math.ceil(64 / 16)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes == {
        "A_log": (d_inner, n),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, 64),
        "conv1d.weight": (d_inner, 1, 4),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (rank + 2 * n, d_inner),
        "dt_proj.weight": (d_inner, rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (64, d_inner),
    }
    torch.testing.assert_close(mixer.A, -torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1))
    dt = F.softplus(mixer.dt_proj.bias)
    assert (dt >= 1e-3 - 1e-6).all() and (dt <= 0.1 + 1e-6).all()
    model = MambaLearner(MambaConfig(d_model=32, n_layers=2, x_shape=(1, 8, 8), y_vocab=5, encoder_channels=8))
    keys = set(model.state_dict())
    assert {"layers.0.norm.weight", "layers.1.mixer.A_log", "norm_f.weight"} <= keys


@pytest.mark.parametrize("y_vocab,y_dim", [(0, 6)])
def test_regression_learner(y_vocab, y_dim):
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16, n_layers=1, x_shape=(6,), y_vocab=y_vocab, y_dim=y_dim)
    model = MambaLearner(cfg).eval()
    sx, sy, qx = torch.randn(2, 5, 6), torch.randn(2, 5, 6), torch.randn(2, 3, 6)
    out = model(sx, sy, qx)
    assert out.logits.shape == (2, 3, 6)
    state = model.empty_state(2)
    for t in range(5):
        state = model.step_y(model.step_x(state, sx[:, t]), sy[:, t])
    torch.testing.assert_close(model.query(state, qx), out.logits, rtol=1e-4, atol=1e-5)
