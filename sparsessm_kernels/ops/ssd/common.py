"""Math shared by the SSD reference and backends: the time step and the per-(head, state) masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import SSDStateLayout


def discretize_dt(
    dt: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
    dtype: torch.dtype,
) -> torch.Tensor:
    """The time step the recurrence uses, in ``dtype``: ``clamp(softplus(dt + dt_bias), *dt_limit)``.

    Same order as mamba_ssm's ``mamba_chunk_scan_combined``: bias, then softplus (PyTorch's,
    threshold 20), then the clamp -- which is applied always, so the default ``(0, inf)`` turns a
    negative ``dt`` (possible without softplus) into 0. ``dt_bias`` ``(nheads,)`` broadcasts over the
    last axis of ``dt``.
    """
    out = dt.to(dtype)
    if dt_bias is not None:
        out = out + dt_bias.to(dtype)
    if dt_softplus:
        out = F.softplus(out)
    lo, hi = dt_limit
    return out.clamp(min=lo, max=hi)


def head_state_masks(
    layout: SSDStateLayout | None,
    head_transition_mask: torch.Tensor | None,
    pruned_states: str,
    nheads: int,
    d_state: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kept, transition, feeds)``, each bool ``(nheads, d_state)``:

    * ``kept``: the state mask per head (all True without one);
    * ``transition``: which ``(head, state)`` keeps ``exp(dt * A[h])`` -- kept states of heads whose
      transition is not zeroed by ``head_transition_mask``;
    * ``feeds``: which receive the drive ``dt * B * x`` -- the kept states under ``"remove"``, every
      state under ``"zero_transition"``.
    """
    if layout is None:
        kept = torch.ones(nheads, d_state, dtype=torch.bool, device=device)
    else:
        kept = layout.head_mask.to(device)
    transition = kept if head_transition_mask is None else kept & head_transition_mask.to(device)[:, None]
    feeds = torch.ones_like(kept) if pruned_states == "zero_transition" else kept
    return kept, transition, feeds


def gate(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``(y + D * x) * silu(z)`` in ``y``'s dtype; ``x``, ``z`` ``(..., nheads, headdim)``, ``D``
    ``(nheads,)`` or ``(nheads, headdim)``."""
    if D is not None:
        Dm = D.to(y.dtype)
        y = y + x.to(y.dtype) * (Dm[:, None] if Dm.dim() == 1 else Dm)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y
