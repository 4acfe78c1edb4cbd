"""Backend resolution shared by every op: which backend runs a call, and why another cannot.

Each op (``ops/<op>/__init__.py``) validates its arguments and calls :func:`resolve_backend`;
the op's implementations live beside it (``reference.py``, ``torch_backend.py``,
``triton_backend.py``, ``cuda_backend.py``).

Backends:

* ``"torch"``: pure PyTorch (``ops/<op>/torch_backend.py``); any device.
* ``"triton"``: Triton kernels (``ops/<op>/triton_backend.py``, probed by :mod:`.triton`) for
  CUDA tensors; under Triton's interpreter (``TRITON_INTERPRET=1`` set before the kernels are
  first imported) also for CPU tensors, which is how the tests run them without a GPU.
* ``"cuda"``: the compiled extension ``sparsessm_kernels._C`` (opt-in build with
  ``SPARSESSM_BUILD_CUDA=1``; loaded by :mod:`.cuda`); the prefill scan only, float16/bfloat16/float32.
* ``"auto"`` (default): cuda if built and the tensors are on CUDA (scan, non-float64 inputs),
  else triton for CUDA tensors, else torch. ``SPARSESSM_BACKEND`` overrides the default of
  ``"auto"``.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("sparsessm_kernels")

BACKENDS = ("torch", "triton", "cuda")

BACKEND_ENV = "SPARSESSM_BACKEND"
"""The environment variable that replaces ``backend="auto"``."""


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
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"
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
