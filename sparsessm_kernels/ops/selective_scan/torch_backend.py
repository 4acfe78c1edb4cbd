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
* per-channel masks (and grouped B/C): the B/C row of every (kept slot, channel) pair is
  gathered with one ``(b, T, g*n) @ (g*n, k*d)`` matmul against a 0/1 selection matrix;
* under ``zero_transition`` the pruned states' feed-through ``delta*u*sum_{pruned} B*C`` is one
  more such matmul, never a recurrence;
* a per-channel mask that keeps most states in some channel (``k_max > 0.65 n``, typical of
  unstructured masks) gains nothing from gathering, so it runs the dense recurrence with the
  pruned transitions (``zero_transition``) or drives (``remove``) multiplied by 0.

A time-invariant ``(d, n)`` B or C (mamba_ssm's ``is_variable_B=False``) is gathered once per
call into a ``(k, d)`` table of its value at every (slot, channel), like ``A``: the drive is then
``du * B_kd`` and the output ``sum_k C_kd * h``, with no per-timestep B / C rows at all.

So a 50 % column or N:M mask halves the work of the recurrence and of every per-state op.
"""

from __future__ import annotations

import math
import os
import threading

import torch
import torch.nn.functional as F

from ..plan import ScanInputs, ScanPlan

TARGET_CHUNK_ELEMENTS = 1_500_000
"""Elements of one chunk buffer ``(b, T, k, d)`` the chunked torch backends aim for (cache-resident)."""


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
    return max(1, min(seqlen, max(8, min(256, TARGET_CHUNK_ELEMENTS // per_step))))


MASKED_DENSE_FRACTION = 0.65
"""Per-channel masks keeping more than this fraction of ``n`` in some channel run masked-dense."""


class SlotTables:
    """Which states each channel works on, built from the layout tensors of a ``StateLayout``.

    Args:
        A: ``(d, n)``. groups: B/C groups. state_mask: None, bool ``(n,)`` or ``(d, n)``.
        kept_idx: ``(k,)`` (column) or ``(d, k_max)`` (per-channel) ascending kept indices.
        kept_count: ``(d,)`` kept states per channel (per-channel masks), else None.
        feedthrough: the pruned states feed through (the plan's ``feedthrough``).
        for_scan: build the chunked-scan tables (selection matrices); the decode step gathers.
        fixed_B, fixed_C: time-invariant ``(d, n)`` B / C (scan only), or None when input-dependent
            (then ``groups`` counts the groups of the input-dependent ones only).

    Attributes:
        k: state slots per channel that the recurrence runs on.
        A_kd: ``(k, d)`` ``A`` of every slot (0 on padding, so padded slots stay exactly 0).
        slots: ``(d, k)`` int64 state index of every slot; valid: ``(d, k)`` bool (not padding).
        kept_cols: ``(k,)`` shared slot indices when B/C can be sliced once (dense, column, g = 1).
        select: ``(g*n, k*d)`` 0/1 matrix; ``BT @ select`` gathers the B/C row of every
            (slot, channel) pair (per-channel slots or grouped B/C), else None.
        B_kd, C_kd: ``(k, d)`` time-invariant B / C of every slot (0 on padding), else None.
        slot_mask: ``(k, d)`` 0/1 multiplier of the masked-dense mode, else None.
        feedthrough: ``(g*n, d)`` weights of the pruned states that still feed through
            (``zero_transition``, when the recurrence skips them): 0/1, times the time-invariant
            B or C when one is; the rows it multiplies are ``B*C``, ``C`` or ``B`` accordingly.
        feedthrough_const: ``(d,)`` ``sum_{pruned} B*C`` when both are time-invariant, else None.
    """

    def __init__(
        self,
        A: torch.Tensor,
        groups: int,
        state_mask: torch.Tensor | None,
        kept_idx: torch.Tensor | None,
        kept_count: torch.Tensor | None,
        feedthrough: bool,
        dtype: torch.dtype,
        *,
        for_scan: bool = True,
        fixed_B: torch.Tensor | None = None,
        fixed_C: torch.Tensor | None = None,
    ) -> None:
        d, n = A.shape
        dev = A.device
        self.slot_mask = None
        self.feedthrough = None
        self.feedthrough_const = None
        self.masked_dense = (
            for_scan
            and state_mask is not None
            and state_mask.dim() == 2
            and kept_idx.shape[1] > MASKED_DENSE_FRACTION * n
        )
        if state_mask is None or self.masked_dense:
            shared = torch.arange(n, device=dev)
        elif state_mask.dim() == 1:
            shared = kept_idx.long()
        else:
            shared = None
        if shared is not None:
            self.k = int(shared.numel())
            self.slots = shared[None, :].expand(d, self.k)
            self.valid = torch.ones(d, self.k, dtype=torch.bool, device=dev)
        else:
            self.k = int(kept_idx.shape[1])
            self.slots = kept_idx.long()
            self.valid = torch.arange(self.k, device=dev)[None, :] < kept_count[:, None].long()
        self._shared = shared
        self.A_kd = self.per_slot(A, dtype)
        self.B_kd = None if fixed_B is None else self.per_slot(fixed_B, dtype)
        self.C_kd = None if fixed_C is None else self.per_slot(fixed_C, dtype)

        if self.masked_dense:
            self.valid = state_mask
            self.slot_mask = state_mask.t().to(dtype).contiguous()  # (n, d)

        self.kept_cols = shared if (shared is not None and groups == 1 and for_scan) else None
        self.select = None
        some_variable = fixed_B is None or fixed_C is None
        if for_scan and self.kept_cols is None and self.k > 0 and some_variable:
            group_of = torch.arange(d, device=dev) // (d // groups)
            select = torch.zeros(groups * n, self.k, d, dtype=dtype, device=dev)  # viewed (g*n, k*d)
            rows = group_of[:, None] * n + self.slots  # (d, k)
            slot_of = torch.arange(self.k, device=dev)[None, :].expand(d, self.k)
            chan_of = torch.arange(d, device=dev)[:, None].expand(d, self.k)
            ok = self.valid if not self.masked_dense else torch.ones_like(self.valid)
            select[rows[ok], slot_of[ok], chan_of[ok]] = 1.0
            self.select = select.view(groups * n, self.k * d)

        pruned_skipped = state_mask is not None and not self.masked_dense
        if for_scan and feedthrough and pruned_skipped:
            full = state_mask if state_mask.dim() == 2 else state_mask[None, :].expand(d, n)
            weight = (~full).to(dtype)  # (d, n)
            for fixed in (fixed_B, fixed_C):
                if fixed is not None:
                    weight = weight * fixed.to(dtype)
            if not some_variable:
                self.feedthrough_const = weight.sum(dim=1)
            else:
                group_of = torch.arange(d, device=dev) // (d // groups)
                ft = torch.zeros(groups, n, d, dtype=dtype, device=dev)
                ft[group_of, :, torch.arange(d, device=dev)] = weight
                self.feedthrough = ft.reshape(groups * n, d)

    def per_slot(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A per-state ``(d, n)`` table (A, a time-invariant B or C) at every slot: ``(k, d)``,
        0 on padding slots (so padded slots stay exactly 0)."""
        t = t.to(dtype)
        if self._shared is not None:
            return t.index_select(1, self._shared).t().contiguous()
        return (torch.gather(t, 1, self.slots) * self.valid).t().contiguous()


_workspaces = threading.local()


def _workspace(slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat scratch tensor of at least ``numel`` elements, kept per thread between calls.

    Freshly allocated multi-megabyte CPU buffers are page-faulted in on first touch, which cost
    as much as the math of a small layer and made timings depend on allocator history; reusing
    one arena per thread removes that. The arena only ever holds scratch data: nothing returned
    to the caller aliases it. Its size is bounded by the chunk size (about 10 chunk buffers of
    ~1.5 M elements at most), not by the sequence length.
    """
    if device.type != "cpu":  # GPU memory is the caching allocator's business
        return torch.empty(numel, dtype=dtype, device=device)
    arenas = _workspaces.__dict__.setdefault("arenas", {})
    # Tensors made under inference_mode can't be written outside it (and vice versa for views),
    # so each mode has its own arena.
    key = (slot, dtype, device, torch.is_inference_mode_enabled())
    arena = arenas.get(key)
    if arena is None or arena.numel() < numel:
        arena = torch.empty(numel, dtype=dtype, device=device)
        arenas[key] = arena
    return arena[:numel]


class _ChunkBuffers:
    """Work buffers for one chunk length ``T``, carved from a per-thread arena, reused per chunk.

    Channel-major ``(b, d, T)`` buffers serve the elementwise prologue / epilogue, time-major
    ``(b, T, d)`` and ``(b, T, k, d)`` buffers the recurrence. ``slot`` names the arena (the
    regular chunks and the shorter last chunk use different ones, so both stay cached).
    """

    def __init__(
        self,
        b: int,
        T: int,
        k: int,
        d: int,
        dtype: torch.dtype,
        device: torch.device,
        products: bool,
        ft: bool,
        slot: str = "chunk",
    ) -> None:
        small, large = b * d * T, b * T * k * d
        total = small * (7 + int(ft)) + large * (2 + int(products))
        arena = _workspace(slot, total, dtype, device)
        offset = 0

        def buffer(*shape: int) -> torch.Tensor:
            nonlocal offset
            numel = math.prod(shape)
            view = arena[offset : offset + numel].view(shape)
            offset += numel
            return view

        self.T = T
        self.dt_cm, self.du_cm, self.gate_cm, self.y_cm = (buffer(b, d, T) for _ in range(4))
        self.dt_tm, self.du_tm, self.y_tm = (buffer(b, T, d) for _ in range(3))
        self.ft_tm = buffer(b, T, d) if ft else None
        self.dA, self.H = buffer(b, T, k, d), buffer(b, T, k, d)
        # Per-timestep views, made once: building 2*T views per chunk costs more than the math.
        self.dA_t, self.H_t = self.dA.unbind(1), self.H.unbind(1)
        self.C = buffer(b, T, k, d) if products else None  # gathered C, or C * h


def selective_scan_torch(plan: ScanPlan, inputs: ScanInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked selective scan; arguments validated by ``ops.selective_scan``.

    Shapes: see :class:`~sparsessm_kernels.ops.plan.ScanInputs`; the mask tables come with the plan.

    Returns ``(out (b, d, l) in u.dtype, last_state (b, d, n) or None)``.
    """
    u, delta, A, B, C, D, z, delta_bias = inputs
    state_mask, kept_idx, kept_count = plan.state_mask, plan.kept_idx, plan.kept_count
    pruned_states, delta_softplus = plan.pruned_states, plan.softplus
    dtype = plan.math_dtype
    b, d, l = u.shape
    n = A.shape[1]
    fixed_B = B if B.dim() == 2 else None  # time-invariant (d, n)
    fixed_C = C if C.dim() == 2 else None
    gB = B.shape[1] if B.dim() == 4 else 1
    gC = C.shape[1] if C.dim() == 4 else 1
    groups = math.lcm(gB, gC)
    # (b, l, g*n) time-major copies of the input-dependent B and C in math precision: small next
    # to (b, l, k, d).
    BT = _time_major_bc(B, groups, dtype) if fixed_B is None else None
    CT = _time_major_bc(C, groups, dtype) if fixed_C is None else None
    tables = SlotTables(
        A, groups, state_mask, kept_idx, kept_count, plan.feedthrough, dtype, fixed_B=fixed_B, fixed_C=fixed_C
    )
    k = tables.k
    if tables.kept_cols is not None:
        BT_k = None if BT is None else BT.index_select(2, tables.kept_cols)
        CT_k = None if CT is None else CT.index_select(2, tables.kept_cols)
    bias = None if delta_bias is None else delta_bias.to(dtype)
    D_m = None if D is None else D.to(dtype)

    T = _chunk_len(b, k, d, l)
    dev = u.device

    h = torch.zeros(b, k, d, dtype=dtype, device=dev)
    out = torch.empty(b, d, l, dtype=u.dtype, device=dev)
    write_direct = out.dtype == dtype
    products = tables.select is not None or tables.C_kd is not None  # a (b, T, k, d) buffer for C * h
    has_ft = tables.feedthrough is not None
    bufs = _ChunkBuffers(b, T, k, d, dtype, dev, products, has_ft)

    for start in range(0, l, T):
        Tc = min(T, l - start)
        s = slice(start, start + Tc)
        if Tc != bufs.T:  # the shorter last chunk gets its own contiguous buffers
            bufs = _ChunkBuffers(
                b, Tc, k, d, dtype, dev, products, tables.feedthrough is not None, slot="tail"
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
        dt.copy_(dt_c.transpose(1, 2))  # chunk-sized transposes stay in cache
        du.copy_(du_c.transpose(1, 2))

        if k > 0:
            dA, H = bufs.dA, bufs.H
            torch.mul(dt[:, :, None, :], tables.A_kd, out=dA)
            dA.exp_()
            if tables.slot_mask is not None and pruned_states == "zero_transition":
                dA.mul_(tables.slot_mask)
            if tables.B_kd is not None:  # time-invariant B
                torch.mul(du[:, :, None, :], tables.B_kd, out=H)
            elif tables.select is None:
                torch.mul(du[:, :, None, :], BT_k[:, s, :, None], out=H)
            else:  # gather the B row of every (slot, channel) with one 0/1 matmul, scale by du
                torch.matmul(BT[:, s], tables.select, out=H.view(b, Tc, k * d))
                H.mul_(du[:, :, None, :])
            if tables.slot_mask is not None and pruned_states == "remove":
                H.mul_(tables.slot_mask)
            H_t, dA_t = bufs.H_t, bufs.dA_t
            H_t[0].addcmul_(dA_t[0], h)
            for t in range(1, Tc):
                H_t[t].addcmul_(dA_t[t], H_t[t - 1])
            h = H_t[Tc - 1].clone()
            if tables.C_kd is not None:  # time-invariant C
                torch.sum(torch.mul(H, tables.C_kd, out=bufs.C), dim=2, out=y)
            elif tables.select is None:
                torch.matmul(CT_k[:, s, None, :], H, out=y.view(b, Tc, 1, d))
            else:
                Cg = bufs.C
                torch.matmul(CT[:, s], tables.select, out=Cg.view(b, Tc, k * d))
                torch.sum(Cg.mul_(H), dim=2, out=y)
        else:
            y.zero_()
        if tables.feedthrough is not None:  # rows B*C, or the input-dependent one of B and C
            rows = CT[:, s] if BT is None else BT[:, s] if CT is None else BT[:, s] * CT[:, s]
            ft = bufs.ft_tm
            torch.matmul(rows, tables.feedthrough, out=ft)
            y.addcmul_(du, ft)
        elif tables.feedthrough_const is not None:  # both time-invariant
            y.addcmul_(du, tables.feedthrough_const)

        # Epilogue, channel-major: out = (y + u * D) * silu(z).
        y_c = out[:, :, s] if write_direct else bufs.y_cm
        y_c.copy_(y.transpose(1, 2))
        if D_m is not None:
            y_c.addcmul_(u[:, :, s], D_m[:, None])
        if z is not None:
            _silu_into(bufs.gate_cm, z[:, :, s])
            y_c.mul_(bufs.gate_cm)
        if not write_direct:
            out[:, :, s].copy_(y_c)

    last_state = None
    if plan.return_last_state:
        last_state = torch.zeros(b, d, n, dtype=dtype, device=dev)
        if k > 0:
            h_dk = h.transpose(1, 2) * tables.valid  # (b, d, k); padding and pruned slots -> 0
            last_state.scatter_add_(2, tables.slots.expand(b, d, k), h_dk)
    return out, last_state


def _softplus_(x: torch.Tensor) -> None:
    """In-place softplus with PyTorch's default threshold (``x`` where ``x > 20``)."""
    if _SOFTPLUS_OUT is not None:
        _SOFTPLUS_OUT(x, 1.0, 20.0, out=x)
    else:
        x.copy_(F.softplus(x))


def _silu_into(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out <- silu(x)`` without a temporary (``x`` may have another dtype)."""
    if x.dtype != out.dtype:
        out.copy_(x)
        x = out
    if _SILU_OUT is not None:
        _SILU_OUT(x, out=out)
    else:
        out.copy_(F.silu(x))


# The ``out=`` variants of the ATen ops save a temporary and a copy per chunk; they are not part
# of the public functional API, so fall back to the public ops if a build lacks them.
_SOFTPLUS_OUT = getattr(torch._C._nn, "softplus", None)
_SILU_OUT = getattr(torch._C._nn, "silu", None)


def _time_major_bc(t: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """B/C ``(b, n, l)`` or ``(b, g0, n, l)`` -> contiguous ``(b, l, groups*n)`` in ``dtype``."""
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.shape[1] != groups:
        t = t.repeat_interleave(groups // t.shape[1], dim=1)
    b, g, n, l = t.shape
    return t.permute(0, 3, 1, 2).to(dtype).reshape(b, l, g * n).contiguous()
