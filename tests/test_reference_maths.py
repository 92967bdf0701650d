"""The maths checked against references written here from the papers' equations, in float64 with plain
loops, independent of the code under test: Mamba's discretised scan (and a whole Mamba mixer, parallel and
step by step), the states read by probe tokens on the CUDA training path, and the selectivity loss over several
layers and episodes."""

from __future__ import annotations

import math

import pytest
import torch

from mclstudio.learners.mamba import MambaConfig, MambaMixer
from mclstudio.learners.scan import (
    diagonal_scan,
    mamba_transition,
    scan_with_state_probes,
    selective_scan_reference,
)
from mclstudio.training.losses import selectivity_kl
from learner_helpers import selective_step
from test_training_paths import ungated_loop

D64 = torch.float64


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def silu(v: float) -> float:
    return v / (1 + math.exp(-v))


def paper_scan(u, delta, A, B, C, D, z, delta_bias):
    """Mamba (Gu & Dao, 2023), zero-order hold as in its code: per channel d and state n,
    dt_t = softplus(delta_t + bias), h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t + D u_t,
    gated by silu(z_t). Scalar loops over plain floats. Shapes as selective_scan's; returns (y, h_L)."""
    b_, d_, L = u.shape
    n_ = A.shape[1]
    y = torch.zeros(b_, d_, L, dtype=D64)
    last = torch.zeros(b_, d_, n_, dtype=D64)
    for b in range(b_):
        for d in range(d_):
            h = [0.0] * n_
            for t in range(L):
                dt = softplus(float(delta[b, d, t]) + float(delta_bias[d]))
                x = float(u[b, d, t])
                h = [math.exp(dt * float(A[d, n])) * h[n] + dt * float(B[b, n, t]) * x for n in range(n_)]
                out = sum(float(C[b, n, t]) * h[n] for n in range(n_)) + float(D[d]) * x
                y[b, d, t] = out * silu(float(z[b, d, t]))
            last[b, d] = torch.tensor(h, dtype=D64)
    return y, last


