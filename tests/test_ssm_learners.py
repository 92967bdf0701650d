"""The selective-SSM learners (Mamba, Longhorn): parallel == recurrent, O(1) state, hidden attention,
mamba_ssm's parameter layout, and Longhorn's online-recall step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mclstudio.learners.longhorn import LonghornConfig, LonghornLearner, LonghornMixer, longhorn_transition
from mclstudio.learners.mamba import MambaConfig, MambaLearner, MambaMixer
from mclstudio.learners.ssm import SSMLearner
from mclstudio.learners.scan import diagonal_scan, mamba_transition, selective_scan_reference
from learner_helpers import hidden_attention_matrix, inputs, selective_step, stream_recurrently


SSM_LEARNERS = {"mamba": (MambaLearner, MambaConfig), "longhorn": (LonghornLearner, LonghornConfig)}
each_ssm = pytest.mark.parametrize("name", list(SSM_LEARNERS))


def tiny(name: str = "mamba", **overrides) -> SSMLearner:
    torch.manual_seed(0)
    learner_class, config_class = SSM_LEARNERS[name]
    cfg = config_class(d_model=32, n_layers=2, x_shape=(1, 8, 8), y_vocab=10, encoder_channels=8, **overrides)
    return learner_class(cfg).eval().double()


@each_ssm
def test_parallel_and_recurrent_paths_agree(name):
    model = tiny(name)
    sx, sy, qx = inputs()
    parallel = model(sx, sy, qx).logits
    state = stream_recurrently(model, sx, sy)
    torch.testing.assert_close(model.query(state, qx), parallel, rtol=1e-9, atol=1e-9)
    # and the states themselves agree with the parallel scan's final state
    scanned = model.scan(model.embedding.stream(sx, sy))
    for a, b in zip(state.tensors(), scanned.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@each_ssm
def test_query_leaves_state_unchanged_and_queries_are_independent(name):
    model = tiny(name)
    sx, sy, qx = inputs()
    state = stream_recurrently(model, sx, sy)
    before = [t.clone() for t in state.tensors()]
    all_logits = model.query(state, qx)
    for a, b in zip(before, state.tensors()):
        assert torch.equal(a, b)
    alone = model.query(state, qx[:, 2:3])
    torch.testing.assert_close(alone[:, 0], all_logits[:, 2], rtol=1e-9, atol=1e-9)


@each_ssm
def test_state_size_is_constant_in_stream_length(name):
    model = tiny(name)
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


@each_ssm
def test_rows_match_brute_force_hidden_attention(name):
    model = tiny(name)
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
    alpha = hidden_attention_matrix(mixer.transition(dt, B), C)
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
        move = mamba_transition(delta[:, ch : ch + 1].transpose(1, 2), A[ch : ch + 1], B.transpose(1, 2))
        alpha = hidden_attention_matrix(move, C.transpose(1, 2))
        torch.testing.assert_close(torch.einsum("bij,bj->bi", alpha, x[:, ch]), y[:, ch], rtol=1e-8, atol=1e-8)


@each_ssm
def test_rows_are_differentiable(name):
    model = tiny(name)
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


@each_ssm
def test_regression_learner(name):
    torch.manual_seed(0)
    learner_class, config_class = SSM_LEARNERS[name]
    model = learner_class(config_class(d_model=16, n_layers=1, x_shape=(6,), y_vocab=0, y_dim=6)).eval()
    sx, sy, qx = torch.randn(2, 5, 6), torch.randn(2, 5, 6), torch.randn(2, 3, 6)
    out = model(sx, sy, qx)
    assert out.logits.shape == (2, 3, 6)
    state = model.empty_state(2)
    for t in range(5):
        state = model.step_y(model.step_x(state, sx[:, t]), sy[:, t])
    torch.testing.assert_close(model.query(state, qx), out.logits, rtol=1e-4, atol=1e-5)


def test_longhorn_step_solves_the_online_recall_objective():
    # With one state index the diagonal of k k^T is exact: the step must be the argmin over s of
    # ||s - s_prev||^2 + beta * (s k - u)^2 for every channel, i.e. its gradient vanishes there.
    torch.manual_seed(2)
    d = 5
    beta, k = torch.rand(d, dtype=torch.float64), torch.randn(1, dtype=torch.float64) * 2
    s_prev, u = torch.randn(d, 1, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    move = longhorn_transition(beta, k)
    s_new = torch.exp(move.log_decay) * s_prev + (move.rate * u).unsqueeze(-1) * move.key
    grad = 2 * (s_new - s_prev) + 2 * beta.unsqueeze(-1) * (s_new * k - u.unsqueeze(-1)) * k
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)


def test_longhorn_decay_is_stable_and_key_dependent():
    torch.manual_seed(3)
    beta = torch.rand(4, 8)
    k = torch.randn(4, 16) * 10  # large keys: the decay must stay in (0, 1]
    move = longhorn_transition(beta, k)
    decay = torch.exp(move.log_decay)
    assert torch.isfinite(move.log_decay).all()
    assert (decay > 0).all() and (decay <= 1).all()
    # an index the key does not write to is not forgotten
    k[:, 0] = 0
    assert torch.equal(torch.exp(longhorn_transition(beta, k).log_decay)[..., 0], torch.ones(4, 8))


def test_longhorn_has_mambas_block_without_A():
    cfg = LonghornConfig(d_model=64, n_layers=1)
    shapes = {k: tuple(v.shape) for k, v in LonghornMixer(cfg).state_dict().items()}
    mamba_shapes = {k: tuple(v.shape) for k, v in MambaMixer(MambaConfig(d_model=64)).state_dict().items()}
    assert shapes == {k: v for k, v in mamba_shapes.items() if k != "A_log"}


def test_chunk_parallel_scan_matches_the_loop():
    # The GPU's chunk-parallel form of the recurrence, run here on the CPU, against the token loop.
    torch.manual_seed(4)
    b, d, n, L = 2, 5, 4, 37  # several chunks and a ragged last one
    u, dt, z = (torch.randn(b, d, L, dtype=torch.float64) for _ in range(3))
    B, C = torch.randn(b, n, L, dtype=torch.float64), torch.randn(b, n, L, dtype=torch.float64)
    D = torch.randn(d, dtype=torch.float64)
    beta = torch.sigmoid(dt).transpose(1, 2)
    results = [
        diagonal_scan(u, z, C, D, lambda t: longhorn_transition(beta[:, t], B[:, :, t].transpose(1, 2)), parallel)
        for parallel in (False, True)
    ]
    for loop, par in zip(*results):
        torch.testing.assert_close(par, loop, rtol=1e-10, atol=1e-10)


def test_shifted_causal_conv_is_the_depthwise_conv():
    from mclstudio.learners.ssm import shifted_causal_conv

    torch.manual_seed(6)
    mixer = MambaMixer(MambaConfig(d_model=8)).double()
    x = torch.randn(2, mixer.d_inner, 9, dtype=torch.float64)
    expected = mixer.conv1d(x)[..., :9]
    torch.testing.assert_close(shifted_causal_conv(x, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias), expected)


def test_longhorn_log1p_on_the_cpu_matches_float64():
    """Longhorn's CPU log1p (Goldberg's identity through log, which torch vectorises) against float64
    log1p from 0 through tiny to large arguments, and its gradient where 1 + x rounds to 1 (the where
    branch must not leak a NaN)."""
    from mclstudio.learners.longhorn import log1p_nonnegative

    x = torch.cat([torch.zeros(3), torch.logspace(-12, 4, 2001), torch.rand(5000) * 3])
    got = log1p_nonnegative(x).double()
    want = torch.log1p(x.double())
    assert float(((got - want).abs() / want.clamp_min(1e-300)).max()) < 3e-7
    assert torch.equal(log1p_nonnegative(torch.tensor([0.0, 1e-9])), torch.tensor([0.0, 1e-9]))  # x where 1 + x == 1
    z = torch.tensor([0.0, 1e-9, 0.5], requires_grad=True)
    log1p_nonnegative(z).sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([1.0, 1.0, 1 / 1.5]))
