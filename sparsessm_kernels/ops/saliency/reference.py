"""Reference of the SparseSSM transition saliency: one timestep at a time, the oracle of the kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import math_dtype
from .checks import check_saliency_inputs, check_time_weights


def state_saliency_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    time_weights: torch.Tensor | None = None,
    per_step: bool = False,
) -> torch.Tensor:
    """SparseSSM transition saliency, one timestep at a time (the oracle).

    Args:
        u, delta: ``(b, d, l)``, ``b >= 1``. A: ``(d, n)``. B: ``(b, n, l)``, grouped
            ``(b, g, n, l)`` or time-invariant ``(d, n)``.
        delta_bias: ``(d,)``. delta_softplus: softplus on ``delta + delta_bias``.
        time_weights: ``(l,)`` weights ``w_t`` (default all ones).
        per_step: return the per-step scores instead of their weighted sum.

    Returns:
        ``(d, n)`` float32 ``sum_t w_t * mean_b dA_t^2 * h_{t-1}^2`` or, with ``per_step``,
        ``(l, d, n)`` ``mean_b dA_t^2 * h_{t-1}^2`` (unweighted). ``h_{-1} = 0``, so step 0
        scores 0. ``C``, ``D`` and ``z`` do not affect the states and are not needed.
    """
    check_saliency_inputs(u, delta, A, B, delta_bias)
    b, d, l = u.shape
    w = check_time_weights(time_weights, l, u.device)
    dtype = math_dtype(u, delta, A, B)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    if B.dim() == 2:  # time-invariant (d, n)
        B_ch = B.to(dtype)[None, :, :, None].expand(1, d, A.shape[1], l)
    elif B.dim() == 3:
        B_ch = B.to(dtype).unsqueeze(1)
    else:
        B_ch = B.to(dtype).repeat_interleave(d // B.shape[1], dim=1)
    A_m = A.to(dtype)
    h = torch.zeros(b, d, A.shape[1], dtype=dtype, device=u.device)
    total = torch.zeros(d, A.shape[1], dtype=dtype, device=u.device)
    steps = []
    for t in range(l):
        dA = torch.exp(dt[:, :, t, None] * A_m)
        score = (dA.square() * h.square()).mean(dim=0)  # per-sample product, then the mean
        if per_step:
            steps.append(score)
        else:
            total += w[t].to(dtype) * score
        h = dA * h + (dt[:, :, t] * u.to(dtype)[:, :, t])[..., None] * B_ch[..., t]
    result = torch.stack(steps) if per_step else total
    return result.to(torch.float32 if dtype == torch.float32 else dtype)
