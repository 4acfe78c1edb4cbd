"""Triton decode-step kernel: one step of the (sparse) selective SSM, state updated in place.

Semantics are :func:`sparsessm_kernels.ops.state_update.reference.selective_state_update_ref`. A program owns
``BLOCK_D`` channels of one batch row and works on a ``(BLOCK_D, KB)`` tile of the state, where
``KB = next_pow2(slots)`` follows the number of **stored** states, not ``n``:

* dense state, no mask: the ``n`` states (``KB = next_pow2(n)``);
* compact ``(b, d, k)`` state (column or N:M masks): the ``k`` kept states; ``A``, ``B`` and ``C``
  are read through the kept-index table, so a 2:4 cache moves half the bytes of a dense one.
  Under ``zero_transition`` the pruned states' feed-through ``dt * x * sum_{pruned} B * C`` is
  ``dt * x * (sum_all B * C - sum_kept B * C)``: one ``n``-vector product per row, no state;
* dense ``(b, d, n)`` state with a mask (any mask, e.g. unstructured): the ``n`` states with the
  pruned transitions (``zero_transition``) or drives (``remove``) set to 0 and the pruned entries
  stored as 0. A dense state is read and written whole anyway, so gathering would not save bytes.

``state_batch_indices`` (``(b,)`` integers, as in vLLM's continuous batching): row ``i`` updates
``state[state_batch_indices[i]]``; an index outside ``[0, state.shape[0])`` (e.g. a pad value of
-1) or equal to ``pad_slot_id`` skips the row: its state is untouched and its output is 0. The
indices of valid rows must be distinct.

The output is computed from the updated state in float32 (float64 for float64 inputs) before the
state is rounded to its dtype. As in the prefill scan (``selective_scan/triton_backend.py``),
``exp`` is ``exp2`` of ``A`` pre-scaled by ``log2(e)`` and softplus / SiLU use the hardware's
base-2 exp / log and a fast division. The launch configuration (``BLOCK_D``, ``num_warps``) comes
from :data:`STEP_CONFIG_TABLE` per shape class ``(b * d, tile width)``; no autotuning, which would
replay the in-place update. No host synchronisation.
:func:`plan_state_update` lists the launch without running it (for the ahead-of-time compile of
``sparsessm_kernels.ops.triton.aot``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .. import plan as _plan
from ..plan import ScanPlan, StepInputs
from ..triton._common import (
    LOG2E,
    TL_DTYPES,
    Launch,
    bc_strides,
    device_guard,
    int_dummy,
    next_pow2,
    silu,
    softplus,
)

MODE_DENSE, MODE_COMPACT, MODE_MASKED = 0, 1, 2
# the kernel's MODE values, and the plan's mask kinds as its MASK_KIND values
K_DENSE: tl.constexpr = tl.constexpr(MODE_DENSE)
K_COMPACT: tl.constexpr = tl.constexpr(MODE_COMPACT)
K_MASKED: tl.constexpr = tl.constexpr(MODE_MASKED)
MASK_COLUMN: tl.constexpr = tl.constexpr(_plan.MASK_COLUMN)


class StepConfig(NamedTuple):
    """The launch of the decode-step kernel: ``block_d`` channels per program (a power of 2) and
    ``num_warps``."""

    block_d: int
    num_warps: int


SMALL_ROWS = 16384
"""``b * d`` up to which a step is a small one (batch 1 to ~8 of the benchmark layers): too few
channels to fill the GPU with wide programs, so narrower programs give more of them."""

STEP_CONFIG_TABLE: list[tuple[int | None, int, StepConfig]] = [
    (SMALL_ROWS, 16, StepConfig(8, 2)),
    (SMALL_ROWS, 64, StepConfig(8, 4)),
    (SMALL_ROWS, 256, StepConfig(4, 4)),
    (None, 16, StepConfig(64, 4)),
    (None, 64, StepConfig(32, 8)),
    (None, 256, StepConfig(16, 8)),
]
"""``(max b * d or None for any, max width, config)`` rows, the first that fits a call is taken.

