"""``torch.library`` registration of the ops (namespace ``sparsessm``) and their eager fast path.

Registered as custom ops with fake (meta) implementations so that ``torch.compile(fullgraph=True)``
traces calls without graph breaks and CUDA graphs can capture them. The op bodies dispatch on the
``backend`` string already resolved by :mod:`.dispatch`: ``"torch"`` runs the op's
``torch_backend``, ``"triton"`` its ``triton_backend`` and ``"cuda"`` (scan only) the compiled
extension through ``selective_scan/cuda_backend.py`` (both imported on first use; the Triton path
never synchronises with the host, so a captured CUDA graph replays it). The scan's autograd
formula (a backward through the reference) is registered by :mod:`.selective_scan.autograd`. An
empty batch (``b = 0``) returns empty outputs without calling any backend.

The op bodies are plain functions (:func:`selective_scan_impl`, :func:`selective_state_update_impl`)
that the public ops call directly in plain eager mode (:func:`plain_eager`: no tracing, no torch
function or dispatch mode, no tensor subclass, no input requiring grad): the custom-op dispatch
costs tens of microseconds per call, which is most of a small problem's time on a GPU.
"""

from __future__ import annotations

import torch

from .checks import math_dtype
from .layout import StateLayout
from .selective_scan import autograd as _autograd
from .selective_scan.torch_backend import selective_scan_torch
from .state_update.torch_backend import selective_state_update_torch


# ------------------------------------------------------------------ the eager fast path
def plain_eager(*tensors: torch.Tensor | None) -> bool:
    """Whether the op body can run directly instead of through ``torch.ops.sparsessm.*``.

    True in plain eager mode: not under ``torch.compile`` or ``torch.jit.trace`` tracing, no torch
    function / dispatch mode (FakeTensorMode, FlopCounterMode, ``torch.set_default_device``, ...), no
    functorch transform (vmap, grad) or forward-mode AD level, only plain tensors, and no input that
    would need autograd. Skipping the custom-op dispatch saves tens of microseconds per call; everything else
    (tracing, modes, subclasses, autograd) keeps going through the registered op.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    try:
        from torch.autograd import forward_ad
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if (
            torch._C._is_torch_function_mode_enabled()
            or _get_current_dispatch_mode() is not None
            or torch._C._are_functorch_transforms_active()  # vmap, grad, jacrev, ...
            or getattr(forward_ad, "_current_level", -1) >= 0  # dual tensors (jvp)
        ):
            return False
    except (ImportError, AttributeError):  # pragma: no cover - private API moved: take the op path
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return False
        if grad and t.requires_grad:
            return False
    return True


def layout_tensors(
    layout: StateLayout | None, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(mask, kept_idx, kept_count)`` of ``layout`` on ``device`` (all None when dense)."""
    if layout is None:
        return None, None, None
    on_device = layout.to(device)
    return on_device.mask, on_device.kept_idx, on_device.kept_count


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record a call on ``tensors`` (grad mode on, some input requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ------------------------------------------------------------------ the ops
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
        from .selective_scan.triton_backend import selective_scan_triton as impl
    elif backend == "cuda":
        from .selective_scan.cuda_backend import selective_scan_cuda as impl
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
        from .state_update.triton_backend import selective_state_update_triton as impl
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
