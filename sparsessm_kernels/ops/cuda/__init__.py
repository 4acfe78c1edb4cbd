"""The ``"cuda"`` backend's loader: the compiled extension ``sparsessm_kernels._C`` (hand-written CUDA C++).

The extension is optional (built only with ``SPARSESSM_BUILD_CUDA=1``, see ``docs/cuda.md``) and is
imported lazily, the first time :func:`cuda_status` or :func:`extension` needs it; when it is
missing, the reason is recorded and reported, with the build command, only when the cuda backend
is asked for. Importing this module never fails and never touches the GPU.

The op wrappers live beside their ops (``ops/selective_scan/cuda_backend.py``).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

__all__ = ["BUILD_COMMAND", "EXTENSION", "KERNEL_DTYPES", "cuda_status", "extension", "extension_info"]

from .build import BUILD_COMMAND, EXTENSION

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""The dtypes the CUDA kernels compute (in float32 math)."""


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    """Import the compiled extension once: ``(module, "")`` or ``(None, why it is missing)``."""
    try:
        module = importlib.import_module(EXTENSION)
    except ImportError as exc:  # not built, or built against another torch / CUDA
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, ModuleNotFoundError) and exc.name == EXTENSION:
            why = f"the compiled extension {EXTENSION} is not built (this install is pure Python)"
        else:
            why = f"the compiled extension {EXTENSION} failed to import ({detail}); rebuild it"
        return None, f"{why}; build it with: {BUILD_COMMAND}"
    except Exception as exc:  # pragma: no cover - a broken binary can raise anything
        why = f"importing {EXTENSION} raised {type(exc).__name__}: {exc}"
        return None, f"{why}; rebuild it with: {BUILD_COMMAND}"
    return module, ""


def cuda_status() -> tuple[bool, str]:
    """``(usable, reason)`` of the cuda backend on this machine.

    Not usable when the extension is not built (or does not import: the reason says why and
    gives the build command) or when no CUDA GPU is visible.
    """
    module, why = _load()
    if module is None:
        return False, why
    archs = getattr(module, "cuda_archs", "unknown")
    if not torch.cuda.is_available():
        torch_cuda = torch.version.cuda
        detail = "a CPU-only build of torch" if torch_cuda is None else f"torch built for CUDA {torch_cuda}"
        return False, (
            f"{EXTENSION} is built (CUDA archs {archs}) but no CUDA GPU is visible "
            f"(torch.cuda.is_available() is False; {detail})"
        )
    return True, f"compiled CUDA kernels ({EXTENSION}, CUDA archs {archs})"


def extension_info() -> dict[str, object]:
    """What is known about the extension without touching the GPU (for ``sparsessm env``)."""
    module, why = _load()
    if module is None:
        return {"built": False, "reason": why}
    return {"built": True, "cuda_archs": getattr(module, "cuda_archs", "unknown"), "path": module.__file__}


def extension() -> ModuleType:
    """The imported extension, or :class:`BackendUnavailableError` saying why it is missing."""
    module, why = _load()
    if module is None:
        # Lazy and absolute: dispatch imports this package indirectly.
        from sparsessm_kernels.ops.dispatch import BackendUnavailableError

        raise BackendUnavailableError(f"backend='cuda' is not usable: {why}")
    return module
