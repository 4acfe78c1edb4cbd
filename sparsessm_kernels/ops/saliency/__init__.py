"""Calibration statistics for SparseSSM pruning: OBS saliency of the state transitions.

For a state ``(c, s)`` at step ``t`` the SparseSSM score (arXiv 2506.09613) of zeroing its
discrete transition ``dA_t = exp(delta_t[c] * A[c, s])`` is ``dA_t^2 * h_{t-1}[c, s]^2``: the
squared change of ``h_t`` when the transition is removed. The score is averaged over the
calibration samples as a per-sample product (``mean_b dA^2 h^2``, not ``mean dA^2 * mean h^2``)
and aggregated over time with weights ``w_t``.

:func:`state_saliency` returns it without materialising the ``(b, l, d, n)`` state trajectory:
on the ``"triton"`` backend by :mod:`.triton_backend` (states in registers, one pass over
time), on the ``"torch"`` backend by a chunked, vectorised scan (:mod:`.torch_backend`) that
holds one ``(b, T, d, n)`` chunk at a time. ``state_saliency_ref`` (:mod:`.reference`) is the
plain one-step-at-a-time oracle.
"""

from __future__ import annotations

import torch

from ..dispatch import resolve_backend
from .checks import check_saliency_inputs, check_time_weights
from .reference import state_saliency_ref
from .torch_backend import state_saliency_torch

__all__ = ["state_saliency", "state_saliency_ref"]


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
    check_saliency_inputs(u, delta, A, B, delta_bias)
    w = check_time_weights(time_weights, u.shape[2], u.device)
    chosen = resolve_backend(backend, u.device, op="state_saliency")
    if chosen == "triton":
        from .triton_backend import state_saliency_triton

        return state_saliency_triton(u, delta, A, B, delta_bias, delta_softplus, w, per_step)
    return state_saliency_torch(u, delta, A, B, delta_bias, delta_softplus, w, per_step)
