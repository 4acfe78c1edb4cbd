"""Pure PyTorch reference of the sparse selective scan: the oracle every kernel is tested against.

Simple, obviously correct, one timestep at a time, float64-capable. Dense behaviour is exactly
mamba_ssm's ``selective_scan_fn`` / ``selective_state_update``; the sparse semantics are written
down in ``docs/semantics.md``. Not meant to be fast: use :func:`sparsessm_kernels.selective_scan`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_scan_inputs, math_dtype
from ..layout import StateLayout, as_layout, check_pruned_states


def _bc_per_channel(
    t: torch.Tensor, b: int, d: int, tail: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """B or C -> per-channel ``(b, d, n, *tail)``: from ``(b, n, *tail)`` (shared by the channels),
    grouped ``(b, g, n, *tail)`` (channel ``c`` reads group ``c // (d // g)``) or, in the scan,
    time-invariant ``(d, n)`` (the same for every batch row and timestep)."""
    t = t.to(dtype)
    if t.dim() == 2 + len(tail):  # (b, n, *tail)
        return t.unsqueeze(1).expand(b, d, *t.shape[1:])
    if t.dim() == 3 + len(tail):  # (b, g, n, *tail)
        return t.repeat_interleave(d // t.shape[1], dim=1)
    n = t.shape[1]  # time-invariant (d, n)
    return t.reshape(1, d, n, *(1 for _ in tail)).expand(b, d, n, *tail)


def _masks(layout: StateLayout | None, d: int, n: int, pruned_states: str, device: torch.device):
    """(kept (d, n), feeds (d, n)): which states recur, and which receive delta*B*u."""
    if layout is None:
        kept = torch.ones(d, n, dtype=torch.bool, device=device)
    else:
        kept = layout.to(device).channel_mask(d)
    feeds = torch.ones_like(kept) if pruned_states == "zero_transition" else kept
    return kept, feeds


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    state_mask: torch.Tensor | StateLayout | None = None,
    pruned_states: str = "zero_transition",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan, one timestep at a time.

    Args:
        u: ``(b, d, l)`` input.
        delta: ``(b, d, l)`` time step (before ``delta_bias`` / softplus).
        A: ``(d, n)`` real state matrix (float32, or float64 for a float64 oracle).
        B, C: ``(b, n, l)``, grouped ``(b, g, n, l)`` (channel ``i`` uses group ``i // (d // g)``) or
            time-invariant ``(d, n)`` (mamba_ssm's ``is_variable_B=False``: the same ``B[c]`` at every
            batch row and timestep); each of B and C independently.
        D: ``(d,)`` skip connection. z: ``(b, d, l)`` gate. delta_bias: ``(d,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state ``(b, d, n)``.
        state_mask: ``None`` (dense), bool ``(n,)`` column or ``(d, n)`` per-channel mask
            (True = kept), or a prebuilt :class:`StateLayout`.
        pruned_states: ``"zero_transition"`` (pruned states have transition 0 but keep the
            feed-through ``C*delta*B*u``) or ``"remove"`` (pruned states contribute nothing).

    Returns:
        ``out`` ``(b, d, l)`` in ``u.dtype``, and ``last_state`` ``(b, d, n)`` in float32 (float64
        when any input is float64) with pruned entries 0, when ``return_last_state``.

    Math runs in float32 (float64 if any input is float64).
    """
    shape = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    check_pruned_states(pruned_states)
    b, d, l, n = shape.batch, shape.d_inner, shape.seqlen, shape.d_state
    layout = as_layout(state_mask, d, n)
    dtype = math_dtype(u, delta, A, B, C, D, z, delta_bias)

    u_m = u.to(dtype)
    delta_m = delta.to(dtype)
    if delta_bias is not None:
        delta_m = delta_m + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta_m = F.softplus(delta_m)
    A_m = A.to(dtype)
    B_ch = _bc_per_channel(B, b, d, (l,), dtype)  # (b, d, n, l)
    C_ch = _bc_per_channel(C, b, d, (l,), dtype)
    kept, feeds = _masks(layout, d, n, pruned_states, u.device)

    h = torch.zeros(b, d, n, dtype=dtype, device=u.device)
    ys = []
    for t in range(l):
        dt = delta_m[:, :, t, None]  # (b, d, 1)
        transition = torch.where(kept, torch.exp(dt * A_m), torch.zeros((), dtype=dtype, device=u.device))
        drive = torch.where(
            feeds, dt * B_ch[..., t] * u_m[:, :, t, None], torch.zeros((), dtype=dtype, device=u.device)
        )
        h = transition * h + drive
        ys.append((h * C_ch[..., t]).sum(dim=-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + u_m * D.to(dtype)[:, None]
    if z is not None:
        out = out * F.silu(z.to(dtype))
    out = out.to(u.dtype)
    if not return_last_state:
        return out
    return out, h * kept
