"""Pure PyTorch reference of the (sparse) Mamba-2 SSD scan and decode step: the oracle.

One timestep at a time over the full ``(b, nheads, headdim, d_state)`` state, float64-capable,
obviously correct rather than fast. Dense behaviour is mamba_ssm's ``mamba_chunk_scan_combined``
and its multi-head ``selective_state_update``; the sparse semantics are written down in
``docs/semantics.md`` (section "Mamba-2 (SSD)"). Use :func:`sparsessm_kernels.ssd_scan` to run it fast.
"""

from __future__ import annotations

import torch

from ..checks import math_dtype
from ..layout import check_pruned_states
from ..slot_pool import loop_over_slot_pool
from .checks import check_dt_limit, check_ssd_scan_inputs, check_ssd_state, check_ssd_step_inputs
from .common import discretize_dt, gate, head_state_masks
from .layout import SSDStateLayout, as_ssd_layout, check_head_transition_mask, compact_width

INF = float("inf")


def _dense_state(
    state: torch.Tensor, layout: SSDStateLayout | None, d_state: int, dtype: torch.dtype
) -> torch.Tensor:
    """A copy of ``state`` as a dense ``(..., nheads, headdim, d_state)`` tensor in ``dtype``."""
    if layout is not None and state.shape[-1] != d_state:
        return layout.expand_state(state.to(dtype))
    return state.to(dtype, copy=True)


