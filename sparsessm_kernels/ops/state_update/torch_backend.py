"""Pure PyTorch backend of the decode step (any device): one step, vectorised over batch and channels.

Masks are handled on the ``k`` worked states of
:class:`~sparsessm_kernels.ops.selective_scan.torch_backend.SlotTables` (the same per-channel tables
as the chunked scan): the transition and drive are computed for the kept states only and the pruned
states' feed-through ``dt * x * sum_{pruned} B * C`` is one reduction, never a state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..plan import ScanPlan, StepInputs
from ..selective_scan.torch_backend import SlotTables
from ..slot_pool import step_on_slot_pool


def selective_state_update_torch(
    plan: ScanPlan,
    inputs: StepInputs,
    *,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step, vectorised over batch and channels; ``state`` updated in place.

    Shapes: see :class:`~sparsessm_kernels.ops.plan.StepInputs`. Returns ``(b, d)`` in ``x.dtype``,
    written to ``out`` when given. With ``state_batch_indices`` see :func:`_indexed_step`.
    """
    if inputs.state_batch_indices is not None:
        y = _indexed_step(plan, inputs, pad_slot_id)
    else:
        y = _step(plan, inputs)
    return y if out is None else out.copy_(y)


def _indexed_step(plan: ScanPlan, inputs: StepInputs, pad_slot_id: int | None) -> torch.Tensor:
    """The step on a state pool ``(S, d, n or k)``: batch row ``i`` updates
    ``state[state_batch_indices[i]]`` (:func:`~sparsessm_kernels.ops.slot_pool.step_on_slot_pool`: skipped
    rows get output 0, no host sync)."""

    def step(rows: torch.Tensor) -> torch.Tensor:
        return _step(plan, inputs._replace(state=rows, state_batch_indices=None))

    return step_on_slot_pool(inputs.state, inputs.state_batch_indices, pad_slot_id, step)


def _step(plan: ScanPlan, inputs: StepInputs) -> torch.Tensor:
    """The step on ``state`` ``(b, d, n or k)`` (one state row per batch row)."""
    state, x, dt, A, B, C, D, z, dt_bias, _ = inputs
    state_mask = plan.state_mask
    dtype = plan.math_dtype
    b, d = x.shape
    n = A.shape[1]
    dt_m = _as(dt, dtype)
    if dt_bias is not None:
        dt_m = dt_m + _as(dt_bias, dtype)
    if plan.softplus:
        dt_m = F.softplus(dt_m)
    x_m = _as(x, dtype)
    dtx = dt_m * x_m  # (b, d)
    B_m, C_m = _state_rows(B, d, dtype), _state_rows(C, d, dtype)  # (b, 1 or d, n)

    if state_mask is None:
        A_m, cols = _as(A, dtype), None
    else:
        tables = SlotTables(A, 1, state_mask, plan.kept_idx, plan.kept_count, False, dtype, for_scan=False)
        A_m = tables.A_kd.t()  # (d, k)
        cols = tables.slots[0] if state_mask.dim() == 1 else tables.slots  # (k,) or (d, k)
    compact = state_mask is not None and state.shape[-1] != n

    # h = exp(dt * A) * state + dt * x * B on the k worked states, in the math precision; a
    # state already in that precision holding every worked state is updated in place.
    in_place = (state_mask is None or compact) and state.dtype == dtype
    dA = torch.exp(dt_m[..., None] * A_m)  # (b, d, k)
    if in_place:
        h = state.mul_(dA)
    elif state_mask is None or compact:
        h = dA.mul_(state)
    else:
        h = dA.mul_(_take_states(_as(state, dtype), cols))
    h.addcmul_(dtx[..., None], B_m if cols is None else _take_states(B_m, cols))
    if state_mask is not None and state_mask.dim() == 2:
        h.mul_(tables.valid)  # padding slots of unequal per-channel masks stay 0
    C_k = C_m if cols is None else _take_states(C_m, cols)  # (b, 1 or d, k)
    y = (h * C_k).sum(dim=-1)
    if state_mask is not None and plan.zero_transition:
        # feed-through of the pruned states: dt * x * sum_{pruned} B * C
        pruned = ~state_mask
        bc = B_m * C_m  # (b, 1 or d, n)
        if state_mask.dim() == 1:
            y = y + dtx * (bc * pruned).sum(dim=-1)
        elif bc.shape[1] == 1:
            y = y + dtx * (bc[:, 0] @ pruned.t().to(dtype))
        else:
            y = y + dtx * (bc * pruned).sum(dim=-1)

    if in_place:
        pass
    elif state_mask is None or compact:
        state.copy_(h)
    else:
        full = torch.zeros(b, d, n, dtype=dtype, device=state.device)  # pruned entries -> 0
        state.copy_(full.scatter_add_(2, cols.expand(b, d, tables.k), h))  # padding slots add 0
    if D is not None:
        y = y + x_m * _as(D, dtype)
    if z is not None:
        y = y * F.silu(_as(z, dtype))
    return _as(y, x.dtype)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatcher round trip when ``t`` already has ``dtype``: the decode
    step is tiny, and ten no-op ``.to`` calls were a tenth of its host time."""
    return t if t.dtype == dtype else t.to(dtype)


def _state_rows(t: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    """B/C ``(b, n)`` -> ``(b, 1, n)`` (broadcast over channels); grouped ``(b, g, n)`` -> ``(b, d, n)``."""
    t = _as(t, dtype)
    if t.dim() == 2:
        return t[:, None, :]
    return t.repeat_interleave(d // t.shape[1], dim=1)


def _take_states(t: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Pick states along the last axis: ``cols`` ``(k,)`` (shared) or ``(d, k)`` (per channel).

    ``t`` is ``(b, 1 or d, n)``; the result is ``(b, 1 or d, k)`` for shared ``cols`` and
    ``(b, d, k)`` for per-channel ``cols``.
    """
    if cols.dim() == 1:
        return t.index_select(-1, cols)
    b = t.shape[0]
    d, k = cols.shape
    return torch.gather(t.expand(b, d, t.shape[-1]), 2, cols.expand(b, d, k))
