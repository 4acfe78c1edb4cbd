"""Triton kernels of the chunked Mamba-2 (SSD) scan at ``k`` kept states per head.

Semantics: :func:`sparsessm_kernels.ops.ssd.ssd_scan_ref`. The decomposition is the chunked SSD
of the Mamba-2 paper (the one mamba_ssm's ``mamba_chunk_scan_combined`` also runs), in four
launches over chunks of ``Q`` timesteps:

1. ``_ssd_cumsum_kernel``: per ``(batch, head, chunk)``, the time step ``dt`` (bias, softplus,
   clamp) and the running sum of ``dt * A`` inside the chunk (base 2), both float32 ``(b, h, c, Q)``;
2. ``_ssd_chunk_state_kernel``: each chunk's end state from a zero start,
   ``sum_j exp(cs_last - cs_j) dt_j x_j B_j^T``, ``(b, c, h, p, k)``;
3. ``_ssd_state_passing_kernel``: a loop over chunks, ``start_c = carry_c * start_{c-1} +
   state_{c-1}``, written over the chunk states in place (from ``initial_states``), and the final
   state;
4. ``_ssd_chunk_scan_kernel``: the output, ``y_i = exp(cs_i) C_i start_c + sum_{j <= i} (C_i . B_j)
   exp(cs_i - cs_j) dt_j x_j`` plus ``D x``, gated by ``silu(z)``.

**Sparse states.** With a state mask the kernels work on the ``k_max`` kept columns of each head:
``B`` and ``C`` are gathered through the per-head kept-index table inside kernels 2 and 4 (no
gathered copy is materialised), the chunk states are ``(b, c, h, p, k_max)``, and the products
run on ``k`` columns. Under ``"zero_transition"`` the pruned columns' feed-through
``dt_i x_i sum_{pruned s} B_i[s] C_i[s]`` is one ``n``-reduction per timestep in kernel 4.
**Head transition pruning**: a head whose transition is zeroed has ``L = I`` inside a chunk,
no incoming state and a chunk state equal to the last step's drive. ``seq_idx`` masks ``L`` and
the incoming state where the sequence changes, as in the reference.

Matrix products run on ``tl.dot`` with float32 accumulation: ``C_i . B_j`` on 16-bit ``B`` / ``C``
as they are (exact products); the products with float32 operands (decayed ``dt x``, states) at
``tf32x3`` (about float32's precision) for float32 inputs and ``tf32`` for 16-bit inputs (finer than
their output's rounding); float64 in float64; exact under the interpreter.
Block sizes: :func:`ssd_scan_config`. :func:`plan_ssd_scan` lists the launches without running
them (for the ahead-of-time compile report).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..triton._common import (
    INTERPRETED,
    LOG2E,
    Launch,
    acc_dtype,
    device_guard,
    int_dummy,
    next_pow2,
    silu,
    softplus,
)


@triton.jit
def _ssd_cumsum_kernel(
    dt_ptr, A_ptr, bias_ptr, htrans_ptr, dtd_ptr, cs_ptr,
    l, h, nchunks, dt_lo, dt_hi, s_tb, s_tl, s_th,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, Q: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1)
    bi = (bh // h).to(tl.int64)
    hi = bh % h
    t = c * Q + tl.arange(0, Q)
    tm = t < l
    dt = tl.load(dt_ptr + bi * s_tb + t * s_tl + hi * s_th, mask=tm, other=0.0).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + hi + t * 0).to(ACC)
    if SOFTPLUS:
        dt = softplus(dt)
    dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    dt = tl.where(tm, dt, 0.0)  # padded steps: no decay, no drive
    A2 = tl.load(A_ptr + hi + t * 0).to(ACC) * LOG2E
    cs = tl.cumsum(dt * A2, axis=0)
    base = (bh * nchunks + c).to(tl.int64) * Q + tl.arange(0, Q)
    tl.store(dtd_ptr + base, dt.to(dtd_ptr.dtype.element_ty))
    tl.store(cs_ptr + base, cs.to(cs_ptr.dtype.element_ty))


@triton.jit
def _gather_tile(
    ptr, rows, row_ok, s_row, cols, col_ok, s_col, ACC: tl.constexpr
):  # fmt: skip
    """``ptr[rows[:, None] * s_row + cols[None, :] * s_col]`` masked, in ``ACC``."""
    return tl.load(
        ptr + rows[:, None] * s_row + cols[None, :] * s_col, mask=row_ok[:, None] & col_ok[None, :], other=0.0
    ).to(ACC)


@triton.jit
def _mm(a, b, PREC: tl.constexpr, ACC: tl.constexpr):
    return tl.dot(a, b, input_precision=PREC, out_dtype=ACC)


@triton.jit
def _kept_columns(kidx_ptr, kcount_ptr, hi, K, KB: tl.constexpr, MASKED: tl.constexpr):
    """``(columns, ok)`` of head ``hi``: the kept state indices (``K`` per head in the table) and
    which of the ``KB`` slots are real."""
    slots = tl.arange(0, KB)
    if MASKED:
        ok = slots < tl.load(kcount_ptr + hi)
        cols = tl.load(kidx_ptr + hi * K + slots, mask=ok, other=0)
    else:
        ok = slots < K
        cols = slots
    return cols, ok


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, B_ptr, dtd_ptr, cs_ptr, kidx_ptr, kcount_ptr, htrans_ptr, seq_ptr, st_ptr, decay_ptr,
    l, h, p, K, nchunks, heads_per_group,
    s_xb, s_xl, s_xh, s_xp, sB_b, sB_l, sB_g, sB_n, s_qb, s_ql,
    s_stb, s_stc, s_sth, s_stp,
    MASKED: tl.constexpr, HAS_HTRANS: tl.constexpr, HAS_SEQ: tl.constexpr,
    Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, KB: tl.constexpr,
    PREC: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    c = tl.program_id(1)
    bh = tl.program_id(2)
    bi = (bh // h).to(tl.int64)
    hi = bh % h
    grp = (hi // heads_per_group).to(tl.int64)
    offs_p = pid_p * BP + tl.arange(0, BP)
    pm = offs_p < p
    cols, col_ok = _kept_columns(kidx_ptr, kcount_ptr, hi, K, KB, MASKED)
    chunk_len = tl.minimum(l - c * Q, Q)
    last = chunk_len - 1
    cs_base = (bh * nchunks + c).to(tl.int64) * Q
    cs_last = tl.load(cs_ptr + cs_base + last)
    tr = True
    if HAS_HTRANS:
        tr = tl.load(htrans_ptr + hi) != 0
    if HAS_SEQ:
        seq_last = tl.load(seq_ptr + bi * s_qb + (c * Q + last) * s_ql)
    acc = tl.zeros([BP, KB], dtype=ACC)
    for j0 in range(0, Q, BT):
        j = j0 + tl.arange(0, BT)
        jm = j < chunk_len
        t = c * Q + j
        dt = tl.load(dtd_ptr + cs_base + j, mask=jm, other=0.0).to(ACC)
        cs = tl.load(cs_ptr + cs_base + j, mask=jm, other=0.0).to(ACC)
        w = tl.where(tr, tl.exp2(cs_last - cs), tl.where(j == last, 1.0, 0.0)) * dt
        if HAS_SEQ:
            sq = tl.load(seq_ptr + bi * s_qb + t * s_ql, mask=jm, other=0)
            w = tl.where(sq == seq_last, w, 0.0)
        xT = _gather_tile(x_ptr + bi * s_xb + hi * s_xh, offs_p, pm, s_xp, t, jm, s_xl, ACC)  # (BP, BT)
        Bj = _gather_tile(B_ptr + bi * sB_b + grp * sB_g, t, jm, sB_l, cols, col_ok, sB_n, ACC)  # (BT, KB)
        acc += _mm(xT * w[None, :], Bj, PREC, ACC)
    slots = tl.arange(0, KB)
    st = st_ptr + bi * s_stb + c * s_stc + hi * s_sth + offs_p[:, None] * s_stp + slots[None, :]
    tl.store(st, acc, mask=pm[:, None] & (slots[None, :] < K))
    if pid_p == 0:
        decay = tl.where(tr, tl.exp2(cs_last), 0.0)
        tl.store(decay_ptr + bh.to(tl.int64) * nchunks + c, decay)


@triton.jit
def _ssd_state_passing_kernel(
    st_ptr, decay_ptr, init_ptr, final_ptr, kidx_ptr, kcount_ptr, seq_ptr,
    l, h, p, K, nchunks,
    s_stb, s_stc, s_sth, s_stp, s_ib, s_ih, s_ip, s_in, s_fb, s_fh, s_fp, s_fn, s_qb, s_ql,
    MASKED: tl.constexpr, HAS_INIT: tl.constexpr, INIT_COMPACT: tl.constexpr,
    HAS_FINAL: tl.constexpr, HAS_SEQ: tl.constexpr, Q: tl.constexpr, BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    hi = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    e = pid * BLOCK + tl.arange(0, BLOCK)
    em = e < p * K
    pp = e // K
    slot = e % K
    if MASKED:
        ok = em & (slot < tl.load(kcount_ptr + hi))
        col = tl.load(kidx_ptr + hi * K + slot, mask=ok, other=0)
    else:
        ok = em
        col = slot
    state = tl.zeros([BLOCK], dtype=ACC)
    if HAS_INIT:
        src = col
        if INIT_COMPACT:
            src = slot
        state = tl.load(init_ptr + bi * s_ib + hi * s_ih + pp * s_ip + src * s_in, mask=ok, other=0.0).to(ACC)
    st = st_ptr + bi * s_stb + hi * s_sth + pp * s_stp + slot
    prev_end = tl.zeros([BLOCK], dtype=tl.int64)
    for c in range(nchunks):
        chunk_state = tl.load(st + c * s_stc, mask=em, other=0.0)
        tl.store(st + c * s_stc, state.to(st_ptr.dtype.element_ty), mask=em)
        carry = tl.load(decay_ptr + (tl.program_id(2) * h + hi).to(tl.int64) * nchunks + c + e * 0).to(ACC)
        if HAS_SEQ:
            end_t = tl.minimum((c + 1) * Q, l) - 1
            end = tl.load(seq_ptr + bi * s_qb + end_t * s_ql + e * 0).to(tl.int64)
            carry = tl.where(end == prev_end, carry, 0.0)
            prev_end = end
        state = carry * state + chunk_state
    if HAS_FINAL:
        tl.store(final_ptr + bi * s_fb + hi * s_fh + pp * s_fp + col * s_fn, state, mask=ok)


@triton.jit
def _ssd_chunk_scan_kernel(
    x_ptr, z_ptr, D_ptr, B_ptr, C_ptr, dtd_ptr, cs_ptr, st_ptr, kidx_ptr, kcount_ptr, htrans_ptr,
    mask_ptr, seq_ptr, out_ptr,
    l, h, p, n, K, nchunks, heads_per_group,
    s_xb, s_xl, s_xh, s_xp, s_zb, s_zl, s_zh, s_zp, s_Dh, s_Dp,
    sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n, s_qb, s_ql,
    s_stb, s_stc, s_sth, s_stp, s_ob, s_ol, s_oh, s_op,
    MASKED: tl.constexpr, HAS_HTRANS: tl.constexpr, HAS_SEQ: tl.constexpr, ZT_FEED: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, Q: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr,
    KB: tl.constexpr, NB: tl.constexpr, PREC: tl.constexpr, CB_DT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    pid_mp = tl.program_id(0)
    c = tl.program_id(1)
    bh = tl.program_id(2)
    n_pb = tl.cdiv(p, BP)
    pid_m = pid_mp // n_pb
    pid_p = pid_mp % n_pb
    bi = (bh // h).to(tl.int64)
    hi = bh % h
    grp = (hi // heads_per_group).to(tl.int64)
    chunk_len = tl.minimum(l - c * Q, Q)
    if pid_m * BM >= chunk_len:
        return
    offs_p = pid_p * BP + tl.arange(0, BP)
    pm = offs_p < p
    i = pid_m * BM + tl.arange(0, BM)
    im = i < chunk_len
    ti = c * Q + i
    cols, col_ok = _kept_columns(kidx_ptr, kcount_ptr, hi, K, KB, MASKED)
    cs_base = (bh * nchunks + c).to(tl.int64) * Q
    cs_i = tl.load(cs_ptr + cs_base + i, mask=im, other=0.0).to(ACC)
    tr = True
    if HAS_HTRANS:
        tr = tl.load(htrans_ptr + hi) != 0
    B_row = B_ptr + bi * sB_b + grp * sB_g
    C_row = C_ptr + bi * sC_b + grp * sC_g
    x_row = x_ptr + bi * s_xb + hi * s_xh
    Ci_cb = _gather_tile(C_row, ti, im, sC_l, cols, col_ok, sC_n, CB_DT)  # (BM, KB)
    Ci = Ci_cb.to(ACC)
    if HAS_SEQ:
        sq_i = tl.load(seq_ptr + bi * s_qb + ti * s_ql, mask=im, other=0)

    # the incoming state: exp(cs_i) C_i . start_c
    startT = _gather_tile(
        st_ptr + bi * s_stb + c * s_stc + hi * s_sth,
        tl.arange(0, KB),
        tl.arange(0, KB) < K,
        1,
        offs_p,
        pm,
        s_stp,
        ACC,
    )  # (KB, BP)
    weight = tl.where(tr, tl.exp2(cs_i), 0.0)
    if HAS_SEQ:
        prev_t = tl.maximum(c * Q - 1, 0)
        prev_seq = tl.load(seq_ptr + bi * s_qb + prev_t * s_ql)
        prev_seq = tl.where(c == 0, 0, prev_seq)
        weight = tl.where(sq_i == prev_seq, weight, 0.0)
    acc = _mm(Ci, startT, PREC, ACC) * weight[:, None]  # (BM, BP)

    # inside the chunk: sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) dt_j x_j
    for j0 in range(0, (pid_m + 1) * BM, BM):
        j = j0 + tl.arange(0, BM)
        jm = j < chunk_len
        tj = c * Q + j
        Bj = _gather_tile(B_row, tj, jm, sB_l, cols, col_ok, sB_n, CB_DT)  # (BM, KB)
        cb = _mm(Ci_cb, tl.trans(Bj), PREC, ACC)  # (BM_i, BM_j); 16-bit operands: exact products
        cs_j = tl.load(cs_ptr + cs_base + j, mask=jm, other=0.0).to(ACC)
        dt_j = tl.load(dtd_ptr + cs_base + j, mask=jm, other=0.0).to(ACC)
        below = (j[None, :] <= i[:, None]) & jm[None, :]
        decay = tl.exp2(tl.where(below, cs_i[:, None] - cs_j[None, :], 0.0))
        L = tl.where(tr, decay, tl.where(j[None, :] == i[:, None], 1.0, 0.0))
        L = tl.where(below, L, 0.0)
        if HAS_SEQ:
            sq_j = tl.load(seq_ptr + bi * s_qb + tj * s_ql, mask=jm, other=0)
            L = tl.where(sq_i[:, None] == sq_j[None, :], L, 0.0)
        xj = _gather_tile(x_row, tj, jm, s_xl, offs_p, pm, s_xp, ACC)  # (BM, BP)
        acc += _mm(cb * L * dt_j[None, :], xj, PREC, ACC)

    xi = _gather_tile(x_row, ti, im, s_xl, offs_p, pm, s_xp, ACC)  # (BM, BP)
    if ZT_FEED:  # pruned columns under zero_transition: feed-through only
        full = tl.arange(0, NB)
        pruned = (full < n) & (tl.load(mask_ptr + hi * n + full, mask=full < n, other=1) == 0)
        Bf = _gather_tile(B_row, ti, im, sB_l, full, pruned, sB_n, ACC)
        Cf = _gather_tile(C_row, ti, im, sC_l, full, pruned, sC_n, ACC)
        dt_i = tl.load(dtd_ptr + cs_base + i, mask=im, other=0.0).to(ACC)
        acc += (dt_i * tl.sum(Bf * Cf, axis=1))[:, None] * xi
    if HAS_D:
        acc += xi * tl.load(D_ptr + hi * s_Dh + offs_p * s_Dp, mask=pm, other=0.0).to(ACC)[None, :]
    if HAS_Z:
        zz = _gather_tile(z_ptr + bi * s_zb + hi * s_zh, ti, im, s_zl, offs_p, pm, s_zp, ACC)
        acc = acc * silu(zz)
    o = out_ptr + bi * s_ob + hi * s_oh + ti[:, None] * s_ol + offs_p[None, :] * s_op
    tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=im[:, None] & pm[None, :])


# ---------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SSDScanConfig:
    """Block sizes of one scan call: ``chunk`` timesteps per chunk, ``block_m`` rows of a chunk per
    chunk-scan program (and timesteps per chunk-state step), ``block_p`` head-dimension columns per
    program, ``num_warps`` of the two matrix kernels."""

    chunk: int
    block_m: int
    block_p: int
    num_warps: int


SSD_CONFIG_TABLE: list[tuple[str, int, SSDScanConfig]] = [
    # (shape class, largest kept width KB, config)
    ("k <= 64", 64, SSDScanConfig(chunk=256, block_m=32, block_p=64, num_warps=4)),
    ("k <= 128", 128, SSDScanConfig(chunk=256, block_m=32, block_p=64, num_warps=4)),
    ("k <= 256", 256, SSDScanConfig(chunk=256, block_m=32, block_p=32, num_warps=4)),
]
"""Block sizes of 16-bit inputs per shape class: the kept width ``KB = next_pow2(k)`` sets the size of
the ``(block_m, KB)`` tiles of ``C`` / ``B`` and so the register pressure. Chosen from the sm_90
compile report (``benchmarks/results/triton_kernels_sm90_compile.json``, ``ssd_launches``): no
spill, 2 to 6 programs per SM. Float32 and float64 inputs (``tf32x3`` / float64 products) take
``block_m = 16``, ``block_p <= 32`` (:func:`ssd_scan_config`)."""


def ssd_scan_config(kb: int, headdim: int, chunk_size: int | None, wide: bool) -> SSDScanConfig:
    """The block sizes for kept width ``kb`` (a power of two), ``headdim``, the requested
    ``chunk_size`` (None: the table's; else rounded up to a power of two in ``[16, 256]``) and
    ``wide`` (float32 or float64 inputs)."""
    entry = next(cfg for _, width, cfg in SSD_CONFIG_TABLE if kb <= width)
    chunk = entry.chunk if chunk_size is None else min(256, max(16, next_pow2(chunk_size)))
    block_m = min(16 if wide else entry.block_m, chunk)
    block_p = max(16, min(32 if wide else entry.block_p, next_pow2(headdim)))
    return SSDScanConfig(chunk=chunk, block_m=block_m, block_p=block_p, num_warps=entry.num_warps)


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _dot_precision(acc: torch.dtype, x: torch.Tensor) -> str:
    """``tl.dot``'s precision for float32 operands: float64 and the interpreter exact, 16-bit inputs
    ``tf32`` (10 mantissa bits, finer than the 8 of the bf16 output), float32 inputs ``tf32x3``."""
    if INTERPRETED or acc == torch.float64:
        return "ieee"
    return "tf32" if x.dtype in _TL_DTYPES else "tf32x3"


def _cb_dtype(B: torch.Tensor, C: torch.Tensor, acc_tl: tl.dtype) -> tl.dtype:
    """Operand type of ``C_i . B_j``: 16-bit ``B`` / ``C`` of one dtype as they are (exact products,
    float32 sums; not under the interpreter, whose 16-bit ``tl.dot`` is unreliable), else ``acc``."""
    if INTERPRETED or B.dtype != C.dtype or B.dtype not in _TL_DTYPES:
        return acc_tl
    return _TL_DTYPES[B.dtype]


def plan_ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
    initial_states: torch.Tensor | None,
    return_final_states: bool,
    seq_idx: torch.Tensor | None,
    head_mask: torch.Tensor | None,
    kept_idx: torch.Tensor | None,
    kept_count: torch.Tensor | None,
    head_transition_mask: torch.Tensor | None,
    pruned_states: str,
    chunk_size: int | None = None,
    config: SSDScanConfig | None = None,
) -> tuple[list[Launch], torch.Tensor, torch.Tensor | None]:
    """Allocate the outputs and work buffers of one scan and list its four launches:
    ``(launches, out (b, l, h, p), final_states (b, h, p, n) or None)``.

    ``head_mask`` bool ``(h, n)`` (None: dense), ``kept_idx`` int ``(h, k_max)`` and ``kept_count``
    ``(h,)`` its per-head kept-index table.
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    dev = x.device
    acc_t, acc_tl = acc_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    masked = head_mask is not None
    K = int(kept_idx.shape[-1]) if masked else n
    kb = max(16, next_pow2(max(K, 1)))
    cfg = config or ssd_scan_config(kb, p, chunk_size, x.dtype not in _TL_DTYPES)
    Q = cfg.chunk
    nchunks = triton.cdiv(l, Q)
    out = torch.empty((b, l, h, p), dtype=x.dtype, device=dev)
    final = torch.zeros((b, h, p, n), dtype=acc_t, device=dev) if return_final_states else None
    dtd = torch.empty((b, h, nchunks, Q), dtype=acc_t, device=dev)
    cs = torch.empty_like(dtd)
    states = torch.empty((b, nchunks, h, p, max(K, 1)), dtype=acc_t, device=dev)
    decay = torch.empty((b, h, nchunks), dtype=acc_t, device=dev)

    idummy = int_dummy(dev)
    kidx = kept_idx.contiguous() if masked and kept_idx.numel() else idummy
    kcount = kept_count.contiguous() if masked else idummy
    mask_u8 = head_mask.contiguous().view(torch.uint8) if masked else idummy
    htrans = (
        head_transition_mask.contiguous().view(torch.uint8) if head_transition_mask is not None else idummy
    )
    seq = seq_idx if seq_idx is not None else idummy
    s_q = tuple(seq_idx.stride()) if seq_idx is not None else (0, 0)
    D_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else tuple(D.stride()))
    z_strides = tuple(z.stride()) if z is not None else (0, 0, 0, 0)
    st_strides = states.stride()[:4]
    prec = _dot_precision(acc_t, x)
    common = dict(MASKED=masked, ACC=acc_tl)
    heads_kw = dict(HAS_HTRANS=head_transition_mask is not None, HAS_SEQ=seq_idx is not None)

    launches = [
        Launch(
            _ssd_cumsum_kernel,
            (nchunks, b * h),
            (
                dt, A, dt_bias if dt_bias is not None else A, htrans, dtd, cs, l, h, nchunks,
                float(dt_limit[0]), float(dt_limit[1]), *dt.stride(),
            ),
            dict(HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), Q=Q, ACC=acc_tl, num_warps=1),
        ),
        Launch(
            _ssd_chunk_state_kernel,
            (triton.cdiv(p, cfg.block_p), nchunks, b * h),
            (
                x, B, dtd, cs, kidx, kcount, htrans, seq, states, decay, l, h, p, K, nchunks, h // g,
                *x.stride(), *B.stride(), *s_q, *st_strides,
            ),
            dict(
                **common, **heads_kw, Q=Q, BT=cfg.block_m, BP=cfg.block_p, KB=kb, PREC=prec,
                num_warps=cfg.num_warps,
            ),
        ),
    ]  # fmt: skip
    init = initial_states
    init_strides = tuple(init.stride()) if init is not None else (0, 0, 0, 0)
    fin_strides = tuple(final.stride()) if final is not None else (0, 0, 0, 0)
    block = min(1024, next_pow2(max(p * K, 1)))
    launches.append(
        Launch(
            _ssd_state_passing_kernel,
            (triton.cdiv(max(p * K, 1), block), h, b),
            (
                states, decay, init if init is not None else states, final if final is not None else states,
                kidx, kcount, seq, l, h, p, max(K, 1), nchunks,
                *st_strides, *init_strides, *fin_strides, *s_q,
            ),
            dict(
                **common, HAS_INIT=init is not None,
                INIT_COMPACT=init is not None and masked and init.shape[-1] != n,
                HAS_FINAL=final is not None, HAS_SEQ=seq_idx is not None, Q=Q, BLOCK=block,
                num_warps=4,
            ),
        )
    )  # fmt: skip
    zt_feed = masked and pruned_states == "zero_transition"
    n_mb = triton.cdiv(Q, cfg.block_m)
    launches.append(
        Launch(
            _ssd_chunk_scan_kernel,
            (n_mb * triton.cdiv(p, cfg.block_p), nchunks, b * h),
            (
                x, z if z is not None else x, D if D is not None else A, B, C, dtd, cs, states, kidx, kcount,
                htrans, mask_u8, seq, out, l, h, p, n, K, nchunks, h // g,
                *x.stride(), *z_strides, *D_strides, *B.stride(), *C.stride(), *s_q, *st_strides,
                *out.stride(),
            ),
            dict(
                **common, **heads_kw, ZT_FEED=zt_feed, HAS_D=D is not None, HAS_Z=z is not None, Q=Q,
                BM=cfg.block_m, BP=cfg.block_p, KB=kb, NB=next_pow2(n) if zt_feed else 1, PREC=prec,
                CB_DT=_cb_dtype(B, C, acc_tl), num_warps=cfg.num_warps,
            ),
        )
    )  # fmt: skip
    return launches, out, final


def ssd_scan_triton(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run :func:`plan_ssd_scan`'s launches (arguments validated by the caller); returns
    ``(out (b, l, h, p) in x.dtype, final_states (b, h, p, n) or None)``."""
    x = args[0]
    with device_guard(x.device):
        launches, out, final = plan_ssd_scan(*args, **kwargs)
        for launch in launches:
            launch()
    return out, final
