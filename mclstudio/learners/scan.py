"""The diagonal selective recurrence of Mamba-1 (and Longhorn), in one place.

Per channel d and state index n, a token with transition (log_decay, rate, key) does

    h_t = exp(log_decay_t) * h_{t-1} + rate_t * u_t * key_t
    y_t = C_t . h_t + D * u_t, then gated by silu(z_t)

Mamba-1: log_decay = delta * A, rate = delta, key = B (``mamba_transition``); Longhorn has its own.

- ``selective_scan``: Mamba's whole sequence; on CUDA mamba_ssm's fused kernel when that package imports,
  otherwise ``diagonal_scan``, the reference loop (float32, any device).
- ``diagonal_step``: one token, for streaming. ``diagonal_read``: queries as one more token each.
Shapes follow mamba_ssm: channels before time.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mclstudio.learners.kernels.diagonal_scan import fused_diagonal_scan, fused_diagonal_scan_supported


class Transition(NamedTuple):
    """How tokens move the state: h <- exp(log_decay) * h + rate * u (x) key, float32.
    log_decay: (..., d_inner, N), <= 0; rate: (..., d_inner); key: (..., N)."""

    log_decay: Tensor
    rate: Tensor
    key: Tensor


def _import_cuda_scan() -> tuple[Any | None, str]:
    """mamba_ssm's selective_scan_interface module, or None and the reason it is missing.

    mamba_ssm's package __init__ also imports its language-model code, which breaks with some
    transformers releases (5.x removed names it imports). The scan needs none of that, so when the
    normal import fails for such a reason we import the ops module with the package body skipped.
    """
    try:
        from mamba_ssm.ops import selective_scan_interface

        return selective_scan_interface, ""
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
        return importlib.import_module("mamba_ssm.ops.selective_scan_interface"), ""
    except Exception as exc:
        del sys.modules["mamba_ssm"]
        return None, f"{first_error}; without the package body: {type(exc).__name__}: {exc}"


_cuda_scan_module, CUDA_SCAN_IMPORT_ERROR = _import_cuda_scan()

ScanBackend = Literal["auto", "reference", "cuda"]
SCAN_CHUNK = 64
PARALLEL_CHUNK = 16


def cuda_scan_available() -> bool:
    """True when mamba_ssm's fused selective scan imported and a GPU is present."""
    return _cuda_scan_module is not None and torch.cuda.is_available()


def channel_major_strides(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
    """Strides of a (batch, d, L) tensor laid out as (d, batch, L): the layout of mamba_ssm's Mamba, whose
    projections are computed as weight @ h^T. Time is contiguous and (batch, L) merge into one stride-1
    dim, so the next projection reads it without a copy."""
    batch, _, L = shape
    return L, batch * L, 1


def channel_major(shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
    """An empty (batch, d, L) tensor with ``channel_major_strides``, like's dtype and device."""
    return like.new_empty_strided(tuple(shape), channel_major_strides(shape))


# needs_exact_strides: inductor hands the op its inputs with the strides seen when it was traced (the
# kernel reads any batch and channel strides, but time must be contiguous).
_EXACT_STRIDES = tuple(t for t in (getattr(torch.Tag, "needs_exact_strides", None),) if t is not None)


@torch.library.custom_op("mclstudio::cuda_selective_scan", mutates_args=(), tags=_EXACT_STRIDES)
def _cuda_scan_inference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor
) -> tuple[Tensor, Tensor]:
    """mamba_ssm's fused forward kernel alone, as a torch op: torch.compile and CUDA graphs can then
    take a whole learner's inference in one graph (its autograd.Function would break the graph).
    The gated output is always channel-major (``channel_major``), as the fake below says: the kernel
    allocates it like z, and inductor checks every op's output against the fake's strides."""
    assert _cuda_scan_module is not None
    # B and C vary per token: the kernel takes them as (batch, groups=1, N, L).
    out, intermediates, out_z = _cuda_scan_module.selective_scan_cuda.fwd(
        u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias, True
    )
    if out_z.stride() != channel_major_strides(out_z.shape):
        out_z = channel_major(out_z.shape, out_z).copy_(out_z)
    return out_z, intermediates[:, :, -1, 1::2].contiguous()


@_cuda_scan_inference.register_fake
def _(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor) -> tuple[Tensor, Tensor]:
    return channel_major(u.shape, u), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)


def decay_to_end(log_decay: Tensor) -> Tensor:
    """exp(R_j), R_j = sum_{k>j} log_decay_k: how much of token j's drive is left at the end of the stream.
    log_decay: (batch, L, d_inner, N) -> (batch, L, d_inner, N)."""
    # A reverse cumulative sum adds up only the tail, so tokens near the end (the ones that matter most)
    # keep full float32 precision even in long streams.
    return torch.exp(torch.flip(torch.cumsum(torch.flip(log_decay, [1]), dim=1), [1]) - log_decay)


