"""A decode step on a state pool addressed by ``state_batch_indices``, without a host sync.

Shared by the Mamba-1 (:mod:`.state_update`) and Mamba-2 (:mod:`.ssd`) torch backends; the rule for
skipped rows is stated once in ``docs/semantics.md`` ("Decode with ``state_batch_indices``").
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def step_on_slot_pool(
    state: torch.Tensor,
    state_batch_indices: torch.Tensor,
    pad_slot_id: int | None,
    step: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run ``step`` for batch row ``i`` on ``state[state_batch_indices[i]]``.

    Args:
        state: ``(S, ...)`` the pool, updated in place.
        state_batch_indices: ``(b,)`` integer; rows whose index is outside ``[0, S)`` or equals
            ``pad_slot_id`` are skipped (output 0, no state row changes).
        step: takes ``(b, ...)`` state rows (one per batch row), updates them in place and returns
            the output ``(b, ...)``.

    Returns:
        ``step``'s output with skipped rows zeroed.

    No ``nonzero`` / ``.item()``: every batch row is computed on a gathered copy of its state row (row
    0 for skipped rows), and the pool is rewritten through the inverse map ``owner[s]`` (the batch row
    that updates state row ``s``, or none), built by one scatter in which skipped rows write to an
    extra slot ``S`` that is then dropped. This reads and writes the whole pool once, the price of not
    knowing on the host which rows are valid.
    """
    S, b = state.shape[0], state_batch_indices.shape[0]
    valid = (state_batch_indices >= 0) & (state_batch_indices < S)
    if pad_slot_id is not None:
        valid &= state_batch_indices != pad_slot_id
    rows = torch.where(valid, state_batch_indices, 0).long()
    sub = state.index_select(0, rows)  # (b, ...): a copy, updated in place by step
    y = step(sub)
    if b == 0:
        return y
    y = torch.where(valid.view(b, *([1] * (y.dim() - 1))), y, torch.zeros((), dtype=y.dtype, device=y.device))
    owner = torch.full((S + 1,), b, dtype=torch.long, device=state.device)
    owner.scatter_(0, torch.where(valid, rows, S), torch.arange(b, device=state.device))
    owner = owner[:S]
    updated = sub.index_select(0, owner.clamp(max=b - 1))  # (S, ...)
    state.copy_(torch.where((owner < b).view(S, *([1] * (state.dim() - 1))), updated, state))
    return y


def loop_over_slot_pool(
    state: torch.Tensor,
    x: torch.Tensor,
    state_batch_indices: torch.Tensor,
    pad_slot_id: int | None,
    step_row: Callable[[slice, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The references' form of the same rule: one batch row at a time, on its own state row.

    ``step_row(rows, state_row)`` gets the batch slice ``i:i+1`` and the ``(1, ...)`` view of
    ``state[state_batch_indices[i]]`` (updated in place) and returns that row's output; skipped rows
    (index outside ``[0, S)`` or equal to ``pad_slot_id``) keep output 0. Returns ``(b, ...)`` like ``x``.
    """
    out = torch.zeros_like(x)
    for i, row in enumerate(state_batch_indices.tolist()):
        if not 0 <= row < state.shape[0] or row == pad_slot_id:
            continue
        out[i : i + 1] = step_row(slice(i, i + 1), state[row : row + 1])
    return out
