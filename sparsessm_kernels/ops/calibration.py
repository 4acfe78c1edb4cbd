"""Calibration statistics for SparseSSM pruning: OBS saliency of the state transitions.

For a state ``(c, s)`` at step ``t`` the SparseSSM score (arXiv 2506.09613) of zeroing its
discrete transition ``dA_t = exp(delta_t[c] * A[c, s])`` is ``dA_t^2 * h_{t-1}[c, s]^2``: the
squared change of ``h_t`` when the transition is removed. The score is averaged over the
calibration samples as a per-sample product (``mean_b dA^2 h^2``, not ``mean dA^2 * mean h^2``)
and aggregated over time with weights ``w_t``.

:func:`state_saliency` returns it without materialising the ``(b, l, d, n)`` state trajectory.
``state_saliency_ref`` is the plain one-step-at-a-time oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_scan_inputs, check_tensor


def _check_time_weights(time_weights: torch.Tensor | None, seqlen: int, device: torch.device) -> torch.Tensor:
    if time_weights is None:
        return torch.ones(seqlen, dtype=torch.float32, device=device)
    check_tensor("time_weights", time_weights)
    if tuple(time_weights.shape) != (seqlen,):
        raise ValueError(f"time_weights: expected shape (l,) = ({seqlen},), got {tuple(time_weights.shape)}")
    return time_weights.to(device=device, dtype=torch.float32)


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
        u, delta: ``(b, d, l)``. A: ``(d, n)``. B: ``(b, n, l)`` or grouped ``(b, g, n, l)``.
        delta_bias: ``(d,)``. delta_softplus: softplus on ``delta + delta_bias``.
        time_weights: ``(l,)`` weights ``w_t`` (default all ones).
        per_step: return the per-step scores instead of their weighted sum.

    Returns:
        ``(d, n)`` float32 ``sum_t w_t * mean_b dA_t^2 * h_{t-1}^2`` or, with ``per_step``,
        ``(l, d, n)`` ``mean_b dA_t^2 * h_{t-1}^2`` (unweighted). ``h_{-1} = 0``, so step 0
        scores 0. ``C``, ``D`` and ``z`` do not affect the states and are not needed.
    """
    check_scan_inputs(u, delta, A, B, B, None, None, delta_bias)
    b, d, l = u.shape
    w = _check_time_weights(time_weights, l, u.device)
    dtype = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype, B.dtype) else torch.float32
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    B_ch = B.to(dtype).unsqueeze(1) if B.dim() == 3 else B.to(dtype).repeat_interleave(d // B.shape[1], dim=1)
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


def state_saliency(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    time_weights: torch.Tensor | None = None,
    per_step: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """SparseSSM transition saliency of every state of a layer (see :func:`state_saliency_ref`).

    Same arguments and result as the reference; ``backend`` as in ``selective_scan``.
    """
    if backend not in ("auto", "torch", "triton", "cuda"):
        raise ValueError(f"backend: expected one of ('auto', 'torch', 'triton', 'cuda'), got {backend!r}")
    return state_saliency_ref(
        u, delta, A, B, delta_bias, delta_softplus, time_weights=time_weights, per_step=per_step
    )
