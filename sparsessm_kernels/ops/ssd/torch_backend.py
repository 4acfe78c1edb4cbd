"""Pure PyTorch backend of the (sparse) Mamba-2 SSD scan and decode step; any device.

The scan is the chunked "state space duality" form of the Mamba-2 paper: the sequence is cut
into chunks of ``Q`` timesteps; inside a chunk the output is a masked, decayed attention-like
product (``(C B^T) * L`` with ``L[i, j] = exp(dA_{j+1} + ... + dA_i)``), the chunk's contribution to
the state is one contraction, and the states are passed from chunk to chunk by a short loop over
chunks. Work is ``O(l * Q)`` per head for the intra-chunk part and ``O(l * headdim * k)`` for the
states -- all batched tensor ops, no loop over timesteps.

Sparsity costs nothing where it is pruned:

* a state mask keeps ``k`` of the ``d_state`` columns of ``B`` / ``C``: they are gathered once per
  group (per head for a per-head mask), and every product runs on ``k`` columns;
* heads whose transition is zeroed (``head_transition_mask``) have no recurrence: their output is
  the feed-through ``dt * x * sum_s B_s C_s`` and their final state the last step's drive;
* under ``pruned_states="zero_transition"`` the pruned states' feed-through
  ``dt * x * sum_{pruned s} B_s C_s`` is one reduction, never a recurrence.

Arguments are validated by the caller (:mod:`sparsessm_kernels.ops.ssd`); shapes as in the
reference (:mod:`.reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import math_dtype
from ..slot_pool import step_on_slot_pool
from .common import discretize_dt, gate
from .layout import SSDStateLayout


class _Rows:
    """Which columns of ``B`` / ``C`` each head works on.

    ``rows`` is ``ngroups`` (no mask, or a mask shared within every group) or ``nheads`` (per-head
    mask); head ``h`` reads row ``row_of_head[h]``.

    Attributes:
        k: columns worked on (``d_state`` without a mask, else the most any head keeps).
        idx: ``(rows, k)`` int64 kept column indices (padding 0), or None (all columns, in order).
        valid: ``(rows, k)`` 0/1 float of real (not padding) columns, or None.
        row_of_head: ``(nheads,)`` int64.
        pruned: ``(rows, d_state)`` 0/1 float of pruned columns, or None (no mask).
    """

    def __init__(
        self, layout: SSDStateLayout | None, nheads: int, ngroups: int, d_state: int, dtype, device
    ) -> None:
        per_group = layout is None or layout.groups is not None
        rows = ngroups if per_group else nheads
        self.rows = rows
        self.row_of_head = torch.arange(nheads, device=device) // (nheads // rows)
        self.idx = self.valid = self.pruned = None
        self.k = d_state
        if layout is not None:
            table = (layout.groups if per_group else layout.heads).to(device)
            self.k = table.n_kept
            self.idx = table.kept_idx.long()
            self.valid = (torch.arange(self.k, device=device)[None, :] < table.kept_count[:, None]).to(dtype)
            mask = layout.group_mask if per_group else layout.head_mask
            self.pruned = (~mask.to(device)).to(dtype)

    def per_row(self, t: torch.Tensor, ngroups: int) -> torch.Tensor:
        """``B`` or ``C`` ``(..., ngroups, d_state)`` -> ``(..., rows, d_state)``."""
        return t if self.rows == ngroups else t.repeat_interleave(self.rows // ngroups, dim=-2)

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """``(..., rows, d_state)`` -> the worked columns ``(..., rows, k)`` (padding 0)."""
        if self.idx is None:
            return t
        idx = self.idx.expand(*t.shape[:-2], *self.idx.shape)
        return torch.gather(t, -1, idx) * self.valid

    def head_slots(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(idx, valid)`` per head, ``(nheads, k)`` each, or None without a mask."""
        if self.idx is None:
            return None
        return self.idx[self.row_of_head], self.valid[self.row_of_head]


def _segsum_exp(dA: torch.Tensor) -> torch.Tensor:
    """``L[..., i, j] = exp(dA[..., j+1] + ... + dA[..., i])`` for ``i >= j``, 0 above the diagonal.

    ``dA`` ``(..., Q)`` -> ``(..., Q, Q)``. Summed directly (a cumulative sum of masked copies), not as
    a difference of two cumulative sums, which would lose precision for long decays.
    """
    Q = dA.shape[-1]
    below = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=dA.device), diagonal=-1)
    seg = torch.cumsum(dA[..., :, None].expand(*dA.shape, Q).masked_fill(~below, 0), dim=-2)
    lower = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=dA.device))
    return torch.exp(seg.masked_fill(~lower, -torch.inf))


