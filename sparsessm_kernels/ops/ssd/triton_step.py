"""Triton kernel of the Mamba-2 (SSD) decode step on dense or compact states, in place.

Semantics: :func:`sparsessm_kernels.ops.ssd.ssd_state_update_ref`. A program owns ``BLOCK_P`` rows
of the head dimension of one ``(batch row, head)`` pair and works on a ``(BLOCK_P, KB)`` tile of the
state, ``KB = next_pow2(stored states)``:

* dense state, no mask: the ``n`` states;
* compact ``(b, h, p, k)`` state: the ``k`` kept states of the head; ``B`` and ``C`` are read
  through the per-head kept-index table, so a 50% cache moves half the bytes of a dense one. Under
  ``"zero_transition"`` the pruned states' feed-through ``dt * x * sum_{pruned} B * C`` is one
  ``n``-vector reduction per head, no state;
* dense ``(b, h, p, n)`` state with a mask: the ``n`` states, pruned transitions (and, under
  ``"remove"``, drives) set to 0 and pruned entries stored as 0 (a dense state is read and
  written whole anyway).

A transition-pruned head (``head_transition_mask`` False) has ``exp(dt * A) = 0``: its new state
is the drive alone. ``state_batch_indices`` (vLLM's continuous batching): row ``i`` updates
``state[state_batch_indices[i]]``; an index equal to ``pad_slot_id`` or outside
``[0, state.shape[0])`` skips the row (state untouched, output 0). The output is computed from
the updated state in float32 (float64 for float64 inputs) before the state is rounded to its
dtype. No host synchronisation. :func:`plan_ssd_state_update` lists the launch without running it
(for the ahead-of-time compile report).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton._common import LOG2E, Launch, acc_dtype, device_guard, int_dummy, next_pow2, silu, softplus

MODE_DENSE, MODE_COMPACT, MODE_MASKED = 0, 1, 2


@triton.jit
def _ssd_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    kidx_ptr, kcount_ptr, mask_ptr, htrans_ptr, sbi_ptr, out_ptr,
    p, n, k, n_rows, heads_per_group, pad_slot, dt_lo, dt_hi,
    s_sb, s_sh, s_sp, s_sk, s_xb, s_xh, s_xp, s_tb, s_th, s_zb, s_zh, s_zp,
    sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, s_Dh, s_Dp, s_ob, s_oh, s_op,
    MODE: tl.constexpr, ZERO_TRANSITION: tl.constexpr, HAS_HTRANS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SBI: tl.constexpr, BLOCK_P: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    hi = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < p
    slots = tl.arange(0, KB)
    zero_p = offs_p * 0  # broadcast loads of per-(row, head) scalars keep every value a tensor

    if HAS_SBI:
        row = tl.load(sbi_ptr + bi + zero_p).to(tl.int64)
        row_ok = (row >= 0) & (row < n_rows) & (row != pad_slot)
        row = tl.where(row_ok, row, 0)
    else:
        row = bi + zero_p

    if MODE == 1:  # compact: slot j holds state kidx[h, j]
        kcount = tl.load(kcount_ptr + hi)
        slot_ok = slots < kcount
        s = tl.load(kidx_ptr + hi * k + slots, mask=slot_ok, other=0)
    else:
        slot_ok = slots < n
        s = slots
    if MODE == 2:
        kept = tl.load(mask_ptr + hi * n + slots, mask=slot_ok, other=0) != 0

    grp = (hi // heads_per_group).to(tl.int64)
    B_row = B_ptr + bi * sB_b + grp * sB_g
    C_row = C_ptr + bi * sC_b + grp * sC_g
    Bs = tl.load(B_row + s * sB_n, mask=slot_ok, other=0.0).to(ACC)
    Cs = tl.load(C_row + s * sC_n, mask=slot_ok, other=0.0).to(ACC)

    dt = tl.load(dt_ptr + bi * s_tb + hi * s_th + zero_p).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + hi + zero_p).to(ACC)
    if SOFTPLUS:
        dt = softplus(dt)
    dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    A2 = tl.load(A_ptr + hi + zero_p).to(ACC) * LOG2E
    dA = tl.exp2(dt * A2)  # (BLOCK_P,), equal entries
    if HAS_HTRANS:
        dA = tl.where(tl.load(htrans_ptr + hi + zero_p) != 0, dA, 0.0)
    x = tl.load(x_ptr + bi * s_xb + hi * s_xh + offs_p * s_xp, mask=pmask, other=0.0).to(ACC)
    dtx = dt * x

    tile_ok = pmask[:, None] & slot_ok[None, :]
    if HAS_SBI:
        tile_ok = tile_ok & row_ok[:, None]
    st_ptrs = state_ptr + row[:, None] * s_sb + hi * s_sh + offs_p[:, None] * s_sp + slots[None, :] * s_sk
    h = tl.load(st_ptrs, mask=tile_ok, other=0.0).to(ACC)
    decay = dA[:, None] + tl.zeros([BLOCK_P, KB], dtype=ACC)
    drive = dtx[:, None] * Bs[None, :]
    if MODE == 2:
        decay = tl.where(kept[None, :], decay, 0.0)
        if not ZERO_TRANSITION:
            drive = tl.where(kept[None, :], drive, 0.0)
    h = decay * h + drive
    y = tl.sum(h * Cs[None, :], axis=1)
    if MODE == 2:
        h = tl.where(kept[None, :], h, 0.0)
    tl.store(st_ptrs, h.to(state_ptr.dtype.element_ty), mask=tile_ok)

    if MODE == 1 and ZERO_TRANSITION:  # feed-through of the pruned states: no state, one reduction
        full = tl.arange(0, NB)
        fmask = full < n
        pruned = fmask & (tl.load(mask_ptr + hi * n + full, mask=fmask, other=1) == 0)
        Bf = tl.load(B_row + full * sB_n, mask=pruned, other=0.0).to(ACC)
        Cf = tl.load(C_row + full * sC_n, mask=pruned, other=0.0).to(ACC)
        y += dtx * tl.sum(Bf * Cf, axis=0)
    if HAS_D:
        y += x * tl.load(D_ptr + hi * s_Dh + offs_p * s_Dp, mask=pmask, other=0.0).to(ACC)
    if HAS_Z:
        zz = tl.load(z_ptr + bi * s_zb + hi * s_zh + offs_p * s_zp, mask=pmask, other=0.0).to(ACC)
        y = y * silu(zz)
    if HAS_SBI:
        y = tl.where(row_ok, y, 0.0)
    tl.store(out_ptr + bi * s_ob + hi * s_oh + offs_p * s_op, y.to(out_ptr.dtype.element_ty), mask=pmask)


def step_block_p(headdim: int, slots: int) -> int:
    """Head-dimension rows per program: tiles of about 2048 state entries (at least 1 row)."""
    return max(1, min(next_pow2(headdim), 2048 // next_pow2(max(slots, 1))))


def plan_ssd_state_update(
    state: torch.Tensor,
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
    head_mask: torch.Tensor | None,
    kept_idx: torch.Tensor | None,
    kept_count: torch.Tensor | None,
    head_transition_mask: torch.Tensor | None,
    pruned_states: str,
    state_batch_indices: torch.Tensor | None = None,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
) -> tuple[list[Launch], torch.Tensor]:
    """Allocate (or take) the output of one decode step and list its launch: ``(launches, out)``.

    ``head_mask`` bool ``(h, n)`` (None: dense), ``kept_idx`` int ``(h, k_max)`` and
    ``kept_count`` int ``(h,)`` its per-head kept-index table; ``state`` compact when its last
    dimension is not ``n``.
    """
    b, h, p = x.shape
    g, n = B.shape[-2:]
    dev = x.device
    _, acc_tl = acc_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    if head_mask is None:
        mode = MODE_DENSE
    else:
        mode = MODE_COMPACT if state.shape[-1] != n else MODE_MASKED
    slots = int(state.shape[-1])
    kb = next_pow2(max(slots, 1))
    nb = next_pow2(n) if mode == MODE_COMPACT and pruned_states == "zero_transition" else 1
    block_p = step_block_p(p, max(kb, nb))
    if out is None:
        out = torch.empty((b, h, p), dtype=x.dtype, device=dev)
    if b == 0:
        return [], out
    idummy = int_dummy(dev)
    kidx = kept_idx.contiguous() if kept_idx is not None and kept_idx.numel() else idummy
    kcount = kept_count.contiguous() if kept_count is not None else idummy
    mask_u8 = head_mask.contiguous().view(torch.uint8) if head_mask is not None else idummy
    htrans = (
        head_transition_mask.contiguous().view(torch.uint8) if head_transition_mask is not None else idummy
    )
    sbi = state_batch_indices if state_batch_indices is not None else idummy
    D_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else tuple(D.stride()))
    args = (
        state, x, dt, A, B, C,
        D if D is not None else out, z if z is not None else out,
        dt_bias if dt_bias is not None else out,
        kidx, kcount, mask_u8, htrans, sbi, out,
        p, n, kidx.shape[-1] if kept_idx is not None else 0, state.shape[0], h // g,
        -1 if pad_slot_id is None else int(pad_slot_id), float(dt_limit[0]), float(dt_limit[1]),
        *state.stride(), *x.stride(), *dt.stride(), *(z.stride() if z is not None else (0, 0, 0)),
        *B.stride(), *C.stride(), *D_strides, *out.stride(),
    )  # fmt: skip
    kwargs = dict(
        MODE=mode, ZERO_TRANSITION=pruned_states == "zero_transition",
        HAS_HTRANS=head_transition_mask is not None, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        HAS_SBI=state_batch_indices is not None, BLOCK_P=block_p, KB=kb, NB=nb, ACC=acc_tl,
        num_warps=4 if block_p * kb >= 1024 else 2,
    )  # fmt: skip
    return [Launch(_ssd_step_kernel, (triton.cdiv(p, block_p), h, b), args, kwargs)], out


def ssd_state_update_triton(*args, **kwargs) -> torch.Tensor:
    """Run :func:`plan_ssd_state_update`'s launch (arguments validated by the caller); returns
    ``out`` ``(b, h, p)`` in ``x.dtype``, ``state`` updated in place."""
    x = args[1]
    with device_guard(x.device):
        launches, out = plan_ssd_state_update(*args, **kwargs)
        for launch in launches:
            launch()
    return out
