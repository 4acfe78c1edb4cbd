"""``torch.library`` registration of the ops (namespace ``sparsessm``).

Registered as custom ops with fake (meta) implementations so that ``torch.compile(fullgraph=True)``
traces calls without graph breaks and CUDA graphs can capture them. The op bodies dispatch on the
``backend`` string already resolved by :mod:`.dispatch`: ``"torch"`` runs
:mod:`.torch_backend`, ``"triton"`` the kernels of :mod:`.triton` and ``"cuda"`` (scan only) the
compiled extension through :mod:`.cuda` (both imported on first use; the Triton path never
synchronises with the host, so a captured CUDA graph replays it). The scan's autograd formula
(a backward through the reference) is registered by :mod:`.autograd`. An empty batch
(``b = 0``) returns empty outputs without calling any backend.

The op bodies are plain functions (:func:`selective_scan_impl`, :func:`selective_state_update_impl`)
that :mod:`.dispatch` calls directly in plain eager mode (no tracing, no torch function or dispatch
mode, no tensor subclass, no input requiring grad): the custom-op dispatch costs tens of
microseconds per call, which is most of a small problem's time on a GPU.
"""

from __future__ import annotations

import torch

from . import autograd as _autograd
from .checks import math_dtype
from .torch_backend import selective_scan_torch, selective_state_update_torch


def selective_scan_impl(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
    state_mask: torch.Tensor | None,
    kept_idx: torch.Tensor | None,
    kept_count: torch.Tensor | None,
    pruned_states: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if u.shape[0] == 0:  # an empty batch: nothing to compute, no kernel launched (any backend)
        return _empty_scan(u, delta, A, B, C, D, z, delta_bias, return_last_state)
    if backend == "triton":
        from .triton.selective_scan import selective_scan_triton as impl
    elif backend == "cuda":
        from .cuda import selective_scan_cuda as impl
    elif backend == "torch":
        impl = selective_scan_torch
    else:
        raise RuntimeError(f"sparsessm::selective_scan: backend {backend!r} is not available in this build")
    out, last_state = impl(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        delta_softplus,
        return_last_state,
        state_mask,
        kept_idx,
        kept_count,
        pruned_states,
    )
    if last_state is None:  # the op always returns a tensor: an empty one, in the fake's dtype
        last_state = out.new_empty((0,), dtype=math_dtype(u, delta, A, B, C, D, z, delta_bias))
    return out, last_state


def _empty_scan(u, delta, A, B, C, D, z, delta_bias, return_last_state):
    """``(out, last_state)`` of the scan for the given shapes, allocated but not computed (the
    fake implementation; also the result of an empty batch, where there is nothing to compute)."""
    b, d, l = u.shape
    state_dtype = math_dtype(u, delta, A, B, C, D, z, delta_bias)
    out = u.new_empty((b, d, l))
    last_state = u.new_empty((b, d, A.shape[1]) if return_last_state else (0,), dtype=state_dtype)
    return out, last_state


_selective_scan_op = torch.library.custom_op(
    "sparsessm::selective_scan", selective_scan_impl, mutates_args=()
)
_autograd.register(_selective_scan_op)


@_selective_scan_op.register_fake
def _(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    return_last_state,
    state_mask,
    kept_idx,
    kept_count,
    pruned_states,
    backend,
):
    return _empty_scan(u, delta, A, B, C, D, z, delta_bias, return_last_state)


def selective_state_update_impl(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    state_mask: torch.Tensor | None,
    kept_idx: torch.Tensor | None,
    kept_count: torch.Tensor | None,
    pruned_states: str,
    backend: str,
    state_batch_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    if x.shape[0] == 0:  # an empty batch: no state row changes, no kernel launched
        return x.new_empty(x.shape)
    if backend == "triton":
        from .triton.state_update import selective_state_update_triton as impl
    elif backend == "torch":
        impl = selective_state_update_torch
    else:
        raise RuntimeError(
            f"sparsessm::selective_state_update: backend {backend!r} is not available in this build"
        )
    return impl(
        state,
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        dt_softplus,
        state_mask,
        kept_idx,
        kept_count,
        pruned_states,
        state_batch_indices,
    )


_selective_state_update_op = torch.library.custom_op(
    "sparsessm::selective_state_update", selective_state_update_impl, mutates_args=("state",)
)


@_selective_state_update_op.register_fake
def _(
    state,
    x,
    dt,
    A,
    B,
    C,
    D,
    z,
    dt_bias,
    dt_softplus,
    state_mask,
    kept_idx,
    kept_count,
    pruned_states,
    backend,
    state_batch_indices=None,
):
    return x.new_empty(x.shape)