The width is the tile's state axis, ``max(next_pow2(stored states), next_pow2(n) when the compact
zero_transition feed-through reads every B / C row)``: 8 or 16 for ``n = 16`` (2:4 compact, dense).
Large steps (the batch-256 benchmark rows) take tiles of 1024 (width <= 16) to 4096 elements, 8 to
16 per thread: enough bytes in flight per SM for a memory-bound kernel, every program's registers
well below the spill limit. Small steps take tiles of 128 to 1024 elements so that ``b * d /
block_d`` programs still cover the SMs (batch 1 at ``d = 1536``: 192 programs). Every
configuration is compiled for sm_90 in ``benchmarks/results/triton_kernels_sm90_compile.json``
(registers, no spill). Not yet timed on a GPU: ``benchmarks/bench_step.py --sweep`` (CUDA-graph
replays over rotating state buffers) times the candidates, and a measured best replaces an entry."""


def step_config(rows: int, width: int) -> StepConfig:
    """The :data:`STEP_CONFIG_TABLE` entry of a step with ``rows = b * d`` and tile ``width``."""
    for max_rows, max_width, cfg in STEP_CONFIG_TABLE:
        if (max_rows is None or rows <= max_rows) and width <= max_width:
            return cfg
    raise ValueError(f"width: expected at most {STEP_CONFIG_TABLE[-1][1]} (n <= 256), got {width}")


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    kidx_ptr, mask_ptr, sbi_ptr, out_ptr,
    d, n, k, n_rows, pad_slot, dpg_B, dpg_C,
    s_sb, s_sd, s_sk, s_xb, s_xd, s_tb, s_td, s_zb, s_zd, sA_d, sA_n,
    sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, s_D, s_bias, s_mc, s_ob, s_od,
    MODE: tl.constexpr, MASK_KIND: tl.constexpr, ZERO_TRANSITION: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SBI: tl.constexpr, BLOCK_D: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < d
    slots = tl.arange(0, KB)

    if HAS_SBI:  # the row's index, per channel (a broadcast load keeps every mask a tensor)
        row = tl.load(sbi_ptr + bi + offs_d * 0).to(tl.int64)
        row_ok = (row >= 0) & (row < n_rows) & (row != pad_slot)
        row = tl.where(row_ok, row, 0)
    else:
        row = bi + offs_d * 0

    # state index of every (channel, slot) and whether the slot exists
    if MODE == K_COMPACT:
        valid = dmask[:, None] & (slots[None, :] < k)
        if MASK_KIND == MASK_COLUMN:
            s = tl.load(kidx_ptr + slots, mask=slots < k, other=0)[None, :]
        else:
            s = tl.load(kidx_ptr + offs_d[:, None] * k + slots[None, :], mask=valid, other=0)
    else:
        valid = dmask[:, None] & (slots[None, :] < n)
        s = slots[None, :]
    if MODE == K_MASKED:
        if MASK_KIND == MASK_COLUMN:
            kept = tl.load(mask_ptr + slots, mask=slots < n, other=0)[None, :] != 0
        else:
            kept = tl.load(mask_ptr + offs_d[:, None] * s_mc + slots[None, :], mask=valid, other=0) != 0

    grp_B = (offs_d // dpg_B).to(tl.int64)
    grp_C = (offs_d // dpg_C).to(tl.int64)
    B_row = B_ptr + bi * sB_b + grp_B[:, None] * sB_g
    C_row = C_ptr + bi * sC_b + grp_C[:, None] * sC_g
    A2 = tl.load(A_ptr + offs_d[:, None] * sA_d + s * sA_n, mask=valid, other=0.0).to(ACC) * LOG2E
    Bs = tl.load(B_row + s * sB_n, mask=valid, other=0.0).to(ACC)
    Cs = tl.load(C_row + s * sC_n, mask=valid, other=0.0).to(ACC)

    dt = tl.load(dt_ptr + bi * s_tb + offs_d * s_td, mask=dmask, other=0.0).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d * s_bias, mask=dmask, other=0.0).to(ACC)
    if SOFTPLUS:
        dt = softplus(dt)
    x = tl.load(x_ptr + bi * s_xb + offs_d * s_xd, mask=dmask, other=0.0).to(ACC)
    dtx = dt * x

    st_ptrs = state_ptr + row[:, None] * s_sb + offs_d[:, None] * s_sd + slots[None, :] * s_sk
    st_mask = valid
    if HAS_SBI:
        st_mask = valid & row_ok[:, None]
    h = tl.load(st_ptrs, mask=st_mask, other=0.0).to(ACC)
    dA = tl.exp2(dt[:, None] * A2)
    drive = dtx[:, None] * Bs
    if MODE == K_MASKED:
        dA = tl.where(kept, dA, 0.0)
        if not ZERO_TRANSITION:
            drive = tl.where(kept, drive, 0.0)
    h = dA * h + drive
    y = tl.sum(h * Cs, axis=1)
    if MODE == K_COMPACT and ZERO_TRANSITION:  # pruned states: feed-through only, all rows minus the kept
        full = tl.arange(0, NB)
        fmask = dmask[:, None] & (full[None, :] < n)
        Bf = tl.load(B_row + full[None, :] * sB_n, mask=fmask, other=0.0).to(ACC)
        Cf = tl.load(C_row + full[None, :] * sC_n, mask=fmask, other=0.0).to(ACC)
        y += dtx * (tl.sum(Bf * Cf, axis=1) - tl.sum(Bs * Cs, axis=1))
    if MODE == K_MASKED:
        h = tl.where(kept, h, 0.0)
    tl.store(st_ptrs, h.to(state_ptr.dtype.element_ty), mask=st_mask)

    if HAS_D:
        y += x * tl.load(D_ptr + offs_d * s_D, mask=dmask, other=0.0).to(ACC)
    if HAS_Z:
        zz = tl.load(z_ptr + bi * s_zb + offs_d * s_zd, mask=dmask, other=0.0).to(ACC)
        y = y * silu(zz)
    if HAS_SBI:
        y = tl.where(row_ok, y, 0.0)
    tl.store(out_ptr + bi * s_ob + offs_d * s_od, y.to(out_ptr.dtype.element_ty), mask=dmask)


def plan_state_update(
    plan: ScanPlan,
    inputs: StepInputs,
    config: StepConfig | None = None,
    *,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
) -> tuple[list[Launch], torch.Tensor]:
    """List the launch of one decode step: ``(launches, out)`` (``out`` allocated when not given);
    ``config`` overrides the table's (for sweeps)."""
    state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices = inputs
    state_mask, kept_idx = plan.state_mask, plan.kept_idx
    b, d = x.shape
    n = A.shape[1]
    dev = x.device
    acc_tl = TL_DTYPES[plan.math_dtype]
    if state_mask is None:
        mode, slots = MODE_DENSE, n
    else:
        if state.shape[-1] != n:
            mode, slots = MODE_COMPACT, int(state.shape[-1])
        else:
            mode, slots = MODE_MASKED, n
    kb = next_pow2(max(slots, 1))
    nb = next_pow2(n) if mode == MODE_COMPACT and plan.zero_transition else 1
    if config is None:
        config = step_config(b * d, max(kb, nb))
    block_d = min(config.block_d, next_pow2(d))

    gB, sB_b, sB_g, sB_n = bc_strides(B, B.dim() == 3)
    gC, sC_b, sC_g, sC_n = bc_strides(C, C.dim() == 3)
    if out is None:
        out = torch.empty((b, d), dtype=x.dtype, device=dev)
    if b == 0 or d == 0:
        return [], out
    idummy = int_dummy(dev)  # for integer-pointer arguments the kernel variant never reads
    kidx = kept_idx.contiguous() if kept_idx is not None and kept_idx.numel() else idummy
    mask_u8 = state_mask.contiguous().view(torch.uint8) if state_mask is not None else idummy
    s_mc = mask_u8.stride(0) if state_mask is not None and state_mask.dim() == 2 else 0
    sbi = state_batch_indices if state_batch_indices is not None else idummy
    args = (
        state, x, dt, A, B, C,
        D if D is not None else out, z if z is not None else out, dt_bias if dt_bias is not None else out,
        kidx, mask_u8, sbi, out,
        d, n, slots, state.shape[0], -1 if pad_slot_id is None else int(pad_slot_id), d // gB, d // gC,
        *state.stride(), *x.stride(), *dt.stride(), *(z.stride() if z is not None else (0, 0)),
        *A.stride(), sB_b, sB_g, sB_n, sC_b, sC_g, sC_n,
        D.stride(0) if D is not None else 0, dt_bias.stride(0) if dt_bias is not None else 0,
        s_mc, *out.stride(),
    )  # fmt: skip
    kwargs = dict(
        MODE=mode, MASK_KIND=plan.mask_kind, ZERO_TRANSITION=plan.zero_transition,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=plan.softplus, HAS_SBI=state_batch_indices is not None,
        BLOCK_D=block_d, KB=kb, NB=nb, ACC=acc_tl, num_warps=config.num_warps,
    )  # fmt: skip
    return [Launch(_state_update_kernel, (triton.cdiv(d, block_d), b), args, kwargs)], out


def selective_state_update_triton(
    plan: ScanPlan,
    inputs: StepInputs,
    *,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
    config: StepConfig | None = None,
) -> torch.Tensor:
    """One decode step on the Triton kernel; arguments validated by the public op.

    ``state`` ``(b, d, n)``, compact ``(b, d, k)``, or ``(S, d, ...)`` with ``state_batch_indices``;
    updated in place; rows indexed ``pad_slot_id`` skipped. Returns ``(b, d)`` in ``x.dtype`` (written
    to ``out`` when given).
    """
    with device_guard(inputs.x.device):
        launches, out = plan_state_update(plan, inputs, config, pad_slot_id=pad_slot_id, out=out)
        for launch in launches:
            launch()
    return out