# A probe token leaves the state as it is: its step size is softplus(PROBE_DT + bias) = 0 exactly in float32
# (decay exp(0 * A) = 1, drive 0 * u * B = 0) whatever bias dt_proj has learned.
PROBE_DT = -1.0e4


def insert_state_probes(
    u: Tensor, delta: Tensor, B: Tensor, C: Tensor, ends: Tensor
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor, Tensor]:
    """The scan's inputs, in float32, with N probe tokens inserted after the first ends[k] tokens for each
    k: probe n has u = 0, B = 0, delta = PROBE_DT and C = e_n, so its output (before the gate) is column n
    of the state there, and the tokens after it see the state unchanged.

    u, delta: (batch, d_inner, L); B, C: (batch, N, L); ends: (K,) token counts in 0..L, increasing.
    Returns the four inputs of length L + K N, the stream tokens' positions among them (L,) and the
    probes' positions (K, N).
    """
    batch, N, L = B.shape
    K = ends.shape[0]
    t = torch.arange(L, device=u.device)
    stream_pos = t + N * (ends[None, :] <= t[:, None]).sum(1)  # each probe block before t shifts it by N
    probe_pos = (ends + N * torch.arange(K, device=u.device))[:, None] + torch.arange(N, device=u.device)
    length = L + K * N

    def spread(x: Tensor, fill: float) -> Tensor:
        out = x.new_full((*x.shape[:-1], length), fill, dtype=torch.float32)
        return out.index_copy(-1, stream_pos, x.float())

    C_probed = spread(C, 0.0)
    eye = torch.eye(N, device=C.device, dtype=torch.float32)  # (n, probe n)
    C_probed = C_probed.index_copy(-1, probe_pos.flatten(), eye.repeat(1, K).expand(batch, N, K * N))
    return (spread(u, 0.0), spread(delta, PROBE_DT), spread(B, 0.0), C_probed), stream_pos, probe_pos