def _step(
    h: torch.Tensor,
    x_t: torch.Tensor,
    dt_t: torch.Tensor,
    A: torch.Tensor,
    B_t: torch.Tensor,
    C_t: torch.Tensor,
    transition: torch.Tensor,
    feeds: torch.Tensor,
    carry: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence on the full state.

    ``h`` ``(b, h, p, n)``; ``x_t`` ``(b, h, p)``; ``dt_t`` ``(b, h)``; ``A`` ``(h,)``; ``B_t``,
    ``C_t`` ``(b, h, n)`` (already per head); ``transition``, ``feeds`` ``(h, n)`` bool; ``carry``
    ``(b,)`` 0/1 (0 resets the state: a new sequence of ``seq_idx`` starts). Returns
    ``(h_t, y_t (b, h, p))`` with ``y_t = sum_n C_t * h_t``.
    """
    zero = torch.zeros((), dtype=h.dtype, device=h.device)
    dA = torch.exp(dt_t * A)  # (b, h)
    trans = torch.where(transition, dA[..., None], zero)  # (b, h, n)
    if carry is not None:
        trans = trans * carry[:, None, None]
    drive = torch.where(feeds, dt_t[..., None] * B_t, zero)  # (b, h, n)
    h = trans[:, :, None, :] * h + drive[:, :, None, :] * x_t[..., None]
    return h, (h * C_t[:, :, None, :]).sum(dim=-1)


def ssd_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, INF),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    *,
    seq_idx: torch.Tensor | None = None,
    state_mask: torch.Tensor | SSDStateLayout | None = None,
    pruned_states: str = "remove",
    head_transition_mask: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD scan, one timestep at a time (arguments as :func:`sparsessm_kernels.ssd_scan`).

    Args:
        x: ``(b, l, nheads, headdim)``. dt: ``(b, l, nheads)``. A: ``(nheads,)`` float32/float64.
        B, C: ``(b, l, ngroups, d_state)``; head ``h`` uses group ``h // (nheads // ngroups)``.
        D: ``(nheads,)`` or ``(nheads, headdim)``. z: ``(b, l, nheads, headdim)`` gate
            (``out * silu(z)``). dt_bias: ``(nheads,)``.
        dt_softplus, dt_limit: ``dt = clamp(softplus(dt + dt_bias), *dt_limit)``.
        initial_states: ``(b, nheads, headdim, d_state)`` (or compact ``k`` with a uniform mask).
        return_final_states: also return the state after the last step.
        seq_idx: ``(b, l)`` int, non-decreasing: the state restarts from 0 where it changes (and
            ``initial_states`` only applies to a first sequence with ``seq_idx == 0``).
        state_mask, pruned_states, head_transition_mask: sparse semantics, docs/semantics.md.

    Returns:
        ``out`` ``(b, l, nheads, headdim)`` in ``x.dtype``, and with ``return_final_states`` the
        final state ``(b, nheads, headdim, d_state)`` in the math precision (float32, float64 when
        an input is float64) with pruned entries 0.
    """
    check_pruned_states(pruned_states)
    limits = check_dt_limit(dt_limit)
    shape = check_ssd_scan_inputs(x, dt, A, B, C, D, z, dt_bias, seq_idx)
    b, l, h, p, g, n = shape.batch, shape.seqlen, shape.nheads, shape.headdim, shape.ngroups, shape.d_state
    layout = as_ssd_layout(state_mask, h, g, n)
    check_ssd_state("initial_states", initial_states, b, shape, compact_width(layout), x, optional=True)
    heads_kept = check_head_transition_mask(head_transition_mask, h, x.device)
    dtype = math_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)

    dt_m = discretize_dt(dt, dt_bias, dt_softplus, limits, dtype)  # (b, l, h)
    x_m = x.to(dtype)
    A_m = A.to(dtype)
    B_h = B.to(dtype).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    C_h = C.to(dtype).repeat_interleave(h // g, dim=2)
    kept, transition, feeds = head_state_masks(layout, heads_kept, pruned_states, h, n, x.device)
    if initial_states is None:
        state = torch.zeros(b, h, p, n, dtype=dtype, device=x.device)
    else:
        state = _dense_state(initial_states, layout, n, dtype)
    prev_seq = None if seq_idx is None else torch.zeros(b, dtype=seq_idx.dtype, device=x.device)
    ys = []
    for t in range(l):
        carry = None
        if seq_idx is not None:
            carry = (seq_idx[:, t] == prev_seq).to(dtype)
            prev_seq = seq_idx[:, t]
        state, y = _step(state, x_m[:, t], dt_m[:, t], A_m, B_h[:, t], C_h[:, t], transition, feeds, carry)
        ys.append(y)
    out = gate(torch.stack(ys, dim=1), x_m, D, z).to(x.dtype)
    if not return_final_states:
        return out
    return out, state * kept[:, None, :]


def ssd_state_update_ref(
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
    dt_limit: tuple[float, float] = (0.0, INF),
    state_mask: torch.Tensor | SSDStateLayout | None = None,
    pruned_states: str = "remove",
    head_transition_mask: torch.Tensor | None = None,
    state_batch_indices: torch.Tensor | None = None,
    pad_slot_id: int | None = None,
) -> torch.Tensor:
    """One SSD decode step; ``state`` is updated in place (arguments as
    :func:`sparsessm_kernels.ssd_state_update`).

    Args:
        state: ``(b, nheads, headdim, d_state)``, or compact ``(b, nheads, headdim, k)`` (kept
            states in ascending order) with a mask keeping ``k`` states in every head. Any float
            dtype; pruned entries of a dense state become 0.
        x: ``(b, nheads, headdim)``. dt: ``(b, nheads)``. A: ``(nheads,)``. B, C: ``(b, ngroups,
            d_state)``. D: ``(nheads,)`` or ``(nheads, headdim)``. z: ``(b, nheads, headdim)``.
            dt_bias: ``(nheads,)``. dt_softplus, dt_limit: as in :func:`ssd_scan_ref`.
        state_batch_indices: optional ``(b,)`` int: row ``i`` updates ``state[state_batch_indices[i]]``
            of a state with any number ``S`` of rows; an index outside ``[0, S)`` skips the row
            (output 0, no state change). Valid indices must be distinct.
        pad_slot_id: optional int; rows whose index equals it are skipped too.

    Returns:
        ``out`` ``(b, nheads, headdim)`` in ``x.dtype``, computed from the updated state in the
        math precision before it is rounded to ``state.dtype``.
    """
    check_pruned_states(pruned_states)
    limits = check_dt_limit(dt_limit)
    shape = check_ssd_step_inputs(x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    h, g, n = shape.nheads, shape.ngroups, shape.d_state
    layout = as_ssd_layout(state_mask, h, g, n)
    rows = None if state_batch_indices is not None else shape.batch
    check_ssd_state("state", state, rows, shape, compact_width(layout), x)
    heads_kept = check_head_transition_mask(head_transition_mask, h, x.device)
    if state_batch_indices is not None:  # one batch row at a time, each on its own state row

        def step_row(one: slice, state_row: torch.Tensor) -> torch.Tensor:
            return ssd_state_update_ref(
                state_row, x[one], dt[one], A, B[one], C[one], D, None if z is None else z[one], dt_bias,
                dt_softplus, dt_limit=limits, state_mask=layout, pruned_states=pruned_states,
                head_transition_mask=heads_kept,
            )  # fmt: skip

        return loop_over_slot_pool(state, x, state_batch_indices, pad_slot_id, step_row)
    dtype = math_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    kept, transition, feeds = head_state_masks(layout, heads_kept, pruned_states, h, n, x.device)
    dt_m = discretize_dt(dt, dt_bias, dt_softplus, limits, dtype)
    B_h = B.to(dtype).repeat_interleave(h // g, dim=1)  # (b, h, n)
    C_h = C.to(dtype).repeat_interleave(h // g, dim=1)
    hs, y = _step(
        _dense_state(state, layout, n, dtype), x.to(dtype), dt_m, A.to(dtype), B_h, C_h, transition, feeds
    )
    hs = hs * kept[:, None, :]
    compact = layout is not None and state.shape[-1] != n
    state.copy_(layout.compact_state(hs) if compact else hs)
    return gate(y, x, D, z).to(x.dtype)
