"""Transformer, Linear Transformer and Performer learners: parallel == recurrent, independent queries,
association rows (checked against a textbook O(L^2) forward), state sizes, gradients, fixed features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mclstudio.learners.attention import (
    AttentionLearner,
    KernelAttention,
    KVCacheState,
    LinearTransformerConfig,
    LinearTransformerLearner,
    MatrixState,
    PerformerConfig,
    PerformerLearner,
    SoftmaxAttention,
    TransformerConfig,
    TransformerLearner,
    sinusoidal_positions,
)
from learner_helpers import inputs, stream_recurrently

MODELS = {
    "transformer": (TransformerConfig, TransformerLearner, {}),
    "linear_transformer": (LinearTransformerConfig, LinearTransformerLearner, {}),
    "performer": (PerformerConfig, PerformerLearner, {"n_features": 16}),
}
NAMES = list(MODELS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only cost (badly so on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(name: str, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> AttentionLearner:
    cfg_cls, learner_cls, extra = MODELS[name]
    torch.manual_seed(seed)
    kw = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, x_shape=(1, 8, 8), y_vocab=10, encoder_channels=8)
    kw.update(extra)
    kw.update(overrides)
    return learner_cls(cfg_cls(**kw)).eval().to(dtype)


def manual_forward(model: AttentionLearner, sx, sy, qx_one):
    """Textbook forward of the sequence [stream tokens, one query] with full causal attention matrices.
    Returns the query's logits (B, out) and per layer the query's head-averaged stream row (B, 2N)."""
    h = torch.cat([model.embedding.stream(sx, sy), model.embedding.embed_x(qx_one)[:, None]], dim=1)
    T = h.shape[1]
    h = h + sinusoidal_positions(torch.arange(T), model.config.d_model, h.dtype)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    rows = []
    for layer in model.layers:
        attn = layer.attn
        q, k, v = attn._split(layer.ln_1(h))  # (B, H, T, dh)
        if isinstance(attn, SoftmaxAttention):
            s = (q @ k.transpose(-1, -2)) / attn.d_head**0.5
            w = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
        else:
            assert isinstance(attn, KernelAttention)
            a = (attn.feature_map(q, True) @ attn.feature_map(k, False).transpose(-1, -2)) * causal
            w = a / (a.sum(-1, keepdim=True) + attn.eps)
        r = w[:, :, -1, :-1].mean(dim=1)
        rows.append(r / r.sum(-1, keepdim=True))
        h = layer.finish(h, attn._merge(w @ v))
    return model.head(model.norm_f(h[:, -1])), rows


@pytest.mark.parametrize("name", NAMES)
def test_parallel_recurrent_and_textbook_paths_agree(name):
    model = tiny(name)
    sx, sy, qx = inputs()
    parallel = model(sx, sy, qx).logits
    state = stream_recurrently(model, sx, sy)
    assert state.length == 2 * sx.shape[1]
    torch.testing.assert_close(model.query(state, qx), parallel, rtol=1e-7, atol=1e-9)
    scanned = model.scan(model.embedding.stream(sx, sy))
    for a, b in zip(state.tensors(), scanned.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    for j in range(qx.shape[1]):
        logits, _ = manual_forward(model, sx, sy, qx[:, j])
        torch.testing.assert_close(parallel[:, j], logits, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_paths_agree_in_float32(name):
    model = tiny(name, dtype=torch.float32)
    sx, sy, qx = inputs(dtype=torch.float32)
    parallel = model(sx, sy, qx).logits
    recurrent = model.query(stream_recurrently(model, sx, sy), qx)
    torch.testing.assert_close(recurrent, parallel, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["linear_transformer", "performer"])
def test_chunked_scan_equals_recurrence(name):
    model = tiny(name)
    sx, sy, qx = inputs(N=7)
    whole = model(sx, sy, qx, with_rows=True)
    for layer in model.layers:
        layer.attn.chunk_size = 3  # 14 tokens: chunks of 3 with a padded last chunk
    chunked = model(sx, sy, qx, with_rows=True)
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=1e-7, atol=1e-9)
    for a, b in zip(chunked.rows, whole.rows):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.query(stream_recurrently(model, sx, sy), qx), whole.logits)


@pytest.mark.parametrize("name", NAMES)
def test_query_leaves_state_unchanged_and_queries_are_independent(name):
    model = tiny(name)
    sx, sy, qx = inputs()
    for state in (stream_recurrently(model, sx, sy), model.scan(model.embedding.stream(sx, sy), True)):
        before = [t.clone() for t in state.tensors()]
        all_logits = model.query(state, qx)
        if not (isinstance(state, MatrixState) and state.phi_k is None):
            model.answer(state, qx, with_rows=True)
        assert state.length == 2 * sx.shape[1]
        for a, b in zip(before, state.tensors()):
            assert torch.equal(a, b)
        alone = model.query(state, qx[:, 2:3])
        torch.testing.assert_close(alone[:, 0], all_logits[:, 2], rtol=1e-9, atol=1e-12)
    # a query on the empty state sees only itself
    assert model.query(model.empty_state(2), qx).shape == (2, 4, 10)


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_distributions_over_the_stream_matching_the_textbook_forward(name):
    model = tiny(name)
    sx, sy, qx = inputs(N=5, Q=3)
    out = model(sx, sy, qx, with_rows=True)
    assert out.rows is not None and len(out.rows) == model.config.n_layers
    for r in out.rows:
        assert r.shape == (2, 3, 10)
        assert (r >= 0).all()
        torch.testing.assert_close(r.sum(-1), torch.ones(2, 3, dtype=r.dtype))
    for j in range(qx.shape[1]):
        _, manual_rows = manual_forward(model, sx, sy, qx[:, j])
        for r, m in zip(out.rows, manual_rows):
            torch.testing.assert_close(r[:, j], m, rtol=1e-7, atol=1e-10)
    # rows from a streamed state: the KV cache is its own history; a matrix state without history refuses
    state = stream_recurrently(model, sx, sy)
    if isinstance(state, KVCacheState):
        _, rows = model.read(state, model.embedding.embed_x(qx), with_rows=True)
        for a, b in zip(rows, out.rows):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    else:
        assert isinstance(state, MatrixState) and state.phi_k is None
        with pytest.raises(ValueError):
            model.read(state, model.embedding.embed_x(qx), with_rows=True)
    # a kept history keeps growing when more tokens are stepped in
    scanned = model.scan(model.embedding.stream(sx[:, :4], sy[:, :4]), keep_history=True)
    for t in range(4, 5):
        scanned = model.step_y(model.step_x(scanned, sx[:, t]), sy[:, t])
    _, rows = model.read(scanned, model.embedding.embed_x(qx), with_rows=True)
    for a, b in zip(rows, out.rows):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_state_size(name):
    model = tiny(name)
    sx, sy, _ = inputs(N=8)
    state = model.empty_state(2)
    sizes = []
    for t in range(8):
        state = model.step_y(model.step_x(state, sx[:, t]), sy[:, t])
        sizes.append(state.nbytes())
    assert state.layer_norms().shape == (2, 2)
    if name == "transformer":
        # (K, V) per layer: 2 layers * 2 tensors * B * d_model * 8 bytes per token
        per_token = 2 * 2 * 2 * 32 * 8
        assert sizes == [per_token * 2 * (t + 1) for t in range(8)]
        assert model.empty_state(2).nbytes() == 0
    else:
        assert len(set(sizes)) == 1 and sizes[0] == model.empty_state(2).nbytes()


@pytest.mark.parametrize("name", NAMES)
def test_gradient_flows_from_rows_to_qkv(name):
    model = tiny(name).train()
    sx, sy, qx = inputs(N=5, Q=3)
    out = model(sx, sy, qx, with_rows=True)
    # a KL-style loss pushing each row towards the first stream token
    target = torch.zeros_like(out.rows[0])
    target[..., 0] = 1.0
    loss = sum(-(target * r.clamp_min(1e-12).log()).sum() for r in out.rows)
    loss.backward()
    for layer in model.layers:
        g = layer.attn.qkv.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_backprop_through_the_recurrent_path(name):
    model = tiny(name).train()
    sx, sy, qx = inputs(N=4)
    state = stream_recurrently(model, sx, sy)
    model.query(state, qx).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    # the same gradient as the parallel path (dropout is 0)
    expected = [g.clone() for g in grads]
    model.zero_grad()
    model(sx, sy, qx).logits.sum().backward()
    for a, p in zip(expected, [p for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(p.grad, a, rtol=1e-6, atol=1e-9)


def test_dropout_only_in_train_mode():
    model = tiny("transformer", dropout=0.5)
    sx, sy, qx = inputs()
    torch.testing.assert_close(model(sx, sy, qx).logits, model(sx, sy, qx).logits, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(sx, sy, qx).logits, model(sx, sy, qx).logits)


def test_performer_features_are_fixed_and_saved():
    model = tiny("performer")
    sx, sy, qx = inputs()
    first = model(sx, sy, qx).logits
    model.train()
    model(sx, sy, qx)  # a training-mode forward must not redraw either
    model.eval()
    torch.testing.assert_close(model(sx, sy, qx).logits, first, rtol=0, atol=0)
    sd = model.state_dict()
    keys = [k for k in sd if k.endswith("feature_map.omega")]
    assert len(keys) == 2 and sd[keys[0]].shape == (16, 16)
    assert not torch.equal(sd[keys[0]], sd[keys[1]])  # drawn per layer
    fresh = tiny("performer", seed=123)
    assert not torch.equal(fresh.state_dict()[keys[0]], sd[keys[0]])
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh(sx, sy, qx).logits, first, rtol=0, atol=0)


def test_performer_features_are_orthogonal_blocks():
    w = tiny("performer", n_features=40).layers[0].attn.feature_map.omega.float()  # d_head 16: 3 blocks
    block = w[:16]
    gram = block @ block.T
    torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-4, rtol=0)


def test_performer_is_finite_for_large_activations_in_float32():
    model = tiny("performer", dtype=torch.float32)
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.qkv.weight.mul_(30.0)
    sx, sy, qx = inputs(dtype=torch.float32)
    out = model(sx, sy, qx, with_rows=True)
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(r).all() for r in out.rows)
    recurrent = model.query(stream_recurrently(model, sx, sy), qx)
    torch.testing.assert_close(recurrent, out.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_regression_config(name):
    model = tiny(name, x_shape=(6,), y_vocab=0, y_dim=6)
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    sy = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    qx = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    out = model(sx, sy, qx, with_rows=True)
    assert out.logits.shape == (2, 3, 6)
    torch.testing.assert_close(model.query(stream_recurrently(model, sx, sy), qx), out.logits)
    F.mse_loss(out.logits, torch.zeros_like(out.logits)).backward()


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError):
        TransformerConfig(d_model=30, n_heads=4)
    cfg = PerformerConfig(d_model=32, n_heads=2, n_features=8, x_shape=(6,))
    d = cfg.to_dict()
    assert d["model"] == "performer"
    assert PerformerConfig.from_dict(d) == cfg


def test_kv_cache_grows_in_place_by_doubling_without_autograd():
    model = tiny("transformer")
    sx, sy, qx = inputs(N=12)
    with torch.no_grad():
        parallel = model(sx, sy, qx).logits
        state = model.empty_state(2)
        capacities = []
        for t in range(12):
            state = model.step_y(model.step_x(state, sx[:, t]), sy[:, t])
            capacities.append(state.capacity)
        torch.testing.assert_close(model.query(state, qx), parallel, rtol=1e-7, atol=1e-9)
        assert sorted(set(capacities)) == [16, 32]  # 24 tokens: one reallocation past the first 16
        # continuing from a scanned state (exact-size cache) also works
        scanned = model.scan(model.embedding.stream(sx[:, :6], sy[:, :6]))
        for t in range(6, 12):
            scanned = model.step_y(model.step_x(scanned, sx[:, t]), sy[:, t])
        torch.testing.assert_close(model.query(scanned, qx), parallel, rtol=1e-7, atol=1e-9)


def test_preallocated_kv_cache_keeps_its_shape_and_equals_the_growing_one():
    """init_state(..., max_tokens): the Transformer's KV cache is allocated once for the whole stream, its
    position is a device counter, and attention is masked beyond it. Step by step it gives the growing
    cache's logits, rows and norms, reports the same used bytes (the reserved ones stay constant), never
    reads what lies beyond its position (planted values there change nothing), and refuses a token that
    does not fit."""
    model = tiny("transformer")
    sx, sy, qx = inputs(N=5)
    hq = model.embedding.embed_x(qx)
    with torch.no_grad():
        growing, fixed = model.empty_state(2), model.empty_state(2, max_tokens=10)
        assert isinstance(fixed, KVCacheState) and isinstance(growing, KVCacheState)
        assert fixed.preallocated and not growing.preallocated
        buffers = fixed.tensors()
        reserved = fixed.reserved_nbytes()
        assert reserved == 2 * 2 * 2 * 32 * 8 * 10 and fixed.nbytes() == 0  # layers, K and V, B, D, float64, tokens
        for t in range(5):
            growing = model.step_y(model.step_x(growing, sx[:, t]), sy[:, t])
            fixed = model.step_y(model.step_x(fixed, sx[:, t]), sy[:, t])
            assert all(a is b for a, b in zip(fixed.tensors(), buffers))  # written in place, one shape
            assert fixed.length == int(fixed.counters()[0]) == 2 * (t + 1)
            assert fixed.nbytes() == growing.nbytes() and fixed.reserved_nbytes() == reserved
            torch.testing.assert_close(fixed.layer_norms(), growing.layer_norms(), rtol=1e-12, atol=0)
            torch.testing.assert_close(model.query(fixed, qx), model.query(growing, qx), rtol=1e-12, atol=1e-12)
        _, rows = model.read(fixed, hq, with_rows=True)
        _, expected = model.read(growing, hq, with_rows=True)
        for a, b in zip(rows, expected):
            assert a.shape == (2, 4, 10)
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        # stale values where the stream has not reached (a reused buffer): never read by a step or a query
        stale = model.empty_state(2, max_tokens=12)
        for buffer in stale.tensors():
            buffer.fill_(1e3)
        for t in range(5):
            stale = model.step_y(model.step_x(stale, sx[:, t]), sy[:, t])
        torch.testing.assert_close(model.query(stale, qx), model.query(fixed, qx), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stale.layer_norms(), fixed.layer_norms(), rtol=1e-12, atol=0)
        with pytest.raises(ValueError, match="holds 10 tokens"):
            model.step_x(fixed, sx[:, 0])
