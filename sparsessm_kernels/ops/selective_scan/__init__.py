"""The selective scan (prefill): validation and dispatch, with its implementations beside it.

* :mod:`.reference`: the one-timestep-at-a-time oracle (``selective_scan_ref``);
* :mod:`.torch_backend`: chunked pure PyTorch, any device;
* :mod:`.triton_backend`: Triton kernels (CUDA, or CPU under Triton's interpreter);
* :mod:`.cuda_backend`: the compiled CUDA extension;
* :mod:`.autograd`: the backward (recomputes through the reference).

The op is registered with ``torch.library`` in :mod:`sparsessm_kernels.ops.library`.
"""

from __future__ import annotations

import torch

from .. import library as _library
from ..checks import check_scan_inputs, math_dtype
from ..dispatch import resolve_backend
from ..layout import StateLayout, as_layout, cached_layout, check_pruned_states
from ..plan import PlanCache, ScanInputs, ScanPlan, build_plan, plan_key
from .reference import selective_scan_ref

__all__ = ["selective_scan", "selective_scan_ref"]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    state_mask: torch.Tensor | StateLayout | None = None,
    pruned_states: str = "zero_transition",
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sparse selective scan, a drop-in for mamba_ssm's ``selective_scan_fn``.

    Differentiable: the forward runs the chosen backend, the backward recomputes through the
    reference (exact, not fast; see :mod:`.autograd`).

    Args:
        u: ``(b, d, l)`` input (fp16, bf16, fp32 or fp64).
        delta: ``(b, d, l)`` time step before ``delta_bias`` / softplus.
        A: ``(d, n)`` real float32 state matrix (``-exp(A_log)``), ``n <= 256``.
        B, C: each ``(b, n, l)``, grouped ``(b, g, n, l)`` or time-invariant ``(d, n)`` (mamba_ssm's
            ``is_variable_B=False``: row ``c`` at every batch row and timestep).
        D: ``(d,)`` skip. z: ``(b, d, l)`` gate: ``out * silu(z)``. delta_bias: ``(d,)``.
        delta_softplus: softplus on ``delta + delta_bias``.
        return_last_state: also return the final state ``(b, d, n)`` (float32; pruned entries 0).
        state_mask: ``None`` (dense), bool ``(n,)`` column mask or ``(d, n)`` per-channel mask
            (True = kept), or a prebuilt :class:`StateLayout` / ``StateSparsity``. A raw mask is
            turned into a layout on its first use and cached by identity and version (one host
            read-back for a CUDA mask, then none); under ``torch.compile`` only a prebuilt layout
            traces without graph breaks.
        pruned_states: ``"zero_transition"`` (default) or ``"remove"``; see docs/semantics.md.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``out`` ``(b, d, l)`` in ``u.dtype``; with ``return_last_state``, ``(out, last_state)``.
        An empty batch (``b = 0``) gives empty results.
    """
    inputs = ScanInputs(u, delta, A, B, C, D, z, delta_bias)
    shapes = _library.eager_shape_class(inputs)  # None: not plain eager
    plan = scan_plan(inputs, shapes, state_mask, pruned_states, delta_softplus, return_last_state, backend)
    if shapes is not None:
        out, last_state = _library.run_scan(plan, inputs)
    else:
        out, last_state = torch.ops.sparsessm.selective_scan(*inputs, *_library.flat_plan(plan))
    return (out, last_state) if return_last_state else out


_PLANS = PlanCache()


def scan_plan(
    inputs: ScanInputs,
    shapes: tuple | None,
    state_mask: torch.Tensor | StateLayout | None,
    pruned_states: str,
    delta_softplus: bool,
    return_last_state: bool,
    backend: str,
) -> ScanPlan:
    """Validate a call and build its :class:`ScanPlan`, once per layer and shape class ``shapes``
    (cached for plain eager calls; built anew otherwise, e.g. traced under ``torch.compile``)."""
    key = plan_key(
        shapes,
        cached_layout(state_mask),
        pruned_states,
        bool(delta_softplus),
        bool(return_last_state),
        backend,
    )
    plan = None if key is None else _PLANS.get(key)
    if plan is not None:
        return plan
    shape = check_scan_inputs(*inputs)
    check_pruned_states(pruned_states)
    layout = as_layout(state_mask, shape.d_inner, shape.d_state)
    dtype = math_dtype(*inputs)
    device = inputs.u.device
    chosen = resolve_backend(backend, device, float64=dtype == torch.float64)
    plan = build_plan(
        chosen, shape.d_state, pruned_states, delta_softplus, dtype, *_library.layout_tensors(layout, device),
        return_last_state=return_last_state,
    )  # fmt: skip
    return plan if key is None else _PLANS.put(key, plan)
