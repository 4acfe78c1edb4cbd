"""Calibration statistics for SparseSSM pruning: OBS saliency of the state transitions.

For a state ``(c, s)`` at step ``t`` the SparseSSM score (arXiv 2506.09613) of zeroing its
discrete transition ``dA_t = exp(delta_t[c] * A[c, s])`` is ``dA_t^2 * h_{t-1}[c, s]^2``: the
squared change of ``h_t`` when the transition is removed. The score is averaged over the
calibration samples as a per-sample product (``mean_b dA^2 h^2``, not ``mean dA^2 * mean h^2``)
and aggregated over time with weights ``w_t``.

:func:`state_saliency` returns it without materialising the ``(b, l, d, n)`` state trajectory:
on the ``"triton"`` backend by :mod:`.triton.calibration` (states in registers, one pass over
time), on the ``"torch"`` backend by a chunked, vectorised scan that holds one ``(b, T, d, n)``
chunk at a time. ``state_saliency_ref`` is the plain one-step-at-a-time oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_scan_inputs, check_tensor
from .dispatch import resolve_backend

_TARGET_CHUNK_ELEMENTS = 1_500_000


def _check_time_weights(time_weights: torch.Tensor | None, seqlen: int, device: torch.device) -> torch.Tensor:
    if time_weights is None:
        return torch.ones(seqlen, dtype=torch.float32, device=device)
    check_tensor("time_weights", time_weights)
    if tuple(time_weights.shape) != (seqlen,):
        raise ValueError(f"time_weights: expected shape (l,) = ({seqlen},), got {tuple(time_weights.shape)}")
    return time_weights.to(device=device, dtype=torch.float32)


def _check_saliency_inputs(u, delta, A, B, delta_bias) -> None:
    """The scan's checks (C, D and z are not read), and at least one sample to average over."""
    shape = check_scan_inputs(u, delta, A, B, None, None, None, delta_bias)
    if shape.batch < 1:
        raise ValueError(
            f"u: expected at least one calibration sample (b >= 1) to average over, "
            f"got shape {tuple(u.shape)}"
        )


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
    _check_saliency_inputs(u, delta, A, B, delta_bias)
    b, d, l = u.shape
    w = _check_time_weights(time_weights, l, u.device)
    dtype = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype, B.dtype) else torch.float32
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

    Same arguments and result as the reference; ``backend`` as in ``selective_scan``
    (``"auto"``: Triton for CUDA tensors when usable, else the chunked PyTorch path).
    """
    _check_saliency_inputs(u, delta, A, B, delta_bias)
    w = _check_time_weights(time_weights, u.shape[2], u.device)
    chosen = resolve_backend(backend, u.device, op="state_saliency")
    if chosen == "triton":
        from .triton.calibration import state_saliency_triton

        return state_saliency_triton(u, delta, A, B, delta_bias, delta_softplus, w, per_step)
    return _state_saliency_torch(u, delta, A, B, delta_bias, delta_softplus, w, per_step)


def _state_saliency_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    w: torch.Tensor,
    per_step: bool,
) -> torch.Tensor:
    """Chunked, vectorised saliency: per chunk of ``T`` steps the discretisation, drive and scores
    are a few large ops on ``(b, T, d, n)`` buffers; only ``h_t = dA_t h_{t-1} + dBu_t`` is one
    in-place ``addcmul_`` per step."""
    b, d, l = u.shape
    n = A.shape[1]
    dtype = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype, B.dtype) else torch.float32
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dtu = dt * u.to(dtype)
    A_m = A.to(dtype)
    fixed = B.dim() == 2  # time-invariant (d, n): the same drive weights at every (b, t)
    Bg = B.to(dtype) if B.dim() != 3 else B.to(dtype).unsqueeze(1)  # (b, g, n, l), or (d, n)
    g = Bg.shape[1] if not fixed else d
    w = w.to(dtype)
    T = max(1, min(l, 256, _TARGET_CHUNK_ELEMENTS // max(1, b * d * n)))

    h = torch.zeros(b, d, n, dtype=dtype, device=u.device)
    result = (
        torch.empty(l, d, n, dtype=dtype, device=u.device)
        if per_step
        else torch.zeros(d, n, dtype=dtype, device=u.device)
    )
    for start in range(0, l, T):
        s = slice(start, min(start + T, l))
        Tc = s.stop - start
        dA = torch.exp(dt[:, :, s].transpose(1, 2)[..., None] * A_m)  # (b, T, d, n)
        if fixed:
            B_c = Bg  # (d, n), broadcast over (b, T)
        else:
            B_c = Bg[..., s].permute(0, 3, 1, 2)  # (b, T, g, n)
            if g > 1:
                B_c = B_c.repeat_interleave(d // g, dim=2)
        H = dtu[:, :, s].transpose(1, 2)[..., None] * B_c  # the drive, then the states in place
        H_t, dA_t = H.unbind(1), dA.unbind(1)
        H_t[0].addcmul_(dA_t[0], h)
        for t in range(1, Tc):
            H_t[t].addcmul_(dA_t[t], H_t[t - 1])
        prev = torch.cat([h[:, None], H[:, : Tc - 1]], dim=1)  # h_{t-1} for every step of the chunk
        score = prev.mul_(dA).square_().mean(dim=0)  # (T, d, n): mean_b (dA_t h_{t-1})^2
        if per_step:
            result[s] = score
        else:
            result += torch.einsum("t,tdn->dn", w[s], score)
        h = H_t[Tc - 1].clone()
    return result.to(torch.float32 if dtype == torch.float32 else dtype)
