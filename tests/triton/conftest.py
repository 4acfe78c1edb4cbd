"""Triton kernel tests: compiled on a CUDA GPU, else through Triton's CPU interpreter.

Without a GPU ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` (Triton's own variable) before
anything imports triton: ``triton.jit`` decides at decoration time whether a function is
compiled or interpreted, both for Triton's own library (built when triton is imported) and for
this package's kernels (imported on the first Triton call). Setting it here as well covers
running this directory on its own. The whole directory is skipped when triton is not installed,
and every test skips with the backend's reason when it is not usable.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from tests.scan_cases import TOLERANCES, bf16_tolerance

HAVE_TRITON = importlib.util.find_spec("triton") is not None
collect_ignore_glob = [] if HAVE_TRITON else ["test_*.py"]

if HAVE_TRITON and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRETED = HAVE_TRITON and os.environ.get("TRITON_INTERPRET", "").strip().lower() in (
    "1",
    "true",
    "yes",
    "on",
    "y",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The dtype-keyed tolerances of the Triton tests: those of every backend, except that bf16 outputs
# (and bf16 decode states) converted by Triton's CPU interpreter are truncated, not rounded to
# nearest as compiled Triton does, which doubles the conversion's error bound (see
# tests/scan_cases.py). Compiled on a GPU, the Triton kernels meet the round-to-nearest bound.
TRITON_TOLERANCES = {**TOLERANCES, torch.bfloat16: bf16_tolerance(truncating=INTERPRETED)}

if INTERPRETED:
    from ._interp import speed_up_interpreter

    speed_up_interpreter()


@pytest.fixture(autouse=True)
def _triton_backend_usable() -> None:
    from sparsessm_kernels.ops.dispatch import available_backends

    usable, reason = available_backends()["triton"]
    if not usable:
        pytest.skip(f"the Triton backend is not usable here: {reason}")