def scan_inputs(b=2, d=3, n=4, L=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, delta, z = (torch.randn(b, d, L, generator=g, dtype=D64) for _ in range(3))
    A = -torch.rand(d, n, generator=g, dtype=D64) * 2 - 0.1
    B, C = torch.randn(b, n, L, generator=g, dtype=D64), torch.randn(b, n, L, generator=g, dtype=D64)
    D, bias = torch.randn(d, generator=g, dtype=D64), torch.randn(d, generator=g, dtype=D64)
    return u, delta, A, B, C, D, z, bias


def test_selective_scan_is_the_papers_discretisation():
    args = scan_inputs()
    y_ref, h_ref = paper_scan(*args)
    y, h = selective_scan_reference(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    # the GPU's chunk-parallel form of the same recurrence
    u, delta, A, B, C, D, z, bias = args
    dt = torch.nn.functional.softplus(delta + bias[:, None])
    y_par, h_par = diagonal_scan(u, z, C, D, lambda t: mamba_transition(dt[:, :, t].transpose(1, 2), A, B[:, :, t].transpose(1, 2)), True)
    torch.testing.assert_close(y_par, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_par, h_ref, rtol=1e-10, atol=1e-12)
    # one token at a time (streaming)
    state = torch.zeros(2, 3, 4, dtype=D64)
    for t in range(u.shape[2]):
        yt, state = selective_step(state, u[..., t], dt[..., t], A, B[..., t], C[..., t], D, z[..., t])
        torch.testing.assert_close(yt, y_ref[..., t], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state, h_ref, rtol=1e-10, atol=1e-12)


@torch.no_grad()
def test_mamba_mixer_is_the_papers_block():
    """A whole Mamba-1 block from its parameters: in_proj -> (x, z); causal depthwise conv, silu;
    x_proj -> (dt_low, B, C); dt = dt_proj(dt_low) (bias inside the softplus); A = -exp(A_log);
    the scan above; out_proj. Parallel path and token-by-token path."""
    torch.manual_seed(0)
    mixer = MambaMixer(MambaConfig(d_model=4, d_state=3, d_conv=3, expand=2, dt_rank=2)).double()
    # move A and D off their initial values so their roles are visible
    mixer.A_log.add_(torch.rand_like(mixer.A_log) * 0.5)
    mixer.D.mul_(torch.linspace(0.5, 1.5, mixer.d_inner, dtype=D64))
    h = torch.randn(2, 7, 4, dtype=D64)
    di, K = mixer.d_inner, mixer.d_conv
    xz = h @ mixer.in_proj.weight.T  # (B, L, 2 d_inner)
    x, z = xz[..., :di], xz[..., di:]
    w, cb = mixer.conv1d.weight[:, 0], mixer.conv1d.bias  # (d_inner, K): the last tap is the current input
    conv = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for k in range(K):
            if t - (K - 1 - k) >= 0:
                conv[:, t] += w[:, k] * x[:, t - (K - 1 - k)]
    x = torch.nn.functional.silu(conv + cb)
    proj = x @ mixer.x_proj.weight.T
    dt_low, Bm, Cm = proj[..., :2], proj[..., 2:5], proj[..., 5:]
    dt = dt_low @ mixer.dt_proj.weight.T  # the bias goes inside the softplus, as delta_bias
    A = -torch.exp(mixer.A_log)
    y, h_last = paper_scan(x.transpose(1, 2), dt.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2),
                           mixer.D, z.transpose(1, 2), mixer.dt_proj.bias)
    out_ref = y.transpose(1, 2) @ mixer.out_proj.weight.T
    out, _, ssm_state, _ = mixer(h, backend="reference")
    torch.testing.assert_close(out, out_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ssm_state, h_last, rtol=1e-9, atol=1e-11)
    conv_state, state = torch.zeros(2, di, K, dtype=D64), torch.zeros(2, di, 3, dtype=D64)
    for t in range(h.shape[1]):
        out_t, conv_state, state = mixer.step(h[:, t], conv_state, state)
        torch.testing.assert_close(out_t, out_ref[:, t], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("L", [9, 70])  # 70: more than one of the CPU scan's 64-token chunks
def test_probed_states_are_the_scans_states_and_their_gradient(L):
    """The CUDA training path reads the states through probe tokens (``scan_with_state_probes``; a float64
    loop of the ungated recurrence stands in for mamba_ssm's kernel): the last state and the states at
    boundaries equal the paper's loop, with the loop's gradients."""
    u, delta, A, B, _, _, _, bias = scan_inputs(L=L, seed=1)

    def ungated(*args):  # the kernel's stand-in: the differentiable token loop, in float64
        return ungated_loop(*(t.double() for t in args))

    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B)]
    uu, dd, AA, BB = leaves
    zero = torch.zeros(u.shape[1], dtype=D64)
    ends = torch.tensor([0, 3, L - 1, L])
    _, built = scan_with_state_probes(ungated, uu, dd, AA, BB, torch.zeros_like(B), zero, torch.zeros_like(u), bias, ends=ends)
    for k, e in enumerate(ends.tolist()):
        if e == 0:
            assert torch.all(built[:, k] == 0)
            continue
        _, h_ref = paper_scan(u[..., :e], delta[..., :e], A, B[..., :e], torch.zeros_like(B[..., :e]), zero,
                              torch.zeros_like(u[..., :e]), bias)
        torch.testing.assert_close(built[:, k].double(), h_ref, rtol=1e-5, atol=1e-6)  # probes run in float32
    _, scanned = selective_scan_reference(uu, dd, AA, BB, torch.zeros_like(B), zero, torch.zeros_like(u), bias)
    weights = torch.randn(scanned.shape, generator=torch.Generator().manual_seed(2), dtype=D64)
    g_built = torch.autograd.grad((built[:, -1].double() * weights).sum(), leaves)
    g_scan = torch.autograd.grad((scanned * weights).sum(), leaves)
    for a, b in zip(g_built, g_scan):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_selectivity_loss_over_layers_episodes_and_unequal_tasks():
    """l_slct = mean over layers, episodes and queries of KL(p || q), p uniform over the tokens (x and y)
    of the query's task. Three layers and two episodes with different rows; tasks of unequal length."""
    stream_task = torch.tensor([0, 0, 0, 1, 2, 2])  # 12 tokens: task 0 owns 6, task 1 owns 2, task 2 owns 4
    query_task = torch.tensor([0, 1, 2, 2])
    g = torch.Generator().manual_seed(3)
    rows = [torch.softmax(torch.randn(2, 4, 12, generator=g, dtype=D64) * (1 + layer), -1) for layer in range(3)]
    token_task = [int(stream_task[i // 2]) for i in range(12)]
    kls = []
    for q_rows in rows:
        for b in range(2):
            for q in range(4):
                own = [t for t in range(12) if token_task[t] == int(query_task[q])]
                p = 1 / len(own)
                kls.append(sum(p * math.log(p / float(q_rows[b, q, t])) for t in own))
    expected = sum(kls) / len(kls)
    assert selectivity_kl(rows, stream_task, query_task).item() == pytest.approx(expected, rel=1e-4)  # float32 inside
    # each layer's own value differs, so a loss that read one layer only would not match
    per_layer = [selectivity_kl([r], stream_task, query_task).item() for r in rows]
    assert len({round(v, 6) for v in per_layer}) == 3 and sum(per_layer) / 3 == pytest.approx(expected, rel=1e-4)


def test_anytime_selectivity_loss_over_layers_episodes_and_query_ends():
    """The anytime objective's l_slct (query_end given): query q sees its first query_end[q] pairs, p is
    uniform over the visible tokens of its task, and the mean runs over layers, then over the (episode,
    query) pairs that have a target and a non-zero row. Three layers, two episodes, uneven tasks."""
    stream_task = torch.tensor([0, 0, 0, 1, 2, 2])  # 12 tokens
    query_task = torch.tensor([0, 1, 2, 2, 1])
    query_end = torch.tensor([1, 6, 6, 5, 3])  # query 4 (task 1) sees 3 pairs: none of its task, no target
    g = torch.Generator().manual_seed(4)
    visible = torch.arange(12)[None, :] < 2 * query_end[:, None]  # (Q, 12)
    rows = []
    for layer in range(3):
        logits = torch.randn(2, 5, 12, generator=g, dtype=D64) * (1 + layer)
        r = torch.softmax(logits.masked_fill(~visible, -math.inf), -1)
        r[1, 2] = 0  # episode 1 gives no row for query 2 (left out)
        rows.append(r)
    token_task = [int(stream_task[i // 2]) for i in range(12)]
    per_layer = []
    for q_rows in rows:
        kls = []
        for b in range(2):
            for q in range(5):
                own = [t for t in range(12) if token_task[t] == int(query_task[q]) and t < 2 * int(query_end[q])]
                if not own or float(q_rows[b, q].sum()) == 0:
                    continue
                p = 1 / len(own)
                kls.append(sum(p * math.log(p / float(q_rows[b, q, t])) for t in own))
        assert len(kls) == 7  # 2 x 4 queries with a target, less the missing row
        per_layer.append(sum(kls) / len(kls))
    expected = sum(per_layer) / 3
    assert selectivity_kl(rows, stream_task, query_task, query_end).item() == pytest.approx(expected, rel=1e-4)
    # each layer and each episode differ, so a loss that read one of them only would not match
    assert len({round(v, 6) for v in per_layer}) == 3
    one_episode = selectivity_kl([r[:1] for r in rows], stream_task, query_task, query_end).item()
    assert one_episode != pytest.approx(expected, rel=1e-3)
