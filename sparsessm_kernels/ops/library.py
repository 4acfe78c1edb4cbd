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
from .plan import ScanInputs, ScanPlan, StepInputs, build_plan
from .selective_scan import autograd as _autograd
from .selective_scan.torch_backend import selective_scan_torch
from .state_update.torch_backend import selective_state_update_torch

# ------------------------------------------------------------------ the eager fast path
try:  # resolved once: importing inside plain_eager cost microseconds per call
    from torch.autograd import forward_ad as _forward_ad
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    _torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled
    _functorch_transforms_active = torch._C._are_functorch_transforms_active
    _MODE_PROBES = True
except (ImportError, AttributeError):  # pragma: no cover - private API moved: always take the op path
    _MODE_PROBES = False

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def eager_shape_class(tensors: tuple[torch.Tensor | None, ...]) -> tuple | None:
    """The shape class of a call that can run its op body directly, else None.

    Direct (plain eager): not under ``torch.compile`` or ``torch.jit.trace`` tracing, no torch
    function / dispatch mode (FakeTensorMode, FlopCounterMode, ``torch.set_default_device``, ...), no
    functorch transform (vmap, grad) or forward-mode AD level, only plain tensors, and no input that
    would need autograd. Skipping the custom-op dispatch saves tens of microseconds per call;
    everything else (tracing, modes, subclasses, autograd) keeps going through the registered op.

    The shape class is ``(shape, dtype, device)`` of every tensor (None for absent ones): what the
    validation and the plan of a call depend on (:mod:`.plan`), gathered in the same pass.
    """
    if not _MODE_PROBES or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    if (
        _torch_function_mode_enabled()
        or _get_current_dispatch_mode() is not None
        or _functorch_transforms_active()  # vmap, grad, jacrev, ...
        or getattr(_forward_ad, "_current_level", -1) >= 0  # dual tensors (jvp)
    ):
        return None
    grad = torch.is_grad_enabled()
    key = []
    for t in tensors:
        if t is None:
            key.append(None)
        elif type(t) not in _PLAIN_TYPES or (grad and t.requires_grad):
            return None
        else:
            key.append((t.shape, t.dtype, t.device))
    return tuple(key)


def plain_eager(*tensors: torch.Tensor | None) -> bool:
    """Whether the op body can run directly (see :func:`eager_shape_class`)."""
    return eager_shape_class(tensors) is not None


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


# ------------------------------------------------------------------ plans <-> op arguments
def flat_plan(plan: ScanPlan) -> tuple:
    """The plan as the trailing arguments of ``sparsessm::selective_scan`` (after the tensors)."""
    return (
        plan.softplus, plan.return_last_state, plan.state_mask, plan.kept_idx, plan.kept_count,
        plan.pruned_states, plan.backend,
    )  # fmt: skip


def flat_step_plan(plan: ScanPlan) -> tuple:
    """The plan as the arguments of ``sparsessm::selective_state_update`` after ``dt_bias``."""
    return plan.softplus, plan.state_mask, plan.kept_idx, plan.kept_count, plan.pruned_states, plan.backend


# ------------------------------------------------------------------ the scan
def run_scan(plan: ScanPlan, inputs: ScanInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the plan's backend: ``(out, last_state)`` (an empty last state when not requested)."""
    if inputs.u.shape[0] == 0:  # an empty batch: nothing to compute, no kernel launched (any backend)
        return _empty_scan(plan, inputs)
    if plan.backend == "torch":
        impl = selective_scan_torch
    elif plan.backend == "triton":
        from .selective_scan.triton_backend import selective_scan_triton as impl
    elif plan.backend == "cuda":
        from .selective_scan.cuda_backend import selective_scan_cuda as impl
    else:
        raise RuntimeError(
            f"sparsessm::selective_scan: backend {plan.backend!r} is not available in this build"
        )
    out, last_state = impl(plan, inputs)
    if last_state is None:  # the op always returns a tensor: an empty one, in the fake's dtype
        last_state = out.new_empty((0,), dtype=plan.math_dtype)
    return out, last_state


def _empty_scan(plan: ScanPlan, inputs: ScanInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, last_state)`` of the scan for the given shapes, allocated but not computed (the
    fake implementation; also the result of an empty batch, where there is nothing to compute)."""
    u = inputs.u
    b, d, l = u.shape
    out = u.new_empty((b, d, l))
    last_state = u.new_empty((b, d, plan.n) if plan.return_last_state else (0,), dtype=plan.math_dtype)
    return out, last_state


def _scan_op_plan(
    inputs: ScanInputs,
    delta_softplus,
    return_last_state,
    state_mask,
    kept_idx,
    kept_count,
    pruned_states,
    backend,
) -> ScanPlan:
    """The plan of a call that came through ``torch.ops.sparsessm.selective_scan``."""
    return build_plan(
        backend, inputs.A.shape[1], pruned_states, delta_softplus, math_dtype(*inputs),
        state_mask, kept_idx, kept_count, return_last_state=return_last_state,
    )  # fmt: skip


def selective_scan_op(
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
    """The body of ``sparsessm::selective_scan``: the plan's fields as plain arguments."""
    inputs = ScanInputs(u, delta, A, B, C, D, z, delta_bias)
    plan = _scan_op_plan(
        inputs, delta_softplus, return_last_state, state_mask, kept_idx, kept_count, pruned_states, backend
    )
    return run_scan(plan, inputs)


_selective_scan_op = torch.library.custom_op("sparsessm::selective_scan", selective_scan_op, mutates_args=())
_autograd.register(_selective_scan_op)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, *plan_args):
    inputs = ScanInputs(u, delta, A, B, C, D, z, delta_bias)
    return _empty_scan(_scan_op_plan(inputs, *plan_args), inputs)


# ------------------------------------------------------------------ the decode step
def run_state_update(
    plan: ScanPlan, inputs: StepInputs, pad_slot_id: int | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the plan's backend on one decode step (``inputs.state`` updated in place): ``(b, d)``,
    written to ``out`` when given, rows indexed ``pad_slot_id`` skipped."""
    x = inputs.x
    if x.shape[0] == 0:  # an empty batch: no state row changes, no kernel launched
        return x.new_empty(x.shape) if out is None else out
    if plan.backend == "torch":
        impl = selective_state_update_torch
    elif plan.backend == "triton":
        from .state_update.triton_backend import selective_state_update_triton as impl
    else:
        raise RuntimeError(
            f"sparsessm::selective_state_update: backend {plan.backend!r} is not available in this build"
        )
    return impl(plan, inputs, pad_slot_id=pad_slot_id, out=out)


def selective_state_update_op(
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
    state_batch_indices: torch.Tensor | None,
    pad_slot_id: int | None,
    out: torch.Tensor,
) -> None:
    """The body of ``sparsessm::selective_state_update``: the plan's fields as plain arguments.

    Mutates ``state`` and ``out`` (the output, allocated by the caller: a custom op's result may not
    alias an input, so the op returns nothing and the public op returns ``out``)."""
    inputs = StepInputs(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    plan = build_plan(
        backend,
        A.shape[1],
        pruned_states,
        dt_softplus,
        math_dtype(*inputs[:9]),
        state_mask,
        kept_idx,
        kept_count,
    )
    run_state_update(plan, inputs, pad_slot_id, out)


_selective_state_update_op = torch.library.custom_op(
    "sparsessm::selective_state_update", selective_state_update_op, mutates_args=("state", "out")
)


@_selective_state_update_op.register_fake
def _(*args) -> None:
    return None
