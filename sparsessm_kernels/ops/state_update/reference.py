"""Pure PyTorch reference of the decode step: the oracle the step kernels are tested against.

One step of :func:`~sparsessm_kernels.ops.selective_scan.reference.selective_scan_ref` on a
carried state, float64-capable. Dense behaviour is exactly mamba_ssm's
``selective_state_update``; the sparse semantics are written down in ``docs/semantics.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_out, check_pad_slot_id, check_state_update_inputs, math_dtype
from ..layout import StateLayout, as_layout, check_pruned_states
from ..selective_scan.reference import _bc_per_channel, _masks
from ..slot_pool import loop_over_slot_pool


def selective_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    *,
    state_mask: torch.Tensor | StateLayout | None = None,
    pruned_states: str = "zero_transition",
    state_batch_indices: torch.Tensor | None = None,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step of the selective SSM; ``state`` is updated in place.

    Args:
        state: ``(b, d, n)`` dense state, or compact ``(b, d, k)`` holding the kept states in
            ascending ``n`` when the mask keeps the same ``k`` states per channel (column, N:M).
            Any floating dtype; updated in place (pruned entries of a dense state become 0).
        x: ``(b, d)`` input. dt: ``(b, d)`` time step. A: ``(d, n)``.
        B, C: ``(b, n)`` or grouped ``(b, g, n)``. D: ``(d,)``. z: ``(b, d)``. dt_bias: ``(d,)``.
        dt_softplus: apply softplus to ``dt + dt_bias``.
        state_mask, pruned_states: as in :func:`selective_scan_ref`.
        state_batch_indices: optional ``(b,)`` int32/int64 (continuous batching): row ``i`` of the
            batch uses ``state[state_batch_indices[i]]`` of a state with any number ``S`` of rows.
            An index outside ``[0, S)`` (a pad, e.g. -1) skips the row: its output is 0 and no
            state changes. Valid indices must be distinct.
        pad_slot_id: optional int: rows whose ``state_batch_indices`` entry equals it are skipped
            too, even when it names a row of the pool (docs/semantics.md, "Skipped rows").
        out: optional preallocated ``(b, d)`` output in ``x.dtype``, written and returned.

    Returns:
        ``out`` ``(b, d)`` in ``x.dtype``. The output is computed from the updated state in the
        math precision (float32, or float64), before it is rounded to ``state.dtype``.
    """
    check_pruned_states(pruned_states)
    n = A.shape[-1] if isinstance(A, torch.Tensor) and A.dim() == 2 else 0
    d = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 2 else 0
    layout = as_layout(state_mask, d, n) if n else None
    n_kept = layout.n_kept if layout is not None and layout.uniform else None
    shape = check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias, n_kept, state_batch_indices)
    pad_slot_id = check_pad_slot_id(pad_slot_id)
    check_out(out, x, "(b, d) like x")
    if out is not None:
        return out.copy_(
            selective_state_update_ref(
                state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_mask=layout,
                pruned_states=pruned_states, state_batch_indices=state_batch_indices,
                pad_slot_id=pad_slot_id,
            )
        )  # fmt: skip
    if state_batch_indices is not None:  # one row at a time, each on its own state row

        def step_row(one: slice, state_row: torch.Tensor) -> torch.Tensor:
            return selective_state_update_ref(
                state_row, x[one], dt[one], A, B[one], C[one], D, None if z is None else z[one], dt_bias,
                dt_softplus, state_mask=layout, pruned_states=pruned_states,
            )  # fmt: skip

        return loop_over_slot_pool(state, x, state_batch_indices, pad_slot_id, step_row)
    dtype = math_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    d, n = shape.d_inner, shape.d_state
    compact = layout is not None and state.shape[-1] != n

    dt_m = dt.to(dtype)
    if dt_bias is not None:
        dt_m = dt_m + dt_bias.to(dtype)
    if dt_softplus:
        dt_m = F.softplus(dt_m)
    x_m = x.to(dtype)
    B_ch = _bc_per_channel(B, shape.batch, d, (), dtype)  # (b, d, n)
    C_ch = _bc_per_channel(C, shape.batch, d, (), dtype)
    kept, feeds = _masks(layout, d, n, pruned_states, x.device)
    h = layout.to(x.device).expand_state(state.to(dtype)) if compact else state.to(dtype, copy=True)

    zero = torch.zeros((), dtype=dtype, device=x.device)
    transition = torch.where(kept, torch.exp(dt_m[..., None] * A.to(dtype)), zero)
    drive = torch.where(feeds, (dt_m * x_m)[..., None] * B_ch, zero)
    h = transition * h + drive
    out = (h * C_ch).sum(dim=-1)
    h = h * kept
    state.copy_(layout.to(x.device).compact_state(h) if compact else h)
    if D is not None:
        out = out + x_m * D.to(dtype)
    if z is not None:
        out = out * F.silu(z.to(dtype))
    return out.to(x.dtype)
