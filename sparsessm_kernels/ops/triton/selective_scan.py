"""Triton prefill kernels of the (sparse) selective scan, forward only.

Semantics are exactly :func:`sparsessm_kernels.ops.reference.selective_scan_ref` (see
``docs/semantics.md``); this module only decides how the work is laid out on the GPU.

Work units
----------
A program owns ``BLOCK_D`` channels of one batch row and a range of timesteps, walked in chunks
of ``T`` timesteps. Per chunk it loads the ``(BLOCK_D, T)`` tiles of ``u`` and ``delta``
(``delta_bias`` and softplus applied in registers) once, then loops over the **kept state slots**
of its channels only:

* dense: slot ``j`` is state ``j``;
* column mask: slot ``j`` is state ``kept_idx[j]``, so the ``B`` / ``C`` rows are read through the
  kept-index table (callers need not compact ``x_proj``);
* per-channel mask (unstructured, N:M): slot ``j`` of channel ``c`` is ``kept_idx[c, j]``; the
  ``B`` / ``C`` tiles are gathered per channel (the ``(n, T)`` rows of one chunk stay in L1/L2),
  padded slots ``j >= kept_count[c]`` are masked, and the slot loop of a program stops at the
  largest ``kept_count`` of its channels.

For each slot the discretisation ``dA = exp(dt * A)`` and the drive ``dt * u * B`` are formed for
the whole tile and the linear recurrence ``h_t = dA_t h_{t-1} + dBu_t`` is solved along the time
axis with ``tl.associative_scan`` over the pairs ``(dA, dBu)``; the state entering the chunk is
added as ``cumprod(dA) * h_in`` and the state leaving it is kept (one value per channel and slot)
in a ``(BLOCK_D, next_pow2(k))`` register tile that carries over to the next chunk. ``C * h``
accumulates the output. So pruned states cost no ``exp``, no recurrence and no ``C * h``.

Under ``zero_transition`` the pruned states' feed-through ``dt * u * sum_{pruned} B * C`` needs
no recurrence: for a column mask the sum runs over the pruned rows (the mask's zero entries;
one ``T``-vector per row, shared by the block's channels); for a per-channel mask it is
``total - kept``, the sum over all ``n`` rows (shared) minus the kept products accumulated in
the slot loop. ``D``, the ``silu(z)``
gate and the down-cast to ``u.dtype`` finish the tile.

Parallel over time (two-pass chunked scan)
-----------------------------------------
At small ``batch * d / BLOCK_D`` (batch 1) the channels alone do not fill the GPU (fewer than
twice the programs it holds at once), so the sequence is also split into ``S`` segments of at
least two chunks and three kernels run:

1. ``_segment_state_kernel`` (grid ``d-blocks x (S-1) x b``): for every segment but the last, the
   state at its end starting from zero, ``E_s = sum_t exp(A_s * R_t) * dt_t u_t B_{s,t}`` with
   ``R_t`` the sum of ``dt`` after ``t`` inside the chunk (a reverse ``cumsum``; no scan
   needed), chained over the segment's chunks by ``E <- exp(A * sum dt) * E + E_chunk``, and the
   segment's ``sum dt`` (its total decay is ``exp(A * sum dt)``).
2. ``_segment_carry_kernel`` (grid ``(d*k)-blocks x b``): sequential over segments,
   ``h_in[s+1] = exp(A * sumdt[s]) * h_in[s] + E_s``, written in place of ``E``.
3. ``_scan_kernel`` (grid ``d-blocks x S x b``): the chunked scan above, starting every segment
   from its ``h_in``.

When ``batch * d-blocks`` already fills the GPU, ``S = 1`` and only the third kernel runs (one
pass). The choice depends on shapes only: no host synchronisation, so CUDA graphs capture it.

A time-invariant ``(d, n)`` B or C is passed to the kernels as a grouped ``(b, g = d, n, l)`` view
with stride 0 over batch and time (no copy): every channel is its own group, its rows gathered
per channel like a grouped B / C inside a channel block (not specialised further: the ``T`` loads
of a row hit the same address).

``return_last_state`` is written by the program of the last segment: the carried slots are
scattered to ``(b, d, n)`` (zero elsewhere, so pruned entries are 0). Math is float32 (float64
when an input is float64); ``out`` is stored in ``u.dtype``.

Block sizes are fixed, untuned defaults (``BLOCK_D`` 4, ``T`` 64, 4 warps: no register spills in
any variant when compiled for sm_90); no autotuning.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRETED,
    acc_dtype,
    bc_strides,
    device_guard,
    int_dummy,
    next_pow2,
    silu,
    sm_count,
    softplus,
    time_invariant_as_grouped,
)

MASK_DENSE, MASK_COLUMN, MASK_CHANNEL = 0, 1, 2
FT_NONE, FT_PRUNED_ROWS, FT_TOTAL_MINUS_KEPT = 0, 1, 2


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _slot_states(
    kidx_ptr,
    kcnt_ptr,
    offs_d,
    dmask,
    slots,
    k,
    MASK_KIND: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KB: tl.constexpr,
):
    """State index ``(BLOCK_D, KB)`` of every (channel, slot) and whether the slot is real."""
    zero = tl.zeros([BLOCK_D, KB], dtype=tl.int32)
    if MASK_KIND == 0:
        s = slots[None, :] + zero
        valid = dmask[:, None] & (slots[None, :] < k)
    elif MASK_KIND == 1:
        s1 = tl.load(kidx_ptr + slots, mask=slots < k, other=0)
        s = s1[None, :] + zero
        valid = dmask[:, None] & (slots[None, :] < k)
    else:
        cnt = tl.load(kcnt_ptr + offs_d, mask=dmask, other=0)
        valid = dmask[:, None] & (slots[None, :] < cnt[:, None])
        s = tl.load(kidx_ptr + offs_d[:, None] * k + slots[None, :], mask=valid, other=0)
    return s, valid


@triton.jit
def _slot(kidx_ptr, kcnt_ptr, A_ptr, j, offs_d, dmask, cnt, k, sA_d, sA_n, MASK_KIND: tl.constexpr):
    """Slot ``j``: its state index (scalar, or per channel), validity per channel and ``A``."""
    if MASK_KIND == 0:
        s = j
        valid = dmask
    elif MASK_KIND == 1:
        s = tl.load(kidx_ptr + j)
        valid = dmask
    else:
        valid = dmask & (j < cnt)
        s = tl.load(kidx_ptr + offs_d * k + j, mask=valid, other=0)
    A_j = tl.load(A_ptr + offs_d * sA_d + s * sA_n, mask=valid, other=0.0)
    return s, valid, A_j


@triton.jit
def _rows(base, goff, goff_vec, s, offs, tmask, valid, s_n, s_l, ACC: tl.constexpr, ROW: tl.constexpr):
    """B or C of state ``s`` over the chunk: a shared ``(1, T)`` row (``ROW``) or a ``(BLOCK_D, T)``
    gather (per-channel state index and/or per-channel group)."""
    if ROW:
        r = tl.load(base + goff + s * s_n + offs * s_l, mask=tmask, other=0.0).to(ACC)
        res = r[None, :]
    else:
        off = goff_vec + s * s_n  # s: scalar (shared state) or (BLOCK_D,) (per-channel state)
        ptr = base + off[:, None] + offs[None, :] * s_l
        res = tl.load(ptr, mask=valid[:, None] & tmask[None, :], other=0.0).to(ACC)
    return res


@triton.jit
def _chunk_inputs(
    u_b, dt_b, bias, offs_d, dmask, offs, tmask, su_d, su_l, sdt_d, sdt_l,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """``dt`` (bias, softplus; 0 outside the tile so padded steps are identities) and ``u``."""
    m2 = dmask[:, None] & tmask[None, :]
    dt = tl.load(dt_b + offs_d[:, None] * sdt_d + offs[None, :] * sdt_l, mask=m2, other=0.0).to(ACC)
    if HAS_BIAS:
        dt = dt + bias[:, None]
    if SOFTPLUS:
        dt = softplus(dt)
    dt = tl.where(m2, dt, 0.0)
    uu = tl.load(u_b + offs_d[:, None] * su_d + offs[None, :] * su_l, mask=m2, other=0.0).to(ACC)
    return dt, uu


@triton.jit
def _segment_state_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, kidx_ptr, kcnt_ptr, ends_ptr, dtsum_ptr,
    d, l, k, n_seg, seg_len, dpg_B,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n, sB_b, sB_g, sB_n, sB_l, s_bias,
    MASK_KIND: tl.constexpr, ROW_B: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, T: tl.constexpr, KB: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Pass 1: end state (from zero) and ``sum dt`` of one segment, for every kept slot."""
    pid_d = tl.program_id(0)
    seg = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < d
    offs_t = tl.arange(0, T)
    slots = tl.arange(0, KB)

    if MASK_KIND == 2:
        cnt = tl.load(kcnt_ptr + offs_d, mask=dmask, other=0)
        k_blk = tl.max(cnt, axis=0)
    else:
        cnt = tl.zeros([BLOCK_D], dtype=tl.int32)
        k_blk = k
    s_all, v_all = _slot_states(kidx_ptr, kcnt_ptr, offs_d, dmask, slots, k, MASK_KIND, BLOCK_D, KB)
    A_all = tl.load(A_ptr + offs_d[:, None] * sA_d + s_all * sA_n, mask=v_all, other=0.0).to(ACC)
    bias = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=dmask, other=0.0).to(ACC)
    grp_B = offs_d // dpg_B
    goff_B = ((pid_d * BLOCK_D) // dpg_B) * sB_g
    u_b = u_ptr + bi * su_b
    dt_b = dt_ptr + bi * sdt_b
    B_b = B_ptr + bi * sB_b

    E = tl.zeros([BLOCK_D, KB], dtype=ACC)
    total = tl.zeros([BLOCK_D], dtype=ACC)
    t_begin = seg * seg_len
    t_end = tl.minimum(t_begin + seg_len, l)
    for t0 in range(t_begin, t_end, T):
        offs = t0 + offs_t
        tmask = offs < t_end
        dt, uu = _chunk_inputs(
            u_b, dt_b, bias, offs_d, dmask, offs, tmask, su_d, su_l, sdt_d, sdt_l, HAS_BIAS, SOFTPLUS, ACC
        )
        dtu = dt * uu
        csum = tl.sum(dt, axis=1)
        after = tl.cumsum(dt, axis=1, reverse=True) - dt  # sum of dt after t, inside the chunk
        E = E * tl.exp(A_all * csum[:, None])
        for j in range(0, k_blk):
            s, valid, A_j = _slot(kidx_ptr, kcnt_ptr, A_ptr, j, offs_d, dmask, cnt, k, sA_d, sA_n, MASK_KIND)
            Bj = _rows(B_b, goff_B, grp_B * sB_g, s, offs, tmask, valid, sB_n, sB_l, ACC, ROW_B)
            w = tl.exp(A_j.to(ACC)[:, None] * after)
            local = tl.sum(w * dtu * Bj, axis=1)
            E = tl.where(slots[None, :] == j, E + local[:, None], E)
        total += csum

    base = (bi * n_seg + seg) * d
    tl.store(
        ends_ptr + (base + offs_d[:, None]) * k + slots[None, :],
        E,
        mask=dmask[:, None] & (slots[None, :] < k),
    )
    tl.store(dtsum_ptr + base + offs_d, total, mask=dmask)


@triton.jit
def _segment_carry_kernel(
    A_ptr, kidx_ptr, ends_ptr, dtsum_ptr, d, k, n_seg, sA_d, sA_n,
    MASK_KIND: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Carry pass: state entering every segment, sequential over segments, in place of ``ends``."""
    pid = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < d * k
    c = offs // k
    j = offs % k
    if MASK_KIND == 0:
        s = j
    elif MASK_KIND == 1:
        s = tl.load(kidx_ptr + j, mask=m, other=0)
    else:
        s = tl.load(kidx_ptr + offs, mask=m, other=0)  # padded slots: their E is 0, carry stays 0
    A_v = tl.load(A_ptr + c * sA_d + s * sA_n, mask=m, other=0.0).to(ACC)
    carry = tl.zeros([BLOCK], dtype=ACC)
    for seg in range(0, n_seg - 1):
        base = (bi * n_seg + seg) * d
        e = tl.load(ends_ptr + base * k + offs, mask=m, other=0.0)
        ds = tl.load(dtsum_ptr + base + c, mask=m, other=0.0)
        tl.store(ends_ptr + base * k + offs, carry, mask=m)
        carry = tl.exp(A_v * ds) * carry + e
    tl.store(ends_ptr + (bi * n_seg + n_seg - 1) * d * k + offs, carry, mask=m)


@triton.jit
def _scan_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, kidx_ptr, kcnt_ptr, colmask_ptr,
    hin_ptr, out_ptr, last_ptr,
    d, l, n, k, n_seg, seg_len, dpg_B, dpg_C,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, s_D, s_bias,
    MASK_KIND: tl.constexpr, FT_MODE: tl.constexpr, ROW_B: tl.constexpr, ROW_C: tl.constexpr,
    UNI_B: tl.constexpr, UNI_C: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_HIN: tl.constexpr, RETURN_LAST: tl.constexpr,
    BLOCK_D: tl.constexpr, T: tl.constexpr, KB: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Pass 2 (or the single pass): chunked scan of one segment over the kept slots."""
    pid_d = tl.program_id(0)
    seg = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < d
    offs_t = tl.arange(0, T)
    slots = tl.arange(0, KB)

    if MASK_KIND == 2:
        cnt = tl.load(kcnt_ptr + offs_d, mask=dmask, other=0)
        k_blk = tl.max(cnt, axis=0)
    else:
        cnt = tl.zeros([BLOCK_D], dtype=tl.int32)
        k_blk = k
    bias = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=dmask, other=0.0).to(ACC)
    grp_B = offs_d // dpg_B
    grp_C = offs_d // dpg_C
    goff_B = ((pid_d * BLOCK_D) // dpg_B) * sB_g
    goff_C = ((pid_d * BLOCK_D) // dpg_C) * sC_g
    u_b = u_ptr + bi * su_b
    dt_b = dt_ptr + bi * sdt_b
    B_b = B_ptr + bi * sB_b
    C_b = C_ptr + bi * sC_b

    slot_mask = dmask[:, None] & (slots[None, :] < k)
    if HAS_HIN:
        hin = hin_ptr + ((bi * n_seg + seg) * d + offs_d[:, None]) * k + slots[None, :]
        carry = tl.load(hin, mask=slot_mask, other=0.0).to(ACC)
    else:
        carry = tl.zeros([BLOCK_D, KB], dtype=ACC)

    t_begin = seg * seg_len
    t_end = tl.minimum(t_begin + seg_len, l)
    for t0 in range(t_begin, t_end, T):
        offs = t0 + offs_t
        tmask = offs < t_end
        dt, uu = _chunk_inputs(
            u_b, dt_b, bias, offs_d, dmask, offs, tmask, su_d, su_l, sdt_d, sdt_l, HAS_BIAS, SOFTPLUS, ACC
        )
        dtu = dt * uu
        y = tl.zeros([BLOCK_D, T], dtype=ACC)
        kept_bc = tl.zeros([BLOCK_D, T], dtype=ACC)
        for j in range(0, k_blk):
            s, valid, A_j = _slot(kidx_ptr, kcnt_ptr, A_ptr, j, offs_d, dmask, cnt, k, sA_d, sA_n, MASK_KIND)
            Bj = _rows(B_b, goff_B, grp_B * sB_g, s, offs, tmask, valid, sB_n, sB_l, ACC, ROW_B)
            Cj = _rows(C_b, goff_C, grp_C * sC_g, s, offs, tmask, valid, sC_n, sC_l, ACC, ROW_C)
            dA = tl.exp(dt * A_j.to(ACC)[:, None])
            a_cum, h = tl.associative_scan((dA, dtu * Bj), 1, _combine)
            h_in = tl.sum(tl.where(slots[None, :] == j, carry, 0.0), axis=1)
            h = h + a_cum * h_in[:, None]
            y += h * Cj
            h_out = tl.sum(tl.where(offs_t[None, :] == T - 1, h, 0.0), axis=1)
            carry = tl.where(slots[None, :] == j, h_out[:, None], carry)
            if FT_MODE == 2:
                kept_bc += Bj * Cj
        if FT_MODE == 1:  # column mask: sum over the pruned rows, shared by the block's channels
            if UNI_B and UNI_C:
                ft = tl.zeros([1, T], dtype=ACC)
            else:
                ft = tl.zeros([BLOCK_D, T], dtype=ACC)
            for s in range(0, n):
                if tl.load(colmask_ptr + s) == 0:  # a pruned row (kept rows are skipped)
                    Bs = _rows(B_b, goff_B, grp_B * sB_g, s, offs, tmask, dmask, sB_n, sB_l, ACC, UNI_B)
                    Cs = _rows(C_b, goff_C, grp_C * sC_g, s, offs, tmask, dmask, sC_n, sC_l, ACC, UNI_C)
                    ft += Bs * Cs
            y += dtu * ft
        elif FT_MODE == 2:  # per-channel mask: all rows minus the kept products
            if UNI_B and UNI_C:
                tot = tl.zeros([1, T], dtype=ACC)
            else:
                tot = tl.zeros([BLOCK_D, T], dtype=ACC)
            for s in range(0, n):
                Bs = _rows(B_b, goff_B, grp_B * sB_g, s, offs, tmask, dmask, sB_n, sB_l, ACC, UNI_B)
                Cs = _rows(C_b, goff_C, grp_C * sC_g, s, offs, tmask, dmask, sC_n, sC_l, ACC, UNI_C)
                tot += Bs * Cs
            y += dtu * (tot - kept_bc)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d * s_D, mask=dmask, other=0.0).to(ACC)
            y += uu * Dv[:, None]
        m2 = dmask[:, None] & tmask[None, :]
        if HAS_Z:
            zz = tl.load(
                z_ptr + bi * sz_b + offs_d[:, None] * sz_d + offs[None, :] * sz_l, mask=m2, other=0.0
            ).to(ACC)
            y = y * silu(zz)
        out_ptrs = out_ptr + (bi * d + offs_d[:, None]) * l + offs[None, :]
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=m2)

    if RETURN_LAST:  # noqa: SIM102 (a compile-time flag, then a runtime condition)
        if seg == n_seg - 1:
            s_all, v_all = _slot_states(kidx_ptr, kcnt_ptr, offs_d, dmask, slots, k, MASK_KIND, BLOCK_D, KB)
            tl.store(last_ptr + (bi * d + offs_d[:, None]) * n + s_all, carry, mask=v_all)


def _config(b: int, d: int, l: int, kb: int, device: torch.device) -> tuple[int, int, int]:
    """``(BLOCK_D, T, num_warps)``: fixed, untuned defaults."""
    if INTERPRETED:  # the interpreter pays per op, not per element: fewer, wider programs
        return min(32, next_pow2(d)), 32, 4
    # (4, 64) keeps every variant (dense to n=256, gathers of per-channel masks) free of register
    # spills on sm_90 with Triton 3.9 (72-118 registers at 4 warps); untimed.
    return min(4, next_pow2(d)), 64, 4


RESIDENT_PER_SM = 6
"""Programs of the scan kernel resident per SM (about 72-118 registers x 128 threads)."""


def _segments(b: int, d_blocks: int, n_chunks: int, device: torch.device) -> int:
    """Segments per sequence: the two-pass scan when ``batch * d_blocks`` programs would leave the
    device idle or end in a long partial wave (programs are long: they walk the whole sequence)."""
    target = 2 * RESIDENT_PER_SM * sm_count(device)
    have = b * d_blocks
    if have == 0 or have >= target or n_chunks < 4:
        return 1
    return max(1, min(n_chunks // 2, math.ceil(target / have)))


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
    state_mask: torch.Tensor | None,
    kept_idx: torch.Tensor | None,
    kept_count: torch.Tensor | None,
    pruned_states: str,
    *,
    block_d: int | None = None,
    chunk: int | None = None,
    n_segments: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selective scan on the Triton kernels; arguments validated by the caller (``ops.dispatch``).

    Same contract as ``torch_backend.selective_scan_torch``: returns ``(out, last_state or None)``.
    ``block_d`` (power of 2), ``chunk`` (timesteps per chunk, power of 2) and ``n_segments``
    (time segments, i.e. the two-pass scan when > 1) override the defaults (for tests and tuning).
    """
    b, d, l = u.shape
    n = A.shape[1]
    dev = u.device
    acc_torch, acc_tl = acc_dtype(u, delta, A, B, C, D, z, delta_bias)
    B, C = time_invariant_as_grouped(B, b, l), time_invariant_as_grouped(C, b, l)
    if state_mask is None:
        mask_kind, k = MASK_DENSE, n
    elif state_mask.dim() == 1:
        mask_kind, k = MASK_COLUMN, int(kept_idx.shape[0])
    else:
        mask_kind, k = MASK_CHANNEL, int(kept_idx.shape[1])
    zero_transition = pruned_states == "zero_transition"
    ft_mode = FT_NONE
    if zero_transition and mask_kind == MASK_COLUMN and k < n:
        ft_mode = FT_PRUNED_ROWS
    elif zero_transition and mask_kind == MASK_CHANNEL:
        ft_mode = FT_TOTAL_MINUS_KEPT
    kidx = kept_idx.contiguous() if kept_idx is not None else None
    kcnt = kept_count.contiguous() if kept_count is not None else None

    gB, sB_b, sB_g, sB_n = bc_strides(B, B.dim() == 4)
    gC, sC_b, sC_g, sC_n = bc_strides(C, C.dim() == 4)
    dpg_B, dpg_C = d // gB, d // gC
    kb = next_pow2(max(k, 1))
    cfg_block_d, cfg_t, num_warps = _config(b, d, l, kb, dev)
    block_d = block_d or cfg_block_d
    T = chunk or cfg_t
    d_blocks = triton.cdiv(d, block_d)
    uni_B = gB == 1 or dpg_B % block_d == 0
    uni_C = gC == 1 or dpg_C % block_d == 0
    row_B = uni_B and mask_kind != MASK_CHANNEL
    row_C = uni_C and mask_kind != MASK_CHANNEL

    n_chunks = triton.cdiv(l, T)
    n_seg = n_segments or _segments(b, d_blocks, n_chunks, dev)
    n_seg = max(1, min(n_seg, n_chunks))
    seg_len = triton.cdiv(n_chunks, n_seg) * T
    n_seg = triton.cdiv(l, seg_len)

    out = torch.empty((b, d, l), dtype=u.dtype, device=dev)
    last = torch.zeros((b, d, n), dtype=acc_torch, device=dev) if return_last_state else None
    dummy = out
    bias = delta_bias if delta_bias is not None else dummy
    s_bias = delta_bias.stride(0) if delta_bias is not None else 0
    idummy = int_dummy(dev)  # for integer-pointer arguments the kernel variant never reads
    kidx_arg = kidx if kidx is not None and kidx.numel() else idummy
    colmask = state_mask.contiguous().view(torch.uint8) if ft_mode == FT_PRUNED_ROWS else idummy
    kcnt_arg = kcnt if kcnt is not None else idummy
    common = {"MASK_KIND": mask_kind, "BLOCK_D": block_d, "ACC": acc_tl}

    with device_guard(dev):
        hin = dummy
        if n_seg > 1 and k > 0:
            hin = torch.empty((b, n_seg, d, k), dtype=acc_torch, device=dev)
            dtsum = torch.empty((b, n_seg, d), dtype=acc_torch, device=dev)
            _segment_state_kernel[(d_blocks, n_seg - 1, b)](
                u, delta, A, B, bias, kidx_arg, kcnt_arg, hin, dtsum,
                d, l, k, n_seg, seg_len, dpg_B,
                *u.stride(), *delta.stride(), *A.stride(), sB_b, sB_g, sB_n, B.stride(-1), s_bias,
                ROW_B=row_B, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                T=T, KB=kb, num_warps=num_warps, **common,
            )  # fmt: skip
            carry_block = 256 if not INTERPRETED else 1024
            _segment_carry_kernel[(triton.cdiv(d * k, carry_block), b)](
                A, kidx_arg, hin, dtsum, d, k, n_seg, *A.stride(),
                MASK_KIND=mask_kind, BLOCK=carry_block, ACC=acc_tl, num_warps=4,
            )  # fmt: skip
        _scan_kernel[(d_blocks, n_seg, b)](
            u, delta, A, B, C,
            D if D is not None else dummy, z if z is not None else dummy, bias,
            kidx_arg, kcnt_arg, colmask,
            hin, out, last if last is not None else dummy,
            d, l, n, k, n_seg, seg_len, dpg_B, dpg_C,
            *u.stride(), *delta.stride(), *(z.stride() if z is not None else (0, 0, 0)), *A.stride(),
            sB_b, sB_g, sB_n, B.stride(-1), sC_b, sC_g, sC_n, C.stride(-1),
            D.stride(0) if D is not None else 0, s_bias,
            FT_MODE=ft_mode, ROW_B=row_B, ROW_C=row_C, UNI_B=uni_B, UNI_C=uni_C,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_HIN=n_seg > 1 and k > 0, RETURN_LAST=return_last_state,
            T=T, KB=kb, num_warps=num_warps, **common,
        )  # fmt: skip
    return out, last
