"""The diagonal recurrence of ``scan.diagonal_scan`` as a Triton scan, forward and backward, for
transitions that are not Mamba's (Longhorn's): mamba_ssm's kernel only knows decays exp(delta * A).

    h_t = exp(log_decay_t) * h_{t-1} + rate_t * u_t * key_t,    y_t = C_t . h_t + D * u_t   (before the gate)

One program holds a block of channels' (BLOCK_D x N) states in registers and walks the tokens in order:
one multiply-add per state entry a token, where PyTorch on a GPU solved chunks of 16 tokens at once with
16 times the arithmetic (``scan._chunk_parallel``): Longhorn trained at 22 episodes/s at paper size.
Under autograd the forward pass stores every state (batch, L, d_inner, N), as large as the log-decay
it reads, and the backward pass walks the tokens in reverse:

    dh_t  = dh_{t+1} * exp(log_decay_{t+1}) + dy_t C_t + (the gradient of the state kept after token t)
    dlog_decay_t = dh_t exp(log_decay_t) h_{t-1};   drate_t = sum_n dh_t u_t key_t;   du_t = sum_n dh_t rate_t key_t + D dy_t
    dkey_t = sum_d dh_t rate_t u_t;   dC_t = sum_d dy_t h_t;   dD = sum_t dy_t u_t

Sums over channels cross programs and are atomic adds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclstudio.learners.kernels import fused_kernels_enabled, power_of_2, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _scan_forward_kernel(
        ld_ptr, rate_ptr, key_ptr, u_ptr, C_ptr, D_ptr, y_ptr, hs_ptr, slot_ptr, ends_ptr,
        L, d_inner,
        s_ld_b, s_ld_l, s_rate_b, s_rate_l, s_key_b, s_key_l, s_u_b, s_u_d, s_C_b, s_C_n, s_y_b, s_y_d,
        s_hs_b, s_hs_l, s_ends_b, s_ends_k,
        N: tl.constexpr, BLOCK_D: tl.constexpr, STORE_STATES: tl.constexpr,
    ):
        """Grid (batch, d_inner / BLOCK_D). log_decay (B, L, d, N) with (d, N) contiguous, rate (B, L, d),
        key (B, L, N), u (B, d, L), C (B, N, L); y (B, d, L) before the gate; hs (B, L, d, N) if stored;
        slot (L,): k where the state after token t is wanted as ends[:, k] (B, K, d, N), else -1."""
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, N)
        d_ok = d < d_inner
        dn_ok = d_ok[:, None]
        dn = d[:, None] * N + n[None, :]
        D = tl.load(D_ptr + d, mask=d_ok, other=0.0)
        h = tl.zeros((BLOCK_D, N), tl.float32)
        for t in range(L):
            decay = tl.exp(tl.load(ld_ptr + b * s_ld_b + t * s_ld_l + dn, mask=dn_ok, other=0.0))
            rate = tl.load(rate_ptr + b * s_rate_b + t * s_rate_l + d, mask=d_ok, other=0.0)
            key = tl.load(key_ptr + b * s_key_b + t * s_key_l + n)
            u = tl.load(u_ptr + b * s_u_b + d * s_u_d + t, mask=d_ok, other=0.0)
            C = tl.load(C_ptr + b * s_C_b + n * s_C_n + t)
            h = decay * h + (rate * u)[:, None] * key[None, :]
            if STORE_STATES:
                tl.store(hs_ptr + b * s_hs_b + t * s_hs_l + dn, h, mask=dn_ok)
            y = tl.sum(h * C[None, :], axis=1) + D * u
            tl.store(y_ptr + b * s_y_b + d * s_y_d + t, y, mask=d_ok)
            slot = tl.load(slot_ptr + t)
            tl.store(ends_ptr + b * s_ends_b + slot * s_ends_k + dn, h, mask=dn_ok & (slot >= 0))

    @triton.jit
    def _scan_backward_kernel(
        ld_ptr, rate_ptr, key_ptr, u_ptr, C_ptr, D_ptr, hs_ptr, dy_ptr, slot_ptr, dends_ptr,
        dld_ptr, drate_ptr, dkey_ptr, du_ptr, dC_ptr, dD_ptr,
        L, d_inner,
        s_ld_b, s_ld_l, s_rate_b, s_rate_l, s_key_b, s_key_l, s_u_b, s_u_d, s_C_b, s_C_n, s_dy_b, s_dy_d,
        s_hs_b, s_hs_l, s_ends_b, s_ends_k,
        N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Grid (batch, d_inner / BLOCK_D): the reverse walk of the module docstring. Gradients are laid
        out like their inputs (dld like log_decay, drate like rate, du like u, dkey like key, dC like C;
        dkey, dC and dD are zero-filled and summed into atomically)."""
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, N)
        d_ok = d < d_inner
        dn_ok = d_ok[:, None]
        dn = d[:, None] * N + n[None, :]
        D = tl.load(D_ptr + d, mask=d_ok, other=0.0)
        dh = tl.zeros((BLOCK_D, N), tl.float32)
        dD = tl.zeros((BLOCK_D,), tl.float32)
        for i in range(L):
            t = L - 1 - i
            slot = tl.load(slot_ptr + t)  # the gradient of a state kept at t enters here
            dh += tl.load(dends_ptr + b * s_ends_b + slot * s_ends_k + dn, mask=dn_ok & (slot >= 0), other=0.0)
            dy = tl.load(dy_ptr + b * s_dy_b + d * s_dy_d + t, mask=d_ok, other=0.0)
            C = tl.load(C_ptr + b * s_C_b + n * s_C_n + t)
            h = tl.load(hs_ptr + b * s_hs_b + t * s_hs_l + dn, mask=dn_ok, other=0.0)
            h_prev = tl.load(hs_ptr + b * s_hs_b + (t - 1) * s_hs_l + dn, mask=dn_ok & (t > 0), other=0.0)
            u = tl.load(u_ptr + b * s_u_b + d * s_u_d + t, mask=d_ok, other=0.0)
            rate = tl.load(rate_ptr + b * s_rate_b + t * s_rate_l + d, mask=d_ok, other=0.0)
            key = tl.load(key_ptr + b * s_key_b + t * s_key_l + n)
            decay = tl.exp(tl.load(ld_ptr + b * s_ld_b + t * s_ld_l + dn, mask=dn_ok, other=0.0))
            dh += dy[:, None] * C[None, :]
            tl.atomic_add(dC_ptr + b * s_C_b + n * s_C_n + t, tl.sum(dy[:, None] * h, axis=0))
            dD += dy * u
            tl.store(dld_ptr + b * s_ld_b + t * s_ld_l + dn, dh * decay * h_prev, mask=dn_ok)
            dh_key = tl.sum(dh * key[None, :], axis=1)  # (BLOCK_D,)
            tl.store(drate_ptr + b * s_rate_b + t * s_rate_l + d, dh_key * u, mask=d_ok)
            tl.store(du_ptr + b * s_u_b + d * s_u_d + t, dh_key * rate + D * dy, mask=d_ok)
            tl.atomic_add(dkey_ptr + b * s_key_b + t * s_key_l + n, tl.sum(dh * (rate * u)[:, None], axis=0))
            dh = dh * decay
        tl.atomic_add(dD_ptr + d, dD, mask=d_ok)


