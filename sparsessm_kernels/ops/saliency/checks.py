"""Argument checks of the saliency op: the scan's checks plus the time weights and a non-empty batch."""

from __future__ import annotations

import torch

from ..checks import check_scan_inputs, check_tensor


def check_time_weights(time_weights: torch.Tensor | None, seqlen: int, device: torch.device) -> torch.Tensor:
    if time_weights is None:
        return torch.ones(seqlen, dtype=torch.float32, device=device)
    check_tensor("time_weights", time_weights)
    if tuple(time_weights.shape) != (seqlen,):
        raise ValueError(f"time_weights: expected shape (l,) = ({seqlen},), got {tuple(time_weights.shape)}")
    return time_weights.to(device=device, dtype=torch.float32)


def check_saliency_inputs(u, delta, A, B, delta_bias) -> None:
    """The scan's checks (C, D and z are not read), and at least one sample to average over."""
    shape = check_scan_inputs(u, delta, A, B, None, None, None, delta_bias)
    if shape.batch < 1:
        raise ValueError(
            f"u: expected at least one calibration sample (b >= 1) to average over, "
            f"got shape {tuple(u.shape)}"
        )
