"""Public ops and backend dispatch.

``selective_scan`` and ``selective_state_update`` validate their arguments, turn
``state_mask`` into a :class:`StateLayout` and call the ``torch.library`` ops registered in
:mod:`sparsessm_kernels.ops.library` (namespace ``sparsessm``), which run the chosen backend.

Backends:

* ``"torch"``: pure PyTorch, chunked (:mod:`.torch_backend`); any device.
* ``"triton"``: Triton kernels (:mod:`.triton`) for CUDA tensors; under Triton's interpreter
  (``TRITON_INTERPRET=1`` set before the kernels are first imported) also for CPU tensors, which
  is how the tests run them without a GPU.
* ``"cuda"``: the compiled extension ``sparsessm_kernels._C`` (opt-in build with
  ``SPARSESSM_BUILD_CUDA=1``; :mod:`.cuda`); the prefill scan only, float16/bfloat16/float32.
* ``"auto"`` (default): cuda if built and the tensors are on CUDA (scan, non-float64 inputs),
  else triton for CUDA tensors, else torch. ``SPARSESSM_BACKEND`` overrides the default of
  ``"auto"``.
"""

from __future__ import annotations

import logging
import os

import torch

from .autograd import needs_grad
from .checks import check_scan_inputs, check_state_update_inputs
from .layout import StateLayout, as_layout, check_pruned_states
from .reference import selective_state_update_ref

logger = logging.getLogger("sparsessm_kernels")

BACKENDS = ("torch", "triton", "cuda")


class BackendUnavailableError(RuntimeError):
    """Raised when an explicitly requested backend cannot run here."""


_BACKEND_STATUS: dict[str, tuple[bool, str]] = {
    "torch": (True, "pure PyTorch, runs on any device"),
    "triton": (False, "not probed yet"),  # probed by _statuses() / available_backends()
    "cuda": (False, "not probed yet"),  # probed by _statuses() / available_backends()
}


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without its import of ``torch._dynamo`` (which
    imports triton, and Triton must be imported after ``TRITON_INTERPRET`` is set when the tests
    use its interpreter): that API only sets this attribute on ``fn``."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _triton_probe() -> tuple[bool, str, bool]:
    """``(usable, reason, interpreted)`` of the Triton backend (cheap after the first call).

    A constant for ``torch.compile``: the probe imports modules, which dynamo must not trace.
    """
    from .triton import probe

    return probe()


@_assume_constant_result
def _cuda_probe() -> tuple[bool, str]:
    """``(usable, reason)`` of the compiled CUDA extension (imported lazily, cached)."""
    from .cuda import cuda_status

    return cuda_status()


def _statuses() -> dict[str, tuple[bool, str]]:
    usable, reason, _ = _triton_probe()
    return {**_BACKEND_STATUS, "triton": (usable, reason), "cuda": _cuda_probe()}


# Ops without a kernel in some backend: auto skips it there, an explicit request is refused.
_MISSING_KERNELS = {
    "selective_state_update": {"cuda": "the CUDA extension has no decode-step kernel; use triton"},
    "state_saliency": {"cuda": "the CUDA extension has no calibration kernel; use triton"},
}


def available_backends() -> dict[str, tuple[bool, str]]:
    """``{backend: (usable, reason)}`` for ``torch``, ``triton`` and ``cuda`` on this machine."""
    statuses = _statuses()
    _BACKEND_STATUS.update(statuses)
    return statuses


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def resolve_backend(
    backend: str, device: torch.device, op: str = "selective_scan", float64: bool = False
) -> str:
    """Pick the backend that will run ``op`` for tensors on ``device``.

    ``float64``: some input is float64, which only the torch and Triton backends compute.
    """
    if backend == "auto":
        backend = os.environ.get("SPARSESSM_BACKEND", "auto") or "auto"
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend: expected one of {('auto', *BACKENDS)}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    statuses = dict(_statuses())
    for name, why in _MISSING_KERNELS.get(op, {}).items():
        statuses[name] = (False, why)
    if float64:
        statuses["cuda"] = (False, "the CUDA kernels compute float16/bfloat16/float32 inputs, not float64")
    if backend == "auto":
        if device.type == "cuda":
            for candidate in ("cuda", "triton"):
                if statuses[candidate][0]:
                    return candidate
            if not torch.compiler.is_compiling():
                _warn_once(
                    "auto-torch-on-cuda",
                    "sparsessm_kernels: no Triton or CUDA kernel is usable for CUDA tensors; running the "
                    f"pure PyTorch backend instead (slow path). triton: {statuses['triton'][1]}; "
                    f"cuda: {statuses['cuda'][1]}",
                )
        return "torch"
    usable, reason = statuses[backend]
    if not usable:
        raise BackendUnavailableError(f"backend={backend!r} is not usable: {reason}")
    on_cpu_interpreter = backend == "triton" and _triton_probe()[2]
    if backend != "torch" and device.type != "cuda" and not on_cpu_interpreter:
        raise ValueError(f"backend={backend!r} needs CUDA tensors, got tensors on {device}")
    return backend