BLOCK_D = 32  # channels a program: 32 x 16 states in registers


def fused_diagonal_scan_supported(u: Tensor, N: int) -> bool:
    """Whether ``fused_diagonal_scan`` takes this sequence: u on a GPU, kernels on, N a power of 2."""
    return u.is_cuda and fused_kernels_enabled() and power_of_2(N)


def end_slots(ends: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """For states wanted after the first ends[k] tokens (K,) (non-decreasing, in 0..length) of a
    length-token stream: slot (length,) int32, the slot the state after token t is kept in (else -1), and
    for each k the slot holding its state. Slot k belongs to the first of equal ends; an end of 0 gets a
    slot nothing is written to (the empty state, zeros). Made on the device without reading a value
    back (no unique, no count), so a GPU is never waited for."""
    first = torch.searchsorted(ends, ends)  # the first of each run of equal ends
    slot = torch.full((length + 1,), -1, dtype=torch.int32, device=ends.device)
    slot[torch.where(ends > 0, ends - 1, length)] = first.to(torch.int32)  # ends of 0 write past the stream
    return slot[:length], first


class DiagonalScan(torch.autograd.Function):
    """(log_decay, rate, key, u, C, D, slot) -> y before the gate (B, d, L) and the states kept at the
    slots (B, K, d, N), float32."""

    @staticmethod
    def forward(ctx, log_decay: Tensor, rate: Tensor, key: Tensor, u: Tensor, C: Tensor, D: Tensor, slot: Tensor, kept: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        log_decay, rate, key, u, C, D = (t.float().contiguous() for t in (log_decay, rate, key, u, C, D))
        batch, L, d_inner, N = log_decay.shape
        y = u.new_empty(batch, d_inner, L)
        states = u.new_zeros(batch, kept, d_inner, N)
        store = any(ctx.needs_input_grad)
        hs = log_decay.new_empty(log_decay.shape) if store else log_decay.new_empty(1, 1, 1, 1)
        _scan_forward_kernel[(batch, triton.cdiv(d_inner, BLOCK_D))](
            log_decay, rate, key, u, C, D, y, hs, slot, states, L, d_inner,
            log_decay.stride(0), log_decay.stride(1), rate.stride(0), rate.stride(1), key.stride(0), key.stride(1),
            u.stride(0), u.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1),
            hs.stride(0), hs.stride(1), states.stride(0), states.stride(1),
            N=N, BLOCK_D=BLOCK_D, STORE_STATES=store,
        )
        if store:
            ctx.save_for_backward(log_decay, rate, key, u, C, D, hs, slot)
        return y, states

    @staticmethod
    def backward(ctx, dy: Tensor, dstates: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        log_decay, rate, key, u, C, D, hs, slot = ctx.saved_tensors
        batch, L, d_inner, N = log_decay.shape
        dy = torch.zeros_like(u) if dy is None else dy.float().contiguous()
        dstates = hs.new_zeros(batch, 1, d_inner, N) if dstates is None else dstates.float().contiguous()
        dld, drate, du = torch.empty_like(log_decay), torch.empty_like(rate), torch.empty_like(u)
        dkey, dC, dD = torch.zeros_like(key), torch.zeros_like(C), torch.zeros_like(D)
        _scan_backward_kernel[(batch, triton.cdiv(d_inner, BLOCK_D))](
            log_decay, rate, key, u, C, D, hs, dy, slot, dstates, dld, drate, dkey, du, dC, dD, L, d_inner,
            log_decay.stride(0), log_decay.stride(1), rate.stride(0), rate.stride(1), key.stride(0), key.stride(1),
            u.stride(0), u.stride(1), C.stride(0), C.stride(1), dy.stride(0), dy.stride(1),
            hs.stride(0), hs.stride(1), dstates.stride(0), dstates.stride(1),
            N=N, BLOCK_D=BLOCK_D,
        )
        return dld, drate, dkey, du, dC, dD, None, None


def fused_diagonal_scan(
    log_decay: Tensor, rate: Tensor, key: Tensor, u: Tensor, C: Tensor, D: Tensor, ends: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The recurrence over a whole sequence before the gate. log_decay (B, L, d_inner, N), rate
    (B, L, d_inner), key (B, L, N) (a whole-sequence Transition, time second); u (B, d_inner, L); C (B, N, L);
    D (d_inner,). Returns y (B, d_inner, L) and the last state (B, d_inner, N), or with ends (K,) (token
    counts in 0..L) the states after each of the first ends[k] tokens (B, K, d_inner, N), float32."""
    L = u.shape[-1]
    at = ends if ends is not None else torch.full((1,), L, dtype=torch.long, device=u.device)
    slot, index = end_slots(at, L)
    y, states = DiagonalScan.apply(log_decay, rate, key, u, C, D, slot, at.shape[0])
    return y, (states[:, 0] if ends is None else states[:, index])
