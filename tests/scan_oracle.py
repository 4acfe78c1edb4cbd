"""A closed-form selective scan: an oracle independent of the recurrence in ``ops.selective_scan.reference``.

The recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t`` unrolls to

    h_t[c, s] = sum_{tau <= t} exp(A[c, s] * (S_t[c] - S_tau[c])) * dt_tau[c] * B_tau[c, s] * u_tau[c]

with ``S_t = dt_0 + ... + dt_t`` (a cumulative sum), so every output is one weighted sum over all
earlier steps, computed here for all ``(t, tau)`` pairs at once in float64: no loop over time,
no carried state, and B / C are first broadcast to ``(b, d, n, l)`` from whichever layout they
come in. Pruned states (``docs/semantics.md``): under ``zero_transition`` only ``tau = t`` is
left (the feed-through), under ``remove`` nothing. Memory is ``O(b d n l^2)``: small cases only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_channel(t: torch.Tensor, b: int, d: int, n: int, l: int) -> torch.Tensor:
    """B or C as ``(b, d, n, l)`` float64, from ``(b, n, l)``, ``(b, g, n, l)`` or ``(d, n)``."""
    t = t.double()
    if t.dim() == 2:
        return t[None, :, :, None].expand(b, d, n, l)
    if t.dim() == 3:
        return t[:, None].expand(b, d, n, l)
    g = t.shape[1]
    group_of = torch.arange(d) // (d // g)
    return t[:, group_of]


def closed_form_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    state_mask: torch.Tensor | None = None,
    pruned_states: str = "zero_transition",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out (b, d, l), last_state (b, d, n))`` in float64; ``state_mask`` a bool ``(n,)`` / ``(d, n)``."""
    u, delta, A = u.double(), delta.double(), A.double()
    b, d, l = u.shape
    n = A.shape[1]
    dt = delta + (delta_bias.double()[:, None] if delta_bias is not None else 0.0)
    if delta_softplus:
        dt = F.softplus(dt)
    Bc, Cc = per_channel(B, b, d, n, l), per_channel(C, b, d, n, l)
    S = dt.cumsum(dim=-1)  # (b, d, l)
    gap = S[:, :, :, None] - S[:, :, None, :]  # (b, d, t, tau): sum of dt over (tau, t]
    causal = torch.ones(l, l, dtype=torch.bool).tril()  # tau <= t
    if state_mask is None:
        reach = causal
    else:  # pruned states reach only their own step (zero_transition) or nothing (remove)
        kept = state_mask.expand(d, n)[:, :, None, None]
        pruned_reach = torch.eye(l, dtype=torch.bool) if pruned_states == "zero_transition" else False
        reach = torch.where(kept, causal, pruned_reach)  # (d, n, t, tau)
    # decay[b, c, s, t, tau] = exp(A[c, s] * gap), 0 where tau does not reach t (masked before exp)
    decay = (A[None, :, :, None, None] * gap[:, :, None]).masked_fill_(~reach, float("-inf")).exp_()
    drive = (dt * u)[:, :, None, :] * Bc  # (b, d, n, tau)
    h = (decay @ drive[..., None])[..., 0]  # (b, d, n, t): the state after step t
    y = (h * Cc).sum(dim=2)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    last = h[..., -1] if state_mask is None else h[..., -1] * state_mask  # pruned entries are 0
    return y, last
