"""The backends an op test runs on: one pytest parameter per backend, and where each one runs.

An op's test file (``tests/ops/test_<op>.py``) parametrizes its cases over :data:`SCAN_BACKENDS`
(or a subset) and calls :func:`use_backend` first, which skips with the backend's own reason when it
is not usable here and says where the backend's tensors live:

* ``torch``: always, on the CPU (or wherever the inputs are).
* ``triton``: compiled on a CUDA GPU, else through Triton's CPU interpreter. ``tests/conftest.py``
  sets ``TRITON_INTERPRET=1`` before anything imports triton; bf16 outputs converted by the
  interpreter are truncated, so :data:`TRITON_TOLERANCES` widens bf16 exactly then.
* ``cuda``: the compiled extension on a GPU (``@pytest.mark.gpu``).
* ``cuda_emulated``: the same kernel sources compiled for the CPU through the host emulation
  (``csrc/emulation``), opt-in with ``RUN_CUDA_BUILD_TESTS=1`` because the build takes minutes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

from tests.scan_cases import TOLERANCES, bf16_tolerance

HAVE_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAVE_TRITON and os.environ.get("TRITON_INTERPRET", "").strip().lower() in (
    "1",
    "true",
    "yes",
    "on",
    "y",
)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The dtype-keyed tolerances of the Triton kernels: those of every backend, except that bf16 outputs
# (and bf16 decode states) converted by Triton's CPU interpreter are truncated, not rounded to
# nearest as compiled Triton does, which doubles the conversion's error bound (see
# tests/scan_cases.py). Compiled on a GPU, the Triton kernels meet the round-to-nearest bound.
TRITON_TOLERANCES = {**TOLERANCES, torch.bfloat16: bf16_tolerance(truncating=INTERPRETED)}

BUILD_TESTS = os.environ.get("RUN_CUDA_BUILD_TESTS", "") == "1"
needs_build_flag = pytest.mark.skipif(
    not BUILD_TESTS, reason="compiles for minutes: set RUN_CUDA_BUILD_TESTS=1 to run it"
)

_MARKS = {
    "torch": (),
    "triton": (),
    "cuda": (pytest.mark.gpu,),
    "cuda_emulated": (pytest.mark.slow, needs_build_flag),
}


def backend_param(backend: str, *values, id: str | None = None):
    """``pytest.param(backend, *values)`` carrying the backend's marks (gpu, opt-in build)."""
    return pytest.param(backend, *values, marks=_MARKS[backend], id=id or backend)


def backend_params(backends: tuple[str, ...] | list[str]) -> list:
    return [backend_param(b) for b in backends]


def tolerances(backend: str) -> dict[torch.dtype, tuple[float, float]]:
    return TRITON_TOLERANCES if backend == "triton" else TOLERANCES


def prepare_triton() -> None:
    """Skip unless the Triton backend is usable; under the interpreter, install its speed-ups."""
    from sparsessm_kernels.ops.dispatch import available_backends

    usable, reason = available_backends()["triton"]
    if not usable:
        pytest.skip(f"the Triton backend is not usable here: {reason}")
    if INTERPRETED:
        from tests.triton._interp import speed_up_interpreter

        speed_up_interpreter()


def cuda_runner(kind: str, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Where the CUDA kernels run: ``gpu`` (the built extension) or ``emulated`` (host emulation).

    Returns ``(name, device, ext)``; skips with the reason when that runner is not available.
    """
    import sparsessm_kernels.ops.cuda as cuda_backend

    if kind == "gpu":
        usable, reason = cuda_backend.cuda_status()
        if not usable:
            pytest.skip(f"cuda backend not usable: {reason}")
        ext = importlib.import_module(cuda_backend.EXTENSION)
        return SimpleNamespace(name="gpu", device="cuda", ext=ext)
    from tests.cuda_emulation.build import load_emulated_extension, missing_requirements

    missing = missing_requirements()
    if missing:
        pytest.skip(f"cannot build the CUDA emulation here: {missing}")
    ext = load_emulated_extension()
    monkeypatch.setattr(cuda_backend, "extension", lambda: ext)
    return SimpleNamespace(name="emulated", device="cpu", ext=ext)


def use_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make ``backend`` runnable for this test (or skip saying why); return its tensors' device."""
    if backend == "torch":
        return "cpu"
    if backend == "triton":
        prepare_triton()
        return TRITON_DEVICE
    return cuda_runner("gpu" if backend == "cuda" else "emulated", monkeypatch).device
