"""Pure PyTorch backend of the saliency: a chunked, vectorised scan holding one ``(b, T, d, n)`` chunk."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import math_dtype
from ..selective_scan import torch_backend as _scan_torch


def state_saliency_torch(
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
    dtype = math_dtype(u, delta, A, B)
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
    T = max(1, min(l, 256, _scan_torch.TARGET_CHUNK_ELEMENTS // max(1, b * d * n)))

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