def _plain_eager(*tensors: torch.Tensor | None) -> bool:
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


def _layout_tensors(
    layout: StateLayout | None, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(mask, kept_idx, kept_count)`` of ``layout`` on ``device`` (all None when dense)."""
    if layout is None:
        return None, None, None
    on_device = layout.to(device)
    return on_device.mask, on_device.kept_idx, on_device.kept_count


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
    shape = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    check_pruned_states(pruned_states)
    layout = as_layout(state_mask, shape.d_inner, shape.d_state)
    float64 = any(t is not None and t.dtype == torch.float64 for t in (u, delta, A, B, C, D, z, delta_bias))
    chosen = resolve_backend(backend, u.device, float64=float64)
    fast = _plain_eager(u, delta, A, B, C, D, z, delta_bias)
    op = _library.selective_scan_impl if fast else torch.ops.sparsessm.selective_scan
    out, last_state = op(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        bool(delta_softplus),
        bool(return_last_state),
        *_layout_tensors(layout, u.device),
        pruned_states,
        chosen,
    )
    return (out, last_state) if return_last_state else out


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
) -> torch.Tensor:
    """One decode step of the (sparse) selective SSM, like mamba_ssm's ``selective_state_update``.

    Differentiable: when an input needs a gradient the step runs the reference's differentiable
    torch ops instead of the chosen backend (see :mod:`.autograd`).

    Args:
        state: ``(b, d, n)``, or compact ``(b, d, k)`` (kept states in ascending ``n``) when the
            mask keeps the same ``k`` states in every channel; updated in place, pruned entries 0.
        x: ``(b, d)``. dt: ``(b, d)``. A: ``(d, n)`` float32. B, C: ``(b, n)`` or ``(b, g, n)`` (a
            time-invariant ``(d, n)`` B of the scan as the view ``B[None].expand(b, d, n)``).
        D: ``(d,)``. z: ``(b, d)``. dt_bias: ``(d,)``. dt_softplus: softplus on ``dt + dt_bias``.
        state_mask, pruned_states, backend: as in :func:`selective_scan`.
        state_batch_indices: optional ``(b,)`` int32/int64 for continuous batching: row ``i`` updates
            ``state[state_batch_indices[i]]`` of a state with any number of rows ``(S, d, n or k)``.
            An index outside ``[0, S)`` (a pad such as -1) skips the row: output 0, no state
            change. Valid indices must be distinct. (The torch backend synchronises to select
            the rows; the Triton kernel does not.)

    Returns:
        ``out`` ``(b, d)`` in ``x.dtype``.
    """
    check_pruned_states(pruned_states)
    n = A.shape[-1] if isinstance(A, torch.Tensor) and A.dim() == 2 else 0
    d = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 2 else 0
    layout = as_layout(state_mask, d, n) if n and d else None
    n_kept = layout.n_kept if layout is not None and layout.uniform else None
    check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias, n_kept, state_batch_indices)
    chosen = resolve_backend(backend, x.device, op="selective_state_update")
    if needs_grad(state, x, dt, A, B, C, D, z, dt_bias) and not torch.compiler.is_compiling():
        # A mutating op has no torch.library autograd formula: differentiate the reference.
        return selective_state_update_ref(
            state,
            x,
            dt,
            A,
            B,
            C,
            D,
            z,
            dt_bias,
            bool(dt_softplus),
            state_mask=layout,
            pruned_states=pruned_states,
            state_batch_indices=state_batch_indices,
        )
    fast = _plain_eager(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    op = _library.selective_state_update_impl if fast else torch.ops.sparsessm.selective_state_update
    return op(
        state,
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        bool(dt_softplus),
        *_layout_tensors(layout, x.device),
        pruned_states,
        chosen,
        state_batch_indices,
    )


from . import library as _library  # noqa: E402  (registers torch.ops.sparsessm.*)
