"""Triton backend infrastructure: the probe, shared kernel helpers and the ahead-of-time compiler.

The kernels live beside their ops, as ``triton_backend.py`` (forward only):

* ``ops/selective_scan/triton_backend.py``: prefill scan (dense, column and per-channel masks;
  one warp per channel, chunks scanned in warp shuffles, kept-slot loop unrolled; design:
  ``docs/triton.md``);
* ``ops/state_update/triton_backend.py``: decode step on dense or compact ``(b, d, k)`` states,
  in place, with optional ``state_batch_indices``;
* ``ops/saliency/triton_backend.py``: SparseSSM transition saliency accumulated during the scan.

Here:

* :mod:`._common`: helpers shared by the kernels (launch records, strides, fast math);
* :mod:`.aot`: compiles the launches a call would make for a GPU this machine lacks (sm_90), with
  registers, spills and shared memory per launch (``benchmarks/triton_kernel_report.py``).

Nothing here is imported by ``import sparsessm_kernels``: the kernel modules load on the first
Triton call (or the first :func:`probe` that finds the backend runnable), because ``triton.jit``
fixes at import whether a kernel is compiled for the GPU or run by Triton's CPU interpreter
(``TRITON_INTERPRET=1``, Triton's own variable). Under the interpreter ``backend="triton"`` also
accepts CPU tensors, which is how the test suite exercises these kernels without a GPU; it is
slow and meant for testing only.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

_TRUTHY = ("1", "true", "yes", "on", "y")
KERNEL_MODULES = tuple(
    f"sparsessm_kernels.ops.{op}.triton_backend" for op in ("selective_scan", "state_update", "saliency")
)
"""The modules holding Triton kernels, imported together by :func:`probe`."""


def interpret_requested() -> bool:
    """``TRITON_INTERPRET`` is set to a true value (Triton runs kernels on the CPU)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


@functools.cache
def _cuda_available() -> bool:
    return bool(torch.cuda.is_available())


@functools.cache
def _import_triton() -> tuple[str | None, str]:
    try:
        import triton
    except Exception as exc:  # ImportError, or a broken install
        return None, f"triton does not import ({type(exc).__name__}: {exc}); pip install triton"
    return str(getattr(triton, "__version__", "unknown")), ""


@functools.cache
def _import_kernels() -> tuple[bool, bool, str]:
    """``(ok, interpreted, error)``: import the kernel modules once."""
    try:
        for name in KERNEL_MODULES:
            importlib.import_module(name)
        from ._common import INTERPRETED
    except Exception as exc:
        return False, False, f"the Triton kernels failed to import ({type(exc).__name__}: {exc})"
    if INTERPRETED and not _triton_library_interpreted():
        return (
            False,
            False,
            "TRITON_INTERPRET=1 was set after triton was imported, so Triton's own library is "
            "compiled while these kernels are interpreted; set it before anything imports triton",
        )
    return True, INTERPRETED, ""


def _triton_library_interpreted() -> bool:
    """Whether ``triton.language``'s own jit functions were built for the interpreter."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    return not isinstance(getattr(tl, "zeros", None), JITFunction)


def probe() -> tuple[bool, str, bool]:
    """``(usable, reason, interpreted)`` of the Triton backend in this process.

    Usable when triton imports, the kernels import, and either a CUDA device is visible (compiled
    kernels) or ``TRITON_INTERPRET=1`` was set before the kernels were first imported (Triton's
    interpreter; CPU tensors allowed).
    """
    version, error = _import_triton()
    if version is None:
        return False, error, False
    interpret = interpret_requested()
    if not interpret and not _cuda_available():
        return (
            False,
            f"triton {version} is installed but no CUDA device is visible (the Triton kernels need a "
            "GPU; TRITON_INTERPRET=1 runs them on CPU through Triton's interpreter, for testing)",
            False,
        )
    ok, interpreted, error = _import_kernels()
    if not ok:
        return False, error, False
    if interpreted:
        return (
            True,
            f"triton {version} kernels under Triton's interpreter (TRITON_INTERPRET=1): CPU or CUDA "
            "tensors, slow, for testing",
            True,
        )
    if not _cuda_available():
        return (
            False,
            f"triton {version} kernels were compiled for the GPU (TRITON_INTERPRET was not set when "
            "they were imported) and no CUDA device is visible",
            False,
        )
    return True, f"triton {version} kernels on CUDA", False


__all__ = ["KERNEL_MODULES", "interpret_requested", "probe"]