def _chunked_scan(
    X: torch.Tensor,
    dA: torch.Tensor,
    Bk: torch.Tensor,
    Ck: torch.Tensor,
    h0: torch.Tensor | None,
    seq_idx: torch.Tensor | None,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence ``h_t = exp(dA_t) h_{t-1} + B_t X_t``, ``y_t = C_t . h_t`` over chunks.

    ``X`` ``(b, l, H, p)`` (``dt * x``); ``dA`` ``(b, l, H)`` (``dt * A``); ``Bk``, ``Ck``
    ``(b, l, R, k)`` with ``R`` dividing ``H``: head ``i`` reads row ``i // (H // R)`` (so the heads
    of a row are contracted together, never expanded); ``h0`` ``(b, H, p, k)`` or None;
    ``seq_idx`` ``(b, l)`` or None (the state restarts where it changes; position -1 has index 0).
    Returns ``(y (b, l, H, p), h_last (b, H, p, k))``.
    """
    b, l, H, p = X.shape
    R, k = Bk.shape[-2:]
    G = H // R
    Q = min(chunk, l)
    pad = (-l) % Q
    if pad:  # padded steps have dt = 0: no decay, no drive, so the last state is kept
        X, Bk, Ck = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (X, Bk, Ck))
        dA = F.pad(dA, (0, 0, 0, pad))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1)
    c = (l + pad) // Q
    Xc = X.reshape(b, c, Q, H, p)
    Bc = Bk.reshape(b, c, Q, R, k)
    Cc = Ck.reshape(b, c, Q, R, k)
    dAc = dA.reshape(b, c, Q, H).permute(0, 1, 3, 2)  # (b, c, H, Q)
    A_cs = torch.cumsum(dAc, dim=-1)
    L = _segsum_exp(dAc)  # (b, c, H, Q, Q)
    if seq_idx is not None:
        sq = seq_idx.reshape(b, c, Q)
        L = L * (sq[:, :, :, None] == sq[:, :, None, :])[:, :, None].to(L.dtype)

    # Intra-chunk (diagonal blocks): y_i += sum_{j <= i} (C_i . B_j) L[i, j] X_j
    CB = torch.einsum("bcqrn,bcsrn->bcrqs", Cc, Bc)  # (b, c, R, Q, Q), once per row
    M = (CB[:, :, :, None] * L.view(b, c, R, G, Q, Q)).view(b, c, H, Q, Q)
    y = torch.einsum("bchqs,bcshp->bcqhp", M, Xc)

    # Each chunk's own end state, from a zero start: sum_j L[Q-1, j] B_j X_j
    Xd = Xc * L[..., Q - 1, :].permute(0, 1, 3, 2)[..., None]  # (b, c, Q, H, p)
    chunk_states = torch.einsum("bcqrn,bcqrm->bcrmn", Bc, Xd.reshape(b, c, Q, R, G * p))
    chunk_states = chunk_states.reshape(b, c, H, p, k)

    # Inter-chunk: pass the states along, one step per chunk.
    state = X.new_zeros(b, H, p, k) if h0 is None else h0
    decay = torch.exp(A_cs[..., -1])  # (b, c, H)
    starts = []
    prev_end = None if seq_idx is None else torch.zeros(b, dtype=seq_idx.dtype, device=X.device)
    reach = None
    if seq_idx is not None:
        ends = sq[:, :, -1]  # (b, c)
        prev_ends = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
        reach = (sq == prev_ends[:, :, None]).to(X.dtype)  # (b, c, Q): the incoming state reaches i
    for ci in range(c):
        starts.append(state)
        carry = decay[:, ci]
        if seq_idx is not None:
            carry = carry * (ends[:, ci] == prev_end).to(X.dtype)[:, None]
            prev_end = ends[:, ci]
        state = carry[:, :, None, None] * state + chunk_states[:, ci]
    start = torch.stack(starts, dim=1)  # (b, c, H, p, k)

    # Off-diagonal blocks: y_i += exp(A_cs[i]) C_i . h_start
    weight = torch.exp(A_cs).permute(0, 1, 3, 2)  # (b, c, Q, H)
    if reach is not None:
        weight = weight * reach[..., None]
    Cs = torch.einsum("bcqrn,bcrmn->bcqrm", Cc, start.reshape(b, c, R, G * p, k)).reshape(b, c, Q, H, p)
    y = y + Cs * weight[..., None]
    return y.reshape(b, c * Q, H, p)[:, :l], state


def ssd_scan_torch(
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
    layout: SSDStateLayout | None,
    head_transition_mask: torch.Tensor | None,
    pruned_states: str,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked SSD scan. Returns ``(out (b, l, h, p) in x.dtype, final_states (b, h, p, n) or None)``."""
    dtype = math_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    dev = x.device
    rows = _Rows(layout, h, g, n, dtype, dev)
    dt_m = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (b, l, h)
    X = x.to(dtype) * dt_m[..., None]  # (b, l, h, p)
    B_r, C_r = rows.per_row(B.to(dtype), g), rows.per_row(C.to(dtype), g)  # (b, l, R, n)
    Bk, Ck = rows.take(B_r), rows.take(C_r)  # (b, l, R, k)
    k = rows.k
    slots = rows.head_slots()

    h0 = None
    if initial_states is not None:
        h0 = initial_states.to(dtype)
        if slots is not None and h0.shape[-1] == n:  # dense initial states: take the kept slots
            idx, valid = slots
            h0 = torch.gather(h0, -1, idx[:, None, :].expand(b, h, p, k)) * valid[:, None, :]

    recurrent = head_transition_mask
    if recurrent is not None and bool(recurrent.all()):
        recurrent = None
    y = X.new_zeros(b, l, h, p)
    last = X.new_zeros(b, h, p, k)
    rec = None if recurrent is None else torch.nonzero(recurrent).flatten()
    if rec is None or rec.numel():
        heads = slice(None) if rec is None else rec
        # a subset of heads no longer maps onto whole rows: give each its own row of B / C
        Bs, Cs = (
            (Bk, Ck) if rec is None else (Bk[:, :, rows.row_of_head[rec]], Ck[:, :, rows.row_of_head[rec]])
        )
        y_rec, last_rec = _chunked_scan(
            X[:, :, heads],
            dt_m[:, :, heads] * A.to(dtype)[heads],
            Bs,
            Cs,
            None if h0 is None else h0[:, heads],
            seq_idx,
            chunk_size,
        )
        if rec is None:
            y, last = y_rec, last_rec
        else:
            y[:, :, rec], last[:, rec] = y_rec, last_rec
    if recurrent is not None:  # zeroed transitions: h_t = dt_t B_t x_t, y_t = C_t . h_t
        fed = torch.nonzero(~recurrent).flatten()
        row = rows.row_of_head[fed]
        bc = (Bk * Ck).sum(dim=-1)[:, :, row]  # (b, l, H'')
        y[:, :, fed] = X[:, :, fed] * bc[..., None]
        last[:, fed] = X[:, -1, fed, :, None] * Bk[:, -1, row, None, :]
    if rows.pruned is not None and pruned_states == "zero_transition":
        bc_pruned = (B_r * C_r * rows.pruned).sum(dim=-1)[:, :, rows.row_of_head]  # (b, l, h)
        y = y + X * bc_pruned[..., None]

    out = gate(y, x, D, z).to(x.dtype)
    if not return_final_states:
        return out, None
    if slots is None:
        return out, last
    idx, valid = slots
    final = last.new_zeros(b, h, p, n)
    final.scatter_add_(-1, idx[:, None, :].expand(b, h, p, k), last * valid[:, None, :])
    return out, final


