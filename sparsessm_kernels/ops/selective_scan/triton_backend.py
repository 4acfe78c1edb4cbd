"""Triton prefill kernel of the (sparse) selective scan, forward only (design: ``docs/triton.md``).

Semantics are exactly :func:`sparsessm_kernels.ops.selective_scan.reference.selective_scan_ref` (see
``docs/semantics.md``); this module only decides how the work is laid out on the GPU.

One launch (two with a ``zero_transition`` mask, below), grid ``(d / BLOCK_D, b)``: a program owns
``BLOCK_D`` channels of one batch row, **one warp per channel**, and walks the sequence in chunks
of ``T`` timesteps, the parallel axis: each thread holds ``T / 32`` consecutive timesteps of its
channel (one 16-byte load per row). Per chunk it loads ``u`` and ``delta`` (bias, softplus) once,
then loops over the **kept slots** only: ``K`` is a compile-time constant (``n`` dense, ``k`` for a
column mask, ``k_max`` for a per-channel mask) and loops of up to ``MAX_UNROLL`` slots are unrolled.
For slot ``j`` (state ``s``):

* ``A[:, s]`` (pre-scaled by ``log2(e)``) and the ``B`` / ``C`` rows of ``s`` over the chunk. A row
  shared by the block's channels (dense and column masks, B / C ungrouped or one group per block)
  is fetched once per program (the warps after the first hit L1); a per-channel mask reads state
  ``kept_idx[c, j]`` of each channel through the kept-index table, without compacting anything;
  a time-invariant ``(d, n)`` B / C is one value per channel;
* ``dA = exp2(dt * A * log2(e))`` and ``dBu = dt * u * B``; the state entering the chunk joins the
  first step's drive (``dBu_0 += dA_0 * h_in``), and ``tl.associative_scan`` over ``(dA, dBu)``
  pairs solves ``h_t = dA_t h_{t-1} + dBu_t`` along the chunk (in-thread, then warp shuffles: no
  shared memory, no barrier); ``y += C * h``;
* the state leaving the chunk (the last column, one ``tl.gather`` shuffle) goes into a
  ``(BLOCK_D, next_pow2(K))`` register tile, read back at the next chunk; with the slot loop
  unrolled, slot ``j`` is a constant, so both moves cost a select or two. At the end
  the tile is ``last_state`` (scattered to the state indices, pruned entries 0).

So pruned states cost no ``exp``, no recurrence, no ``C * h`` and no ``B`` / ``C`` traffic. Under
``zero_transition`` the pruned states' feed-through ``dt * u * sum_{pruned} B * C`` needs no
recurrence, and for time-varying B / C its ``sum B * C`` does not depend on the channel: a pre-pass
(``_feedthrough_kernel``, grid ``(l / 1024, b * groups)``) computes that ``(b, groups, l)`` row once
per call for every program, over the pruned rows of a column mask or over all rows for a
per-channel mask (the program subtracts its kept products ``B_j * C_j``). With a time-invariant B
or C the sum is per channel: a batched matmul forms it. ``D``, the ``silu(z)`` gate and the
down-cast to ``u.dtype`` finish the tile.

Math is float32 (float64 when an input is float64); ``out`` is stored in ``u.dtype``. Block sizes
come from :func:`scan_config` (a table for the benchmark grid, a rule elsewhere), chosen from
registers, occupancy and bytes moved, **untuned on hardware**. The launches depend on shapes only:
no host synchronisation, so CUDA graphs capture them. :func:`plan_scan` lists a call's launches
without running them, which is how ``sparsessm_kernels.ops.triton.aot`` compiles them for sm_90
on a machine without a GPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import plan as _plan
from ..plan import ScanInputs, ScanPlan
from ..triton._common import (
    INTERPRETED,
    LOG2E,
    TL_DTYPES,
    Launch,
    bc_strides,
    device_guard,
    int_dummy,
    next_pow2,
    silu,
    sm_count,
    softplus,
)

# the plan's mask kinds, as the kernels' MASK_KIND values
MASK_DENSE: tl.constexpr = tl.constexpr(_plan.MASK_DENSE)
MASK_COLUMN: tl.constexpr = tl.constexpr(_plan.MASK_COLUMN)
MASK_CHANNEL: tl.constexpr = tl.constexpr(_plan.MASK_CHANNEL)
ROW, GATHER, FIXED = 0, 1, 2
"""How a program reads B, C or the feed-through sum: one ``(T,)`` row shared by the block's
channels, a ``(BLOCK_D, T)`` per-channel gather, or one time-invariant value per channel."""
FT_NONE = -1
CONFIG_ENV = "SPARSESSM_TRITON_SCAN_CONFIG"
REFERENCE_SMS = 132
"""SMs the configuration assumes when the tensors are not on a GPU (an H100 / H200)."""
MAX_UNROLL = 16
"""Slot loops of at most this many kept states are unrolled: slot ``j`` is then a compile-time
constant, so the carried state is picked from and put back into its register tile with a select
or two (not one per slot of the tile), and the loads of later slots can be issued early."""


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _tile(base, offs_d, offs, s_d, s_l, m2):
    """A ``(BLOCK_D, T)`` tile of a ``(d, l)``-strided tensor (0 outside ``m2``); channel offsets
    in 64 bits (``d * l`` may pass 2^31)."""
    return tl.load(base + offs_d.to(tl.int64)[:, None] * s_d + offs[None, :] * s_l, mask=m2, other=0.0)


@triton.jit
def _operand(ptr, s, offs_d, grp, valid, offs, tmask, s_g, s_n, s_l, goff, KIND: tl.constexpr):
    """B or C of state ``s`` (a scalar, or one per channel) over the chunk, broadcastable to
    ``(BLOCK_D, T)``: ``ROW``, ``GATHER`` or ``(BLOCK_D, 1)`` for ``FIXED`` (time-invariant).
    ``ptr`` is already offset to the batch row.

    A shared row is loaded through a ``(BLOCK_D, T)`` pointer tile whose rows are equal: every
    warp reads the row it needs in the layout it computes in (the copies after the first hit L1),
    where a ``(T,)`` load would be spread over the program and redistributed through shared
    memory, with two barriers per row."""
    if KIND == 0:
        p = ptr + goff + s * s_n + (offs[None, :] + offs_d[:, None] * 0) * s_l
        res = tl.load(p, mask=tmask[None, :], other=0.0)
    elif KIND == 1:
        row = grp * s_g + s * s_n
        p = ptr + row[:, None] + offs[None, :] * s_l
        res = tl.load(p, mask=valid[:, None] & tmask[None, :], other=0.0)
    else:
        res = tl.load(ptr + offs_d * s_g + s * s_n, mask=valid, other=0.0)[:, None]
    return res


@triton.jit
def _slot_state(j, kidx_ptr, offs_d, dmask, cnt, MASK_KIND: tl.constexpr, K: tl.constexpr):
    """State index of slot ``j`` (a scalar, or one per channel) and which channels have it."""
    if MASK_KIND == MASK_DENSE:
        s = j
        valid = dmask
    elif MASK_KIND == MASK_COLUMN:
        s = tl.load(kidx_ptr + j)
        valid = dmask
    else:
        valid = dmask & (j < cnt)
        s = tl.load(kidx_ptr + offs_d * K + j, mask=valid, other=0)
    return s, valid


@triton.jit
def _scan_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, kidx_ptr, kcnt_ptr, ft_ptr,
    out_ptr, last_ptr,
    d, l, n, dpg_B, dpg_C, dpg_F,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, so_b, so_d, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sF_b, sF_g, sF_l, s_D, s_bias,
    MASK_KIND: tl.constexpr, K: tl.constexpr, UNROLL: tl.constexpr, B_KIND: tl.constexpr,
    C_KIND: tl.constexpr, FT_KIND: tl.constexpr, SUB_KEPT: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, RETURN_LAST: tl.constexpr,
    MULTI_CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr, KB: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < d
    offs_t = tl.arange(0, T)
    first_col = offs_t[None, :] == 0
    last_col = tl.full([BLOCK_D, 1], T - 1, tl.int32)
    slots = tl.arange(0, KB)[None, :]
    hc = tl.zeros([BLOCK_D, KB], dtype=ACC)  # the state carried from chunk to chunk, per slot

    if MASK_KIND == MASK_CHANNEL:
        cnt = tl.load(kcnt_ptr + offs_d, mask=dmask, other=0)
    else:
        cnt = tl.zeros([BLOCK_D], dtype=tl.int32)
    if MASK_KIND == MASK_CHANNEL and UNROLL == 1:  # a runtime loop stops at the block's largest kept count
        k_loop = tl.max(cnt, axis=0)
    else:
        k_loop = K
    bias = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=dmask, other=0.0).to(ACC)
    Dv = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * s_D, mask=dmask, other=0.0).to(ACC)
    grp_B = (offs_d // dpg_B).to(tl.int64)  # group offsets may pass 2^31 elements
    grp_C = (offs_d // dpg_C).to(tl.int64)
    goff_B = ((pid_d * BLOCK_D) // dpg_B).to(tl.int64) * sB_g
    goff_C = ((pid_d * BLOCK_D) // dpg_C).to(tl.int64) * sC_g
    goff_F = ((pid_d * BLOCK_D) // dpg_F).to(tl.int64) * sF_g
    u_b = u_ptr + bi * su_b
    dt_b = dt_ptr + bi * sdt_b
    z_b = z_ptr + bi * sz_b
    B_b = B_ptr + bi * sB_b
    C_b = C_ptr + bi * sC_b
    ft_b = ft_ptr + bi * sF_b

    for t0 in range(0, l, T):
        offs = t0 + offs_t
        tmask = offs < l
        m2 = dmask[:, None] & tmask[None, :]
        dt = _tile(dt_b, offs_d, offs, sdt_d, sdt_l, m2).to(ACC) + bias[:, None]
        if SOFTPLUS:
            dt = softplus(dt)
        dt = tl.where(m2, dt, 0.0)  # padded steps are identities: dA = 1, dBu = 0
        uu = _tile(u_b, offs_d, offs, su_d, su_l, m2).to(ACC)
        dtu = dt * uu
        y = uu * Dv[:, None]
        kept_bc = tl.zeros([BLOCK_D, T], dtype=ACC)
        for j in tl.range(0, k_loop, loop_unroll_factor=UNROLL):
            s, valid = _slot_state(j, kidx_ptr, offs_d, dmask, cnt, MASK_KIND, K)
            A2 = tl.load(A_ptr + offs_d * sA_d + s * sA_n, mask=valid, other=0.0).to(ACC) * LOG2E
            Bj = _operand(B_b, s, offs_d, grp_B, valid, offs, tmask, sB_g, sB_n, sB_l, goff_B, B_KIND).to(ACC)
            Cj = _operand(C_b, s, offs_d, grp_C, valid, offs, tmask, sC_g, sC_n, sC_l, goff_C, C_KIND).to(ACC)
            dA = tl.exp2(dt * A2[:, None])
            dBu = dtu * Bj
            if MULTI_CHUNK:  # the state entering the chunk joins the first step's drive
                h_in = tl.sum(tl.where(slots == j, hc, 0.0), axis=1, keep_dims=True)
                dBu = tl.where(first_col, dBu + dA * h_in, dBu)
            _, h = tl.associative_scan((dA, dBu), 1, _combine)
            y += h * Cj
            if SUB_KEPT:
                kept_bc += Bj * Cj
            if MULTI_CHUNK or RETURN_LAST:  # the state leaving the chunk: its last column
                hc = tl.where(slots == j, tl.gather(h, last_col, 1), hc)
        if FT_KIND >= 0:
            grp_F = (offs_d // dpg_F).to(tl.int64)
            ft = _operand(ft_b, 0, offs_d, grp_F, dmask, offs, tmask, sF_g, 0, sF_l, goff_F, FT_KIND).to(ACC)
            if SUB_KEPT:
                ft = ft - kept_bc
            y += dtu * ft
        if HAS_Z:
            y = y * silu(_tile(z_b, offs_d, offs, sz_d, sz_l, m2).to(ACC))
        out_ptrs = out_ptr + bi * so_b + offs_d.to(tl.int64)[:, None] * so_d + offs[None, :]
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=m2)

    if RETURN_LAST:  # the carried states to their state indices (pruned entries stay 0)
        if MASK_KIND == MASK_DENSE:
            s_all = slots + offs_d[:, None] * 0
            v_all = dmask[:, None] & (slots < K)
        elif MASK_KIND == MASK_COLUMN:
            s_all = tl.load(kidx_ptr + slots + offs_d[:, None] * 0, mask=slots < K, other=0)
            v_all = dmask[:, None] & (slots < K)
        else:
            v_all = dmask[:, None] & (slots < cnt[:, None])
            s_all = tl.load(kidx_ptr + offs_d[:, None] * K + slots, mask=v_all, other=0)
        tl.store(last_ptr + (bi * d + offs_d[:, None]) * n + s_all, hc, mask=v_all)


@triton.jit
def _feedthrough_kernel(
    B_ptr, C_ptr, colmask_ptr, ft_ptr, l, n, dpg_F, dpg_B, dpg_C, G,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    PRUNED_ONLY: tl.constexpr, BLOCK_L: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """``ft[b, f, t] = sum_s B[b, s, t] * C[b, s, t]`` over the pruned rows of a column mask
    (``PRUNED_ONLY``) or over all rows, for channel group ``f`` (``dpg_F`` channels sharing the
    B group and the C group)."""
    pid_l = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    bi = row // G
    c0 = (row % G) * dpg_F
    offs = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    tmask = offs < l
    B_row = B_ptr + bi * sB_b + (c0 // dpg_B) * sB_g + offs * sB_l
    C_row = C_ptr + bi * sC_b + (c0 // dpg_C) * sC_g + offs * sC_l
    acc = tl.zeros([BLOCK_L], dtype=ACC)
    for s in range(0, n):
        take = True
        if PRUNED_ONLY:
            take = tl.load(colmask_ptr + s) == 0
        if take:
            Bs = tl.load(B_row + s * sB_n, mask=tmask, other=0.0).to(ACC)
            Cs = tl.load(C_row + s * sC_n, mask=tmask, other=0.0).to(ACC)
            acc += Bs * Cs
    tl.store(ft_ptr + row * l + offs, acc, mask=tmask)


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class ScanConfig:
    """Launch configuration of :func:`_scan_kernel`: ``block_d`` channels per program, ``chunk``
    timesteps per chunk (powers of 2) and ``num_warps``. The intended layout is one warp per
    channel (``block_d == num_warps``), ``chunk / 32`` consecutive timesteps per thread."""

    block_d: int
    chunk: int
    num_warps: int

    @classmethod
    def parse(cls, text: str, name: str = CONFIG_ENV) -> ScanConfig:
        """``"block_d,chunk,num_warps"``, each a power of 2 (``num_warps`` at most 8)."""
        parts = text.replace(" ", "").split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        ok = len(values) == 3 and all(v >= 1 and v & (v - 1) == 0 for v in values) and values[2] <= 8
        if not ok:
            raise ValueError(
                f"{name}: expected 'block_d,chunk,num_warps' (powers of 2, num_warps <= 8), got {text!r}"
            )
        return cls(*values)


def _grid_table() -> dict[tuple[int, int, int, torch.dtype], ScanConfig]:
    """The benchmark grid: Mamba-1 130M / 370M / 1.4B / 2.8B layers (``d``), ``l`` 512 / 2048 /
    8192, ``n = 16`` with ``k = 16`` (dense) or 8 (50% column, 2:4), 16-bit inputs. The rule of
    :func:`gpu_config` picks one warp per channel, 4 channels per program and chunks of 256 for
    every one of them (16-bit loads of 8 timesteps per thread; at batch 1 the smallest layer
    still gives 384 programs, over 2 per SM of an H100 / H200). Untuned on hardware: a measured
    pick replaces its entry."""
    picked = ScanConfig(block_d=4, chunk=256, num_warps=4)
    return {
        (d, l, k, dtype): picked
        for d in (1536, 2048, 4096, 5120)
        for l in (512, 2048, 8192)
        for k in (16, 8)
        for dtype in (torch.bfloat16, torch.float16)
    }


CONFIG_TABLE = _grid_table()
"""``(d, l, k, u.dtype) -> ScanConfig`` for the benchmark grid (used when the batch gives at least
two programs per SM, as every shape of the grid does at batch >= 1 on 132 SMs); any other call
takes the rule of :func:`scan_config`."""


def scan_config(
    b: int,
    d: int,
    l: int,
    k: int,
    dtype: torch.dtype,
    math_dtype: torch.dtype,
    device: torch.device,
    group_size: int = 0,
) -> ScanConfig:
    """The configuration of one call: ``SPARSESSM_TRITON_SCAN_CONFIG``
    (``"block_d,chunk,num_warps"``, for tuning) if set, wide programs under the interpreter (it
    pays per operation, not per element), else :func:`gpu_config` for the device's SM count
    (:data:`REFERENCE_SMS` for ``meta`` tensors, as in the ahead-of-time compile)."""
    forced = os.environ.get(CONFIG_ENV, "").strip()
    if forced:
        return ScanConfig.parse(forced)
    if INTERPRETED:
        return ScanConfig(min(32, next_pow2(d)), min(64, max(16, next_pow2(l))), 4)
    sms = sm_count(device) if device.type == "cuda" else REFERENCE_SMS
    return gpu_config(b, d, l, k, dtype, math_dtype, sms, group_size)


def gpu_config(
    b: int,
    d: int,
    l: int,
    k: int,
    dtype: torch.dtype,
    math_dtype: torch.dtype,
    sms: int,
    group_size: int = 0,
) -> ScanConfig:
    """:data:`CONFIG_TABLE`'s entry, else the rule below; see ``docs/triton.md``
    (*Configuration*). Untuned on hardware: chosen from registers (no spills when compiled for
    sm_90), occupancy and bytes moved.

    ``dtype``: of ``u``; ``math_dtype``: float32 or float64; ``sms``: streaming multiprocessors;
    ``group_size``: channels per B / C group when B or C is grouped (0 otherwise).
    """
    entry = CONFIG_TABLE.get((d, l, k, dtype))
    if entry is not None and b * triton.cdiv(d, entry.block_d) >= 2 * sms and group_size % entry.block_d == 0:
        return entry
    # timesteps per thread: one 16-byte load of 16-bit inputs (8) or float32 (4); float64 math
    # needs twice the registers per value, and 2 per thread already spill: 1
    per_thread = 1 if math_dtype == torch.float64 else (8 if dtype.itemsize <= 2 else 4)
    chunk = min(32 * per_thread, max(16, next_pow2(l)))
    # one warp per channel, 4 channels per program (they share their B / C rows), 2 when that
    # leaves under 2 programs per SM or the channels of a program would straddle two B / C
    # groups; not 1 (a 1-warp program gets 128 registers per thread from ptxas, and spills)
    warps = 4
    if b * triton.cdiv(d, warps) < 2 * sms or group_size % warps:
        warps = 2
    return ScanConfig(block_d=min(warps, next_pow2(d)), chunk=chunk, num_warps=warps)


# ------------------------------------------------------------------------------ host side
def _unroll(k: int, per_channel: bool, b_kind: int, c_kind: int) -> int:
    """Slots unrolled: all ``k`` up to ``MAX_UNROLL``; but B / C gathered per channel because
    groups change inside a program keep 16 live row addresses per thread (a register spill):
    there the slot loop stays a loop."""
    gathered_by_groups = not per_channel and GATHER in (b_kind, c_kind)
    return k if 1 <= k <= (MAX_UNROLL // 2 if gathered_by_groups else MAX_UNROLL) else 1


def _operand_kind(t: torch.Tensor, dpg: int, block_d: int, per_channel_state: bool) -> int:
    if t.dim() == 2:
        return FIXED
    return GATHER if per_channel_state or dpg % block_d else ROW


def _feedthrough(
    B: torch.Tensor,
    C: torch.Tensor,
    state_mask: torch.Tensor,
    b: int,
    d: int,
    l: int,
    acc: torch.dtype,
    acc_tl: tl.dtype,
) -> tuple[torch.Tensor, bool, list[Launch]]:
    """The pruned states' ``sum B * C`` as a ``(b, G, l)``-strided tensor, whether the scan must
    subtract its kept products (per-channel mask, time-varying B and C), and the launch that
    fills it (none when it is formed here, for a time-invariant B or C)."""
    if B.dim() != 2 and C.dim() != 2:
        gB, sB_b, sB_g, sB_n = bc_strides(B, B.dim() == 4)
        gC, sC_b, sC_g, sC_n = bc_strides(C, C.dim() == 4)
        dpg_B, dpg_C = d // gB, d // gC
        dpg_F = math.gcd(dpg_B, dpg_C)
        G = d // dpg_F
        pruned_only = state_mask.dim() == 1
        ft = torch.empty((b, G, l), dtype=acc, device=B.device)
        colmask = state_mask.contiguous().view(torch.uint8) if pruned_only else int_dummy(B.device)
        block_l = 1024 if not INTERPRETED else max(16, min(1024, next_pow2(l)))
        args = (
            B, C, colmask, ft, l, B.shape[-2], dpg_F, dpg_B, dpg_C, G,
            sB_b, sB_g, sB_n, B.stride(-1), sC_b, sC_g, sC_n, C.stride(-1),
        )  # fmt: skip
        kwargs = dict(PRUNED_ONLY=pruned_only, BLOCK_L=block_l, ACC=acc_tl, num_warps=4)
        launch = Launch(_feedthrough_kernel, (triton.cdiv(l, block_l), b * G), args, kwargs)
        return ft, not pruned_only, [launch]
    # a time-invariant B or C: the sum depends on the channel, (b or 1, d, l or 1)
    pruned = (~state_mask).to(acc)
    pruned = pruned.expand(d, -1) if pruned.dim() == 1 else pruned
    n = pruned.shape[1]
    if B.dim() == 2 and C.dim() == 2:
        return (B.to(acc) * C.to(acc) * pruned).sum(-1)[None, :, None], False, []
    fixed, varying = (B, C) if B.dim() == 2 else (C, B)
    g = varying.shape[1] if varying.dim() == 4 else 1
    weights = (fixed.to(acc) * pruned).view(g, d // g, n)  # (g, channels per group, n)
    grouped = varying.to(acc) if varying.dim() == 4 else varying.to(acc)[:, None]  # (b, g, n, l)
    ft = torch.einsum("gcn,bgnl->bgcl", weights, grouped).reshape(b, d, l)
    return ft, False, []


def plan_scan(
    plan: ScanPlan, inputs: ScanInputs, config: ScanConfig | None = None
) -> tuple[list[Launch], torch.Tensor, torch.Tensor | None]:
    """Allocate the outputs and buffers of one call and list its launches, in order.

    Returns ``(launches, out, last_state or None)``; running the launches fills the outputs. A
    time-invariant B / C with a ``zero_transition`` mask computes its per-channel feed-through sum
    here (a batched matmul on ``u``'s device).
    """
    u, delta, A, B, C, D, z, delta_bias = inputs
    b, d, l = u.shape
    n = A.shape[1]
    dev = u.device
    acc_torch, acc_tl = plan.math_dtype, TL_DTYPES[plan.math_dtype]
    mask_kind, k = plan.mask_kind, plan.k
    state_mask, kept_idx, kept_count = plan.state_mask, plan.kept_idx, plan.kept_count
    return_last_state = plan.return_last_state
    group_sizes = [d // t.shape[1] for t in (B, C) if t.dim() == 4]
    group_size = math.gcd(*group_sizes) if group_sizes else 0
    cfg = config or scan_config(b, d, l, k, u.dtype, acc_torch, dev, group_size)
    block_d, T = cfg.block_d, cfg.chunk
    out = torch.empty((b, d, l), dtype=u.dtype, device=dev)
    last = None
    if return_last_state:
        last = (torch.zeros if plan.pruned else torch.empty)((b, d, n), dtype=acc_torch, device=dev)
    if b == 0 or d == 0:
        return [], out, last

    # every program reads each B / C row: rows strided in time (B / C transposed from (b, l, n),
    # as some callers pass them) would cost a load per timestep instead of one vector per thread
    B = B.contiguous() if B.dim() != 2 and B.stride(-1) != 1 else B
    C = C.contiguous() if C.dim() != 2 and C.stride(-1) != 1 else C
    per_channel = mask_kind == _plan.MASK_CHANNEL
    gB, sB_b, sB_g, sB_n = bc_strides(B, B.dim() == 4)
    gC, sC_b, sC_g, sC_n = bc_strides(C, C.dim() == 4)
    if B.dim() == 2:  # time-invariant (d, n): one value per (channel, state)
        gB, sB_b, sB_g, sB_n = d, 0, B.stride(0), B.stride(1)
    if C.dim() == 2:
        gC, sC_b, sC_g, sC_n = d, 0, C.stride(0), C.stride(1)
    dpg_B, dpg_C = d // gB, d // gC
    b_kind = _operand_kind(B, dpg_B, block_d, per_channel)
    c_kind = _operand_kind(C, dpg_C, block_d, per_channel)
    sB_l = B.stride(-1) if B.dim() != 2 else 0
    sC_l = C.stride(-1) if C.dim() != 2 else 0

    launches: list[Launch] = []
    ft, ft_kind, sub_kept, dpg_F, sF = out, FT_NONE, False, 1, (0, 0, 0)
    if plan.feedthrough:
        ft, sub_kept, pre = _feedthrough(B, C, state_mask, b, d, l, acc_torch, acc_tl)
        launches += pre
        dpg_F = d // ft.shape[1]
        sF = (ft.stride(0) if ft.shape[0] > 1 else 0, ft.stride(1), ft.stride(2) if ft.shape[2] > 1 else 0)
        ft_kind = GATHER if dpg_F % block_d else ROW
    multi_chunk = l > T and k > 0
    idummy = int_dummy(dev)
    args = (
        u, delta, A, B, C,
        D if D is not None else out, z if z is not None else out,
        delta_bias if delta_bias is not None else out,
        kept_idx.contiguous() if kept_idx is not None and kept_idx.numel() else idummy,
        kept_count.contiguous() if kept_count is not None else idummy,
        ft, out, last if last is not None else out,
        d, l, n, dpg_B, dpg_C, dpg_F,
        *u.stride(), *delta.stride(), *(z.stride() if z is not None else (0, 0, 0)),
        out.stride(0), out.stride(1), *A.stride(),
        sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, *sF,
        D.stride(0) if D is not None else 0, delta_bias.stride(0) if delta_bias is not None else 0,
    )  # fmt: skip
    kwargs = dict(
        MASK_KIND=mask_kind, K=k, UNROLL=_unroll(k, per_channel, b_kind, c_kind),
        B_KIND=b_kind, C_KIND=c_kind, FT_KIND=ft_kind, SUB_KEPT=sub_kept,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=plan.softplus, RETURN_LAST=return_last_state and k > 0, MULTI_CHUNK=multi_chunk,
        BLOCK_D=block_d, T=T, KB=next_pow2(k), ACC=acc_tl, num_warps=cfg.num_warps,
    )  # fmt: skip
    launches.append(Launch(_scan_kernel, (triton.cdiv(d, block_d), b), args, kwargs))
    return launches, out, last


def selective_scan_triton(
    plan: ScanPlan, inputs: ScanInputs, *, config: ScanConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selective scan on the Triton kernels; arguments validated by ``ops.selective_scan``.

    Same contract as ``torch_backend.selective_scan_torch``: returns ``(out, last_state or None)``.
    ``config`` overrides :func:`scan_config` (for tests and tuning).
    """
    with device_guard(inputs.u.device):
        launches, out, last = plan_scan(plan, inputs, config)
        for launch in launches:
            launch()
    return out, last
