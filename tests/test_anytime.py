"""Anytime queries: every learner answers a query with a boundary exactly as if the stream had stopped
there (parallel path, recurrent path, association rows), and the training side (boundary sampling and
the selectivity target over the visible prefix)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mclstudio.learners.registry import build_learner, make_config
from cli_helpers import run_cli
from learner_helpers import inputs, stream_recurrently

TINY = dict(d_model=32, n_layers=2, x_shape=(1, 8, 8), y_vocab=10, encoder_channels=8)
EXTRA = {"transformer": dict(n_heads=2, d_ff=64), "linear_transformer": dict(n_heads=2, d_ff=64),
         "performer": dict(n_heads=2, d_ff=64, n_features=16), "protonet": dict(n_layers=1)}
LEARNERS = ["mamba", "longhorn", "transformer", "linear_transformer", "performer", "protonet"]
SSMS = {"mamba", "longhorn"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(name: str):
    torch.manual_seed(0)
    return build_learner(make_config(name, **{**TINY, **EXTRA.get(name, {})})).eval().double()


QUERY_END = torch.tensor([6, 2, 0, 4, 6, 3])  # pairs each query sees (N = 6), shared by the batch


@pytest.mark.parametrize("name", LEARNERS)
def test_queries_with_boundaries_match_the_truncated_stream(name):
    model = tiny(name)
    sx, sy, qx = inputs(N=6, Q=len(QUERY_END))
    out = model(sx, sy, qx, with_rows=True, query_end=QUERY_END)
    for q, e in enumerate(QUERY_END.tolist()):
        # the recurrent path stopped at the boundary answers the same (the only path for an empty stream)
        state = stream_recurrently(model, sx[:, :e], sy[:, :e])
        torch.testing.assert_close(model.query(state, qx[:, q : q + 1])[:, 0], out.logits[:, q], rtol=1e-9, atol=1e-9)
        if e == 0:
            assert all(torch.all(rows[:, q] == 0) for rows in out.rows)
            continue
        alone = model(sx[:, :e], sy[:, :e], qx[:, q : q + 1], with_rows=True)
        torch.testing.assert_close(out.logits[:, q], alone.logits[:, 0], rtol=1e-9, atol=1e-9)
        for rows, rows_alone in zip(out.rows, alone.rows):
            assert torch.all(rows[:, q, 2 * e :] == 0)
            if name in SSMS and e < 6:
                # SSMs give rows only at the stream's end (documented): zero rows elsewhere
                assert torch.all(rows[:, q] == 0)
            else:
                torch.testing.assert_close(rows[:, q, : 2 * e], rows_alone[:, 0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", LEARNERS)
def test_query_end_at_the_stream_end_is_the_plain_forward(name):
    model = tiny(name)
    sx, sy, qx = inputs(N=6, Q=3)
    plain = model(sx, sy, qx, with_rows=True)
    full = model(sx, sy, qx, with_rows=True, query_end=torch.full((3,), 6))
    torch.testing.assert_close(full.logits, plain.logits, rtol=1e-9, atol=1e-9)
    for a, b in zip(full.rows, plain.rows):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["mamba", "transformer"])
def test_gradients_flow_through_boundary_states(name):
    model = tiny(name).train()
    sx, sy, qx = inputs(N=6, Q=len(QUERY_END))
    out = model(sx, sy, qx, query_end=QUERY_END)
    out.logits.sum().backward()
    grad = model.embedding.y_embed.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_bad_query_end_is_refused():
    model = tiny("mamba")
    sx, sy, qx = inputs(N=6, Q=2)
    with pytest.raises(ValueError, match="query_end"):
        model(sx, sy, qx, query_end=torch.tensor([1, 7]))


# ---- the training side ------------------------------------------------------------------------------
from mclstudio.data.layout import task_boundaries  # noqa: E402
from mclstudio.training.anytime import anytime_generator, sample_query_end  # noqa: E402
from mclstudio.training.losses import selectivity_kl, selectivity_targets  # noqa: E402
from mclstudio.training.trainer import TrainConfig  # noqa: E402


def test_boundaries_are_drawn_at_or_after_the_querys_own_task():
    stream_task = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # uneven shots: task ends after 2, 5, 6, 8 pairs
    assert task_boundaries(stream_task).tolist() == [2, 5, 6, 8]
    query_task = torch.tensor([0, 1, 2, 3, 0])
    seen: list[set[int]] = [set() for _ in range(5)]
    for step in range(200):
        ends = sample_query_end(stream_task, query_task, anytime_generator(0, step))
        assert ends.dtype == torch.int64
        for q, e in enumerate(ends.tolist()):
            seen[q].add(e)
    assert seen == [{2, 5, 6, 8}, {5, 6, 8}, {6, 8}, {8}, {2, 5, 6, 8}]
    # a pure function of (seed, step)
    a = sample_query_end(stream_task, query_task, anytime_generator(3, 7))
    assert torch.equal(a, sample_query_end(stream_task, query_task, anytime_generator(3, 7)))
    others = [sample_query_end(stream_task, query_task, anytime_generator(3, s)) for s in range(8, 12)]
    assert not all(torch.equal(a, o) for o in others)


def test_selectivity_target_covers_the_visible_same_task_tokens():
    stream_task = torch.tensor([0, 0, 1, 1])  # 8 tokens
    query_task = torch.tensor([0, 1, 0])
    p = selectivity_targets(stream_task, query_task, torch.tensor([1, 3, 4]))
    assert torch.allclose(p[0], torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0]))
    assert torch.allclose(p[1], torch.tensor([0, 0, 0, 0, 0.5, 0.5, 0, 0]))
    assert torch.allclose(p[2], torch.tensor([0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0]))
    # zero rows (no row given at that boundary) are left out of the mean: only query 0 counts here
    rows = torch.zeros(1, 3, 8)
    rows[0, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0])
    loss = selectivity_kl([rows], stream_task, query_task, torch.tensor([1, 3, 4]))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_anytime_is_the_default_objective():
    assert TrainConfig().objective == "anytime"
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="middle").validate()


# ---- SSM states at boundaries -------------------------------------------------------------------------
from mclstudio.learners.scan import diagonal_scan, mamba_transition, scan_with_state_probes  # noqa: E402


def _random_scan_inputs(L: int, dtype: torch.dtype, strength: float = 1.0):
    g = torch.Generator().manual_seed(5)
    b, d, n = 2, 3, 4
    u, z = torch.randn(b, d, L, generator=g, dtype=dtype), torch.randn(b, d, L, generator=g, dtype=dtype)
    C, B = torch.randn(b, n, L, generator=g, dtype=dtype), torch.randn(b, n, L, generator=g, dtype=dtype)
    delta = torch.rand(b, L, d, generator=g, dtype=dtype) * strength
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 4
    return u, z, C, B, delta, A


@pytest.mark.parametrize("parallel", [False, True])
def test_scan_keeps_the_states_at_the_ends(parallel):
    """diagonal_scan(..., ends) across chunk borders (L = 150 > both chunk sizes) equals the last state of
    the scan of each prefix, and so do the probe tokens that read the states through mamba_ssm's kernel on
    CUDA (``scan_with_state_probes``, here around a float64 loop of the ungated recurrence)."""
    u, z, C, B, delta, A = _random_scan_inputs(150, torch.float64)
    D = torch.zeros(3, dtype=torch.float64)
    ends = torch.tensor([0, 16, 17, 64, 100, 150])

    def move(e):
        return lambda t: mamba_transition(delta[:, :e][:, t], A, B[:, :, :e][:, :, t].transpose(1, 2))

    _, at_ends = diagonal_scan(u, z, C, D, move(150), parallel, ends=ends)
    assert torch.all(at_ends[:, 0] == 0)
    for k, e in enumerate(ends.tolist()[1:], start=1):
        _, last = diagonal_scan(u[..., :e], z[..., :e], C[..., :e], D, move(e), parallel)
        torch.testing.assert_close(at_ends[:, k], last, rtol=1e-10, atol=1e-12)

    def ungated_loop(u, dt, A, B, C, D, bias):  # dt before softplus: the probes' PROBE_DT gives a zero step
        step = F.softplus(dt.double() + bias.double()[:, None])
        h, ys = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64), []
        for t in range(u.shape[-1]):
            h = torch.exp(step[:, :, t, None] * A) * h + (step[:, :, t] * u[:, :, t].double())[..., None] * B[:, None, :, t].double()
            ys.append((h * C[:, None, :, t].double()).sum(-1) + D * u[:, :, t].double())
        return torch.stack(ys, dim=-1)

    # delta after softplus = log(exp(dt) - 1) before it (zero bias); probes run in float32
    dt = torch.log(torch.expm1(delta.transpose(1, 2)))
    _, probed = scan_with_state_probes(ungated_loop, u, dt, A, B, C, D, z, torch.zeros(3, dtype=torch.float64), ends=ends)
    torch.testing.assert_close(probed.double(), at_ends, rtol=1e-5, atol=1e-6)


def test_train_objective_option(tmp_path, capsys):
    base = ["train", "--model", "transformer", "--tasks", "3", "--shots", "1", "--test-shots", "1", "--steps", "2",
            "--batch-size", "2", "--d-model", "16", "--layers", "1", "--heads", "2", "--encoder-channels", "8",
            "--y-vocab", "12", "--device", "cpu"]
    for objective in ("anytime", "end"):
        out = tmp_path / f"{objective}.pt"
        code, _, err = run_cli(capsys, *base, *([] if objective == "anytime" else ["--objective", "end"]), "-o", out)
        assert code == 0, err
        meta = torch.load(out, weights_only=True)["metadata"]
        assert meta["train_config"]["objective"] == objective
    code, _, err = run_cli(capsys, *base, "--objective", "middle", "-o", tmp_path / "bad.pt")
    assert code == 2 and "middle" in err and "Traceback" not in err and not (tmp_path / "bad.pt").exists()