def ssd_state_update_torch(
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
    layout: SSDStateLayout | None,
    head_transition_mask: torch.Tensor | None,
    pruned_states: str,
    state_batch_indices: torch.Tensor | None,
) -> torch.Tensor:
    """One SSD decode step on the kept states only; ``state`` updated in place. Returns ``(b, h, p)``."""
    if state_batch_indices is not None:  # a state pool: rows outside [0, S) are skipped, no host sync

        def step(rows: torch.Tensor) -> torch.Tensor:
            return ssd_state_update_torch(
                rows, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, layout,
                head_transition_mask, pruned_states, None,
            )  # fmt: skip

        return step_on_slot_pool(state, state_batch_indices, None, step)

    dtype = math_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    b, h, p = x.shape
    g, n = B.shape[-2:]
    rows = _Rows(layout, h, g, n, dtype, x.device)
    dt_m = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (b, h)
    decay = torch.exp(dt_m * A.to(dtype))
    if head_transition_mask is not None:
        decay = decay * head_transition_mask.to(dtype)
    B_r, C_r = rows.per_row(B.to(dtype), g), rows.per_row(C.to(dtype), g)  # (b, R, n)
    Bk, Ck = rows.take(B_r)[:, rows.row_of_head], rows.take(C_r)[:, rows.row_of_head]  # (b, h, k)
    slots = rows.head_slots()
    compact = slots is not None and state.shape[-1] != n
    hs = state.to(dtype)
    if slots is not None and not compact:
        idx, valid = slots
        hs = torch.gather(hs, -1, idx[:, None, :].expand(b, h, p, rows.k)) * valid[:, None, :]
    dtx = dt_m[..., None] * x.to(dtype)  # (b, h, p)
    hs = decay[..., None, None] * hs + dtx[..., None] * Bk[:, :, None, :]
    y = torch.einsum("bhpk,bhk->bhp", hs, Ck)
    if rows.pruned is not None and pruned_states == "zero_transition":
        y = y + dtx * (B_r * C_r * rows.pruned).sum(dim=-1)[:, rows.row_of_head, None]
    if slots is None or compact:
        state.copy_(hs)
    else:
        idx, valid = slots
        full = hs.new_zeros(b, h, p, n)  # pruned entries -> 0
        state.copy_(full.scatter_add_(-1, idx[:, None, :].expand(b, h, p, rows.k), hs * valid[:, None, :]))
    return gate(y, x, D, z).to(x.dtype)
