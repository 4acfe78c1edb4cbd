"""Pure PyTorch backend of the sparse selective scan (CPU fallback, also runs on CUDA tensors).

A Python loop over every timestep costs a dozen small ops per step. This backend instead walks
the sequence in chunks of ``T`` timesteps and, per chunk, does all the heavy elementwise work
(discretisation ``exp(delta*A)``, the drive ``delta*B*u``, the output contraction with ``C`` and
the epilogue) as a handful of large, cache-resident ops; only the recurrence itself,
``h_t = dA_t * h_{t-1} + dBu_t``, is one in-place ``addcmul_`` per step. Buffers are laid out
time-major with the channel axis innermost, ``(b, T, k, d)``, so every broadcast runs over
contiguous channels.

Sparsity is handled by working only on the ``k`` kept states:

* dense or column masks (one B/C group): B and C are sliced to the kept states once;
* per-channel masks (and grouped B/C): B and C rows are gathered per channel with one small
  matmul against a 0/1 selection matrix ``(g*n, k*d)`` per chunk;
* under ``zero_transition`` the pruned states' feed-through ``delta*u*sum_{pruned} B*C`` is a
  ``(b, T, g*n) @ (g*n, d)`` matmul, never a recurrence.

So a 50 % mask halves the work of the recurrence and of every per-state op.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from .checks import math_dtype

_TARGET_CHUNK_ELEMENTS = 1_500_000


def _chunk_len(batch: int, n_kept: int, d: int, seqlen: int) -> int:
    override = os.environ.get("SPARSESSM_TORCH_CHUNK")
    if override:
        try:
            value = int(override)
        except ValueError:
            raise ValueError(
                f"SPARSESSM_TORCH_CHUNK: expected a positive integer, got {override!r}"
            ) from None
        if value < 1:
            raise ValueError(f"SPARSESSM_TORCH_CHUNK: expected a positive integer, got {value}")
        return min(value, seqlen)
    per_step = max(1, batch * max(n_kept, 1) * d)
    return max(1, min(seqlen, max(8, min(256, _TARGET_CHUNK_ELEMENTS // per_step))))


class _StatePlan:
    """Which states each channel works on, derived once per call from the mask tensors.

    Attributes:
        k: number of kept states per channel (max over channels).
        A_kd: ``(k, d)`` kept ``A`` values (padding 0, so padded states stay exactly 0).
        kept_cols: ``(k,)`` kept state indices when B/C can be sliced once (dense / column, g = 1).
        select: ``(g*n, k*d)`` 0/1 matrix gathering B/C rows per channel, else None.
        feedthrough: ``(g*n, d)`` 0/1 matrix of pruned states that still feed through, or None.
        scatter_idx: ``(d, k)`` int64 state index of every kept slot (for ``last_state``).
    """

    def __init__(
        self,
        A: torch.Tensor,
        groups: int,
        state_mask: torch.Tensor | None,
        pruned_states: str,
        dtype: torch.dtype,
        build_select: bool = True,
    ) -> None:
        d, n = A.shape
        device = A.device
        if state_mask is None:
            kept = torch.ones(d, n, dtype=torch.bool, device=device)
        elif state_mask.dim() == 1:
            kept = state_mask[None, :].expand(d, n)
        else:
            kept = state_mask
        counts = kept.sum(dim=1)
        self.k = int(counts.max().item()) if d else 0
        order = torch.sort(kept.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, : self.k]
        valid = torch.arange(self.k, device=device)[None, :] < counts[:, None]  # (d, k)
        self.scatter_idx = torch.where(valid, order, torch.zeros_like(order))
        A_kept = torch.gather(A.to(dtype), 1, self.scatter_idx) * valid
        self.A_kd = A_kept.t().contiguous()
        self.valid = valid

        column_like = state_mask is None or state_mask.dim() == 1
        self.select = None
        if not build_select:
            self.kept_cols = None
        elif column_like and groups == 1:
            self.kept_cols = self.scatter_idx[0] if d else torch.zeros(0, dtype=torch.long, device=device)
        else:
            self.kept_cols = None
            rows = (torch.arange(d, device=device) // (d // groups))[:, None] * n + self.scatter_idx  # (d, k)
            cols = torch.arange(self.k, device=device)[None, :] * d + torch.arange(d, device=device)[:, None]
            select = torch.zeros(groups * n, self.k * d, dtype=dtype, device=device)
            select[rows[valid], cols[valid]] = 1.0
            self.select = select

        self.feedthrough = None
        if pruned_states == "zero_transition" and state_mask is not None and not bool(kept.all()):
            pruned = (~kept).to(dtype)  # (d, n)
            ft = torch.zeros(groups, n, d, dtype=dtype, device=device)
            group_of = torch.arange(d, device=device) // (d // groups)
            ft[group_of, :, torch.arange(d, device=device)] = pruned
            self.feedthrough = ft.reshape(groups * n, d)


class _ChunkBuffers:
    """Work buffers for one chunk length ``T``, allocated once and reused chunk after chunk.

    Channel-major ``(b, d, T)`` buffers serve the elementwise prologue / epilogue, time-major
    ``(b, T, d)`` and ``(b, T, k, d)`` buffers the recurrence.
    """

    def __init__(
        self, b: int, T: int, k: int, d: int, dtype: torch.dtype, device: torch.device, select: bool, ft: bool
    ) -> None:
        def buffer(*shape: int) -> torch.Tensor:
            return torch.empty(*shape, dtype=dtype, device=device)

        self.T = T
        self.dt_cm, self.du_cm, self.gate_cm, self.y_cm = (buffer(b, d, T) for _ in range(4))
        self.dt_tm, self.du_tm, self.y_tm = (buffer(b, T, d) for _ in range(3))
        self.ft_tm = buffer(b, T, d) if ft else None
        self.dA, self.H = buffer(b, T, k, d), buffer(b, T, k, d)
        self.C = buffer(b, T, k, d) if select else None


def selective_scan_torch(
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
    pruned_states: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked selective scan; arguments validated by the caller (see ``ops.dispatch``).

    Shapes: u, delta, z ``(b, d, l)``; A ``(d, n)``; B, C ``(b, n, l)`` or ``(b, g, n, l)``;
    D, delta_bias ``(d,)``; state_mask None, bool ``(n,)`` or ``(d, n)``.

    Returns ``(out (b, d, l) in u.dtype, last_state (b, d, n) or None)``.
    """
    dtype = math_dtype(u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    n = A.shape[1]
    gB = B.shape[1] if B.dim() == 4 else 1
    gC = C.shape[1] if C.dim() == 4 else 1
    groups = math.lcm(gB, gC)
    # (b, l, g*n) time-major copies of B and C in math precision: small next to (b, l, k, d).
    BT = _time_major_bc(B, groups, dtype)
    CT = _time_major_bc(C, groups, dtype)
    plan = _StatePlan(A, groups, state_mask, pruned_states, dtype)
    k = plan.k
    if plan.kept_cols is not None:
        BT_k = BT.index_select(2, plan.kept_cols)
        CT_k = CT.index_select(2, plan.kept_cols)
    bias = None if delta_bias is None else delta_bias.to(dtype)
    D_m = None if D is None else D.to(dtype)

    T = _chunk_len(b, k, d, l)
    dev = u.device

    h = torch.zeros(b, k, d, dtype=dtype, device=dev)
    out = torch.empty(b, d, l, dtype=u.dtype, device=dev)
    write_direct = out.dtype == dtype
    bufs = _ChunkBuffers(b, T, k, d, dtype, dev, plan.select is not None, plan.feedthrough is not None)

    for start in range(0, l, T):
        Tc = min(T, l - start)
        s = slice(start, start + Tc)
        if Tc != bufs.T:  # the shorter last chunk gets its own contiguous buffers
            bufs = _ChunkBuffers(
                b, Tc, k, d, dtype, dev, plan.select is not None, plan.feedthrough is not None
            )
        # Prologue, channel-major: dt = softplus(delta + bias), du = dt * u.
        dt_c, du_c = bufs.dt_cm, bufs.du_cm
        if bias is not None:
            torch.add(delta[:, :, s], bias[:, None], out=dt_c)
        else:
            dt_c.copy_(delta[:, :, s])
        if delta_softplus:
            _softplus_(dt_c)
        torch.mul(dt_c, u[:, :, s], out=du_c)
        dt, du, y = bufs.dt_tm, bufs.du_tm, bufs.y_tm
        _copy_channels_last(dt, dt_c)
        _copy_channels_last(du, du_c)

        if k > 0:
            dA, H = bufs.dA, bufs.H
            torch.mul(dt[:, :, None, :], plan.A_kd, out=dA)
            dA.exp_()
            if plan.select is None:
                torch.mul(du[:, :, None, :], BT_k[:, s, :, None], out=H)
            else:
                torch.matmul(BT[:, s], plan.select, out=H.view(b, Tc, k * d))
                H.mul_(du[:, :, None, :])
            H_t, dA_t = H.unbind(1), dA.unbind(1)
            H_t[0].addcmul_(dA_t[0], h)
            for t in range(1, Tc):
                H_t[t].addcmul_(dA_t[t], H_t[t - 1])
            h = H_t[Tc - 1].clone()
            if plan.select is None:
                torch.matmul(CT_k[:, s, None, :], H, out=y.view(b, Tc, 1, d))
            else:
                Cg = bufs.C
                torch.matmul(CT[:, s], plan.select, out=Cg.view(b, Tc, k * d))
                torch.sum(Cg.mul_(H), dim=2, out=y)
        else:
            y.zero_()
        if plan.feedthrough is not None:
            ft = bufs.ft_tm
            torch.matmul(BT[:, s] * CT[:, s], plan.feedthrough, out=ft)
            y.addcmul_(du, ft)

        # Epilogue, channel-major: out = (y + u * D) * silu(z).
        y_c = out[:, :, s] if write_direct else bufs.y_cm
        y_c.copy_(y.transpose(1, 2))
        if D_m is not None:
            y_c.addcmul_(u[:, :, s], D_m[:, None])
        if z is not None:
            gate, sig = bufs.gate_cm, dt_c  # dt_c is free again here
            gate.copy_(z[:, :, s])
            torch.sigmoid(gate, out=sig)
            gate.mul_(sig)
            y_c.mul_(gate)
        if not write_direct:
            out[:, :, s].copy_(y_c)

    last_state = None
    if return_last_state:
        last_state = torch.zeros(b, d, n, dtype=dtype, device=dev)
        if k > 0:
            h_dk = h.transpose(1, 2) * plan.valid  # (b, d, k)
            last_state.scatter_add_(2, plan.scatter_idx.expand(b, d, k), h_dk)
    return out, last_state


_CHANNEL_BLOCK = 256


def _softplus_(x: torch.Tensor) -> None:
    """In-place softplus with PyTorch's default threshold (``x`` where ``x > 20``)."""
    x.copy_(F.softplus(x))


def _copy_channels_last(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst (b, T, d) <- src (b, d, T)`` (any strides, any dtype), in cache-friendly channel blocks.

    A plain ``dst.copy_(src.transpose(1, 2))`` walks ``src`` with a stride of ``l`` elements for
    every output element; copying 256 channels at a time keeps the source lines in L1 and is
    about 3x faster on a 130M-sized layer.
    """
    d = dst.shape[-1]
    for c in range(0, d, _CHANNEL_BLOCK):
        dst[:, :, c : c + _CHANNEL_BLOCK].copy_(src[:, c : c + _CHANNEL_BLOCK].transpose(1, 2))


def _time_major_bc(t: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """B/C ``(b, n, l)`` or ``(b, g0, n, l)`` -> contiguous ``(b, l, groups*n)`` in ``dtype``."""
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.shape[1] != groups:
        t = t.repeat_interleave(groups // t.shape[1], dim=1)
    b, g, n, l = t.shape
    return t.permute(0, 3, 1, 2).to(dtype).reshape(b, l, g * n).contiguous()


def selective_state_update_torch(
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
    state_mask: torch.Tensor | None,
    pruned_states: str,
) -> torch.Tensor:
    """One decode step, vectorised over batch and channels; ``state`` updated in place.

    Shapes: state ``(b, d, n)`` or compact ``(b, d, k)``; x, dt, z ``(b, d)``; A ``(d, n)``;
    B, C ``(b, n)`` or ``(b, g, n)``; D, dt_bias ``(d,)``. Returns ``(b, d)`` in ``x.dtype``.
    """
    dtype = math_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    b, d = x.shape
    n = A.shape[1]
    dt_m = dt.to(dtype)
    if dt_bias is not None:
        dt_m = dt_m + dt_bias.to(dtype)
    if dt_softplus:
        dt_m = F.softplus(dt_m)
    x_m = x.to(dtype)
    dtx = dt_m * x_m  # (b, d)
    B_ch = _per_channel_state(B, d, dtype)  # (b, d, n)
    C_ch = _per_channel_state(C, d, dtype)

    if state_mask is None:
        h = state.to(dtype) * torch.exp(dt_m[..., None] * A.to(dtype)) + dtx[..., None] * B_ch
        y = (h * C_ch).sum(dim=-1)
        state.copy_(h)
    else:
        plan = _StatePlan(A, 1, state_mask, pruned_states, dtype, build_select=False)
        k = plan.k
        idx = plan.scatter_idx.expand(b, d, k)
        compact = state.shape[-1] != n
        s_k = state.to(dtype) if compact else torch.gather(state.to(dtype), 2, idx)
        decay = torch.exp(dt_m[..., None] * plan.A_kd.t())  # (b, d, k)
        h_k = (s_k * decay + dtx[..., None] * torch.gather(B_ch, 2, idx)) * plan.valid
        y = (h_k * torch.gather(C_ch, 2, idx)).sum(dim=-1)
        if plan.feedthrough is not None:
            y = y + dtx * ((B_ch * C_ch) * (plan.feedthrough.t() > 0)).sum(dim=-1)
        if compact:
            state.copy_(h_k)
        else:
            state.copy_(torch.zeros(b, d, n, dtype=dtype, device=state.device).scatter_add_(2, idx, h_k))
    if D is not None:
        y = y + x_m * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype)


def _per_channel_state(t: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    """B/C ``(b, n)`` or ``(b, g, n)`` -> ``(b, d, n)`` (expanded view when ungrouped)."""
    t = t.to(dtype)
    if t.dim() == 2:
        return t[:, None, :].expand(t.shape[0], d, t.shape[1])
    return t.repeat_interleave(d // t.shape[1], dim=1)