def scan_with_state_probes(
    ungated_scan: Callable[..., Tensor],
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor,
    ends: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """A whole-sequence scan whose states are differentiable, from a scan that only returns outputs.

    ungated_scan(u, delta, A, B, C, D, delta_bias) -> y (batch, d_inner, L') (softplus on delta, no gate),
    e.g. mamba_ssm's selective_scan_fn with z=None. The states are read by ``insert_state_probes``, so a
    gradient on them flows back through the scan's own backward pass (mamba_ssm's ignores a gradient on
    the last state it returns); no (batch, L, d_inner, N) tensor is formed. Same arguments and results
    as ``selective_scan``: the last state, or with ends (K,) the states (batch, K, d_inner, N) there.
    """
    L = u.shape[-1]
    # made on the device: a tensor copied from the host would wait for the queued kernels
    at = ends if ends is not None else torch.full((1,), L, dtype=torch.long, device=u.device)
    probed, stream_pos, probe_pos = insert_state_probes(u, delta, B, C, at)
    y = ungated_scan(probed[0], probed[1], A, probed[2], probed[3], D, delta_bias)
    gated = y.index_select(-1, stream_pos) * F.silu(z.float())
    batch, d_inner = y.shape[:2]
    states = y.index_select(-1, probe_pos.flatten()).view(batch, d_inner, *probe_pos.shape).transpose(1, 2)
    return gated.to(u.dtype), (states[:, 0] if ends is None else states)


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
    ends: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mamba's scan of a whole sequence; delta goes through softplus(delta + delta_bias).

    u, delta, z: (batch, d_inner, L); A: (d_inner, N) (negative); B, C: (batch, N, L);
    D, delta_bias: (d_inner,).
    Returns y: (batch, d_inner, L) in u's dtype and the last state (batch, d_inner, N) in float32, or with
    ends (K,) (increasing token counts) the states after each of the first ends[k] tokens (batch, K, d_inner, N).
    """
    use_cuda = backend == "cuda" or (backend == "auto" and u.is_cuda and _cuda_scan_module is not None)
    if not use_cuda:
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, ends)
    if _cuda_scan_module is None:
        raise RuntimeError(f"the CUDA selective scan is unavailable ({CUDA_SCAN_IMPORT_ERROR}); "
                           "pip install 'mclstudio[cuda]' on a machine with nvcc")
    # The kernel reads any batch and channel strides; only time must be contiguous.
    u, delta, z = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, z))
    args = (u, delta, A.contiguous(), B.contiguous(), C.contiguous(), D.float(), z, delta_bias.float())
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    if not training and ends is None:
        return _cuda_scan_inference(*args)
    # Our queries are read from states whose gradient mamba_ssm's backward ignores (it returns only the
    # last state, without one): the states are read by probe tokens through the kernel's own outputs.
    assert _cuda_scan_module is not None
    scan_fn = _cuda_scan_module.selective_scan_fn

    def ungated(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, delta_bias: Tensor) -> Tensor:
        return scan_fn(u, delta, A, B, C, D, z=None, delta_bias=delta_bias, delta_softplus=True)

    return scan_with_state_probes(ungated, *args, ends=ends)



def widen(t: Tensor) -> Tensor:
    """At least float32 (float64 stays float64, so tests can check in double precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def mamba_transition(delta: Tensor, A: Tensor, B: Tensor) -> Transition:
    """Mamba-1's zero-order-hold transition: decay exp(delta * A), drive delta * u * B.
    delta: (..., d_inner) after softplus; A: (d_inner, N) negative; B: (..., N)."""
    delta = widen(delta)
    return Transition(delta.unsqueeze(-1) * A, delta, widen(B))


def diagonal_scan(
    u: Tensor,
    z: Tensor,
    C: Tensor,
    D: Tensor,
    transition: Callable[[slice], Transition],
    parallel: bool | None = None,
    ends: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The diagonal recurrence over a whole sequence, in float32 (any device).

    h_t = exp(log_decay_t) * h_{t-1} + rate_t * u_t (x) key_t;  y_t = C_t . h_t + D * u_t, gated by silu(z_t).
    u, z: (batch, d_inner, L); C: (batch, N, L); D: (d_inner,). transition(t_slice) gives the Transition
    of those tokens with time second: (batch, T, d_inner, N), (batch, T, d_inner), (batch, T, N).
    Returns y: (batch, d_inner, L) in u's dtype and the last state (batch, d_inner, N) float32, or with
    ends (K,) (increasing token counts in 0..L) the states after each of the first ends[k] tokens,
    (batch, K, d_inner, N), kept as the scan passes them.

    On a GPU with Triton the whole sequence is one Triton scan (``kernels.diagonal_scan``, with its own
    backward pass). Otherwise time is cut into chunks whose state-independent terms are formed at once
    (memory stays bounded on long streams). Within a chunk the CPU loops over tokens (fewest
    operations), while a GPU solves the chunk in parallel (``_chunk_parallel``: T times the arithmetic,
    but a few large kernels instead of thousands of tiny ones). parallel: force one of the chunked forms
    (None: by device, the Triton scan first).
    """
    dtype_in = u.dtype
    u, z, C = widen(u), widen(z), widen(C)
    if parallel is None and fused_diagonal_scan_supported(u, C.shape[1]):
        move = transition(slice(None))
        y, h = fused_diagonal_scan(move.log_decay, move.rate, move.key, u, C, D, ends)
        return (y * F.silu(z)).to(dtype_in), h
    parallel = u.is_cuda if parallel is None else parallel
    chunk = PARALLEL_CHUNK if parallel else SCAN_CHUNK
    h: Tensor | None = None
    ys = []
    kept: list[Tensor] = []  # states at the ends, in order
    wanted = None if ends is None else ends.tolist()
    for start in range(0, u.shape[2], chunk):
        t_slice = slice(start, start + chunk)
        move = transition(t_slice)
        drive = (move.rate * u[:, :, t_slice].transpose(1, 2)).unsqueeze(-1) * move.key.unsqueeze(-2)
        if h is None:
            h = drive.new_zeros(drive.shape[0], drive.shape[2], drive.shape[3])
        C_chunk = C[:, :, t_slice].transpose(1, 2)  # (batch, T, N)
        if wanted is not None:
            while wanted and wanted[0] <= start:  # ends before this chunk's first token
                kept.append(h)
                wanted.pop(0)
        if parallel:
            y_chunk, hs_chunk = _chunk_parallel(move.log_decay, drive, C_chunk, h)
            h = hs_chunk[:, -1]
            ys.append(y_chunk)
        else:
            decay = torch.exp(move.log_decay)
            hs = []
            for t in range(decay.shape[1]):  # the only sequential part: one fused multiply-add per token
                h = torch.addcmul(drive[:, t], decay[:, t], h)
                hs.append(h)
            hs_chunk = torch.stack(hs, dim=1)
            # the chunk's readout in one contraction (one op per chunk, not one per token)
            ys.append(torch.einsum("btdn,btn->bdt", hs_chunk, C_chunk))
        if wanted is not None:
            while wanted and wanted[0] <= start + hs_chunk.shape[1]:
                kept.append(hs_chunk[:, wanted.pop(0) - start - 1])
    assert h is not None, "empty sequence"
    y = torch.cat(ys, dim=2) + D[:, None] * u
    y = y * F.silu(z)
    return y.to(dtype_in), (h if ends is None else torch.stack(kept, dim=1))


def _chunk_parallel(log_decay: Tensor, drive: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of the recurrence at once: h_t = exp(S_t) h0 + sum_{j<=t} exp(S_t - S_j) drive_j, with S
    the running sum of log_decay in the chunk. log_decay, drive: (batch, T, d, N); C: (batch, T, N);
    h0: (batch, d, N). Returns y (batch, d, T) before D and the gate, and the chunk's states (batch, T, d, N)."""
    S = torch.cumsum(log_decay, dim=1)
    T = S.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=S.device).tril()
    # exp(S_t - S_j) <= 1 for j <= t; the rest is masked before exp so it cannot overflow.
    diff = (S.unsqueeze(2) - S.unsqueeze(1)).masked_fill(~causal[None, :, :, None, None], float("-inf"))
    hs = torch.einsum("btjdn,bjdn->btdn", torch.exp(diff), drive) + torch.exp(S) * h0.unsqueeze(1)
    return torch.einsum("btdn,btn->bdt", hs, C), hs


def selective_scan_reference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor,
    ends: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mamba's scan on ``diagonal_scan``. Same arguments and results as ``selective_scan``."""
    delta = F.softplus(widen(delta) + delta_bias[:, None])
    B = widen(B)
    return diagonal_scan(
        u, z, C, D, lambda t: mamba_transition(delta[:, :, t].transpose(1, 2), A, B[:, :, t].transpose(1, 2)),
        ends=ends,
    )


def diagonal_step(state: Tensor, u: Tensor, z: Tensor, C: Tensor, D: Tensor, move: Transition) -> tuple[Tensor, Tensor]:
    """One token of the recurrence, for any leading batch dims (...), broadcasting the state against them.

    state: (..., d_inner, N) float32; u, z: (..., d_inner); C: (..., N); D: (d_inner,); move: the token's
    Transition. Returns y: (..., d_inner) in u's dtype and the new state (..., d_inner, N) in float32.
    """
    u_f = widen(u)
    new_state = state * torch.exp(move.log_decay) + (move.rate * u_f).unsqueeze(-1) * move.key.unsqueeze(-2)
    y = torch.einsum("...dn,...n->...d", new_state, widen(C)) + D * u_f
    y = y * F.silu(widen(z))
    return y.to(u.dtype), new_state


def diagonal_read(state: Tensor, u: Tensor, z: Tensor, C: Tensor, D: Tensor, move: Transition) -> Tensor:
    """Queries as one more token each after the same state, without building each query's new state.

    state: (B, d_inner, N) float32, or one per query (B, Q, d_inner, N); u, z: (B, Q, d_inner); C: (B, Q, N);
    move: the queries' Transition.
    y_q = sum_n G_q[d, n] h[d, n] + rate_q u_q (key_q . C_q) + D u_q, with G_q = C_q exp(log_decay_q)
    (``query_weights``). Returns y (B, Q, d_inner) in u's dtype.
    """
    # One product summed over n: a compiler fuses it into one pass, never storing (B, Q, d_inner, N).
    recalled = (query_weights(C, move.log_decay) * (state if state.dim() == 4 else state.unsqueeze(1))).sum(-1)
    return read_output(recalled, u, z, C, D, move.rate, move.key)


def read_output(recalled: Tensor, u: Tensor, z: Tensor, C: Tensor, D: Tensor, rate: Tensor, key: Tensor) -> Tensor:
    """A query's read from what it recalls of the state, recalled = sum_n G_q h (B, Q, d_inner) float32:
    y_q = (recalled + rate_q u_q (key_q . C_q) + D u_q) * silu(z_q), in u's dtype. u, z, rate (B, Q,
    d_inner); key, C (B, Q, N)."""
    u_f = widen(u)
    own = widen(rate) * u_f * (widen(key) * widen(C)).sum(-1, keepdim=True)
    return ((recalled + own + D * u_f) * F.silu(widen(z))).to(u.dtype)


def query_weights(C: Tensor, log_decay: Tensor) -> Tensor:
    """G = C exp(log_decay): how much a query reads of each state entry, (..., d_inner, N); also the
    query side of the hidden attention. C: (..., N); log_decay: (..., d_inner, N)."""
    return widen(C).unsqueeze(-2) * torch.exp(log_decay)
