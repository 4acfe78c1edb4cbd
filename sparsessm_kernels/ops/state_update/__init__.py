"""The decode step (``selective_state_update``): validation and dispatch, implementations beside it.

* :mod:`.reference`: the oracle (``selective_state_update_ref``);
* :mod:`.torch_backend`: pure PyTorch, vectorised over batch and channels, any device;
* :mod:`.triton_backend`: the Triton kernel (in place, ``state_batch_indices``, no host sync).

The op is registered with ``torch.library`` in :mod:`sparsessm_kernels.ops.library`. A call whose
inputs need a gradient runs the differentiable reference instead (a mutating custom op has no
autograd formula).
"""

from __future__ import annotations

import torch

from .. import library as _library
from ..checks import check_out, check_pad_slot_id, check_state_update_inputs, math_dtype
from ..dispatch import resolve_backend
from ..layout import StateLayout, as_layout, cached_layout, check_pruned_states
from ..plan import PlanCache, ScanPlan, StepInputs, build_plan, plan_key
from .reference import selective_state_update_ref

__all__ = ["selective_state_update", "selective_state_update_ref"]


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    *,
    state_mask: torch.Tensor | StateLayout | None = None,
    pruned_states: str = "zero_transition",
    backend: str = "auto",
    state_batch_indices: torch.Tensor | None = None,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step of the (sparse) selective SSM, like mamba_ssm's ``selective_state_update``.

    Differentiable: when an input needs a gradient the step runs the reference's differentiable
    torch ops instead of the chosen backend (see :mod:`..selective_scan.autograd`).

    Args:
        state: ``(b, d, n)``, or compact ``(b, d, k)`` (kept states in ascending ``n``) when the
            mask keeps the same ``k`` states in every channel; updated in place, pruned entries 0.
        x: ``(b, d)``. dt: ``(b, d)``. A: ``(d, n)`` float32. B, C: ``(b, n)`` or ``(b, g, n)`` (a
            time-invariant ``(d, n)`` B of the scan as the view ``B[None].expand(b, d, n)``).
        D: ``(d,)``. z: ``(b, d)``. dt_bias: ``(d,)``. dt_softplus: softplus on ``dt + dt_bias``.
        state_mask, pruned_states, backend: as in :func:`~sparsessm_kernels.ops.selective_scan`.
        state_batch_indices: optional ``(b,)`` int32/int64 for continuous batching: row ``i`` updates
            ``state[state_batch_indices[i]]`` of a state with any number of rows ``(S, d, n or k)``.
            An index outside ``[0, S)`` (a pad such as -1) skips the row: output 0, no state
            change. Valid indices must be distinct. No backend synchronises with the host.
        pad_slot_id: optional int (vLLM's pad slot): rows whose ``state_batch_indices`` entry equals
            it are skipped the same way, even when it names a row of the pool.
        out: optional preallocated ``(b, d)`` output in ``x.dtype``: written (0 on skipped rows)
            and returned.

    The rule for skipped rows is written once in docs/semantics.md ("Skipped rows").

    Returns:
        ``out`` ``(b, d)`` in ``x.dtype``.
    """
    inputs = StepInputs(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    shapes = _library.eager_shape_class(inputs)  # None: not plain eager
    plan = step_plan(inputs, shapes, state_mask, pruned_states, dt_softplus, backend)
    pad_slot_id = check_pad_slot_id(pad_slot_id)
    if out is not None:
        check_out(out, x, "(b, d) like x")
    if shapes is not None:  # the fast path: no tracing, no mode, no input needing grad
        return _library.run_state_update(plan, inputs, pad_slot_id, out)
    if _library.needs_grad(*inputs[:9]) and not torch.compiler.is_compiling():
        # A mutating op has no torch.library autograd formula: differentiate the reference.
        return selective_state_update_ref(
            *inputs[:9],
            plan.softplus,
            state_mask=state_mask,
            pruned_states=pruned_states,
            state_batch_indices=state_batch_indices,
            pad_slot_id=pad_slot_id,
            out=out,
        )
    if out is None:
        out = x.new_empty(x.shape)
    torch.ops.sparsessm.selective_state_update(
        *inputs[:9], *_library.flat_step_plan(plan), state_batch_indices, pad_slot_id, out
    )
    return out


_PLANS = PlanCache()


def step_plan(
    inputs: StepInputs,
    shapes: tuple | None,
    state_mask: torch.Tensor | StateLayout | None,
    pruned_states: str,
    dt_softplus: bool,
    backend: str,
) -> ScanPlan:
    """Validate a decode step and build its :class:`ScanPlan`, once per layer and shape class
    ``shapes`` (cached for plain eager calls; built anew otherwise, e.g. traced under
    ``torch.compile``)."""
    key = plan_key(shapes, cached_layout(state_mask), pruned_states, bool(dt_softplus), backend)
    plan = None if key is None else _PLANS.get(key)
    if plan is not None:
        return plan
    check_pruned_states(pruned_states)
    A, x = inputs.A, inputs.x
    n = A.shape[-1] if isinstance(A, torch.Tensor) and A.dim() == 2 else 0
    d = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 2 else 0
    layout = as_layout(state_mask, d, n) if n and d else None
    n_kept = layout.n_kept if layout is not None and layout.uniform else None
    check_state_update_inputs(*inputs[:9], n_kept, inputs.state_batch_indices)
    chosen = resolve_backend(backend, x.device, op="selective_state_update")
    plan = build_plan(
        chosen,
        n,
        pruned_states,
        dt_softplus,
        math_dtype(*inputs[:9]),
        *_library.layout_tensors(layout, x.device),
    )
    return plan if key is None else _PLANS.put(key, plan)
