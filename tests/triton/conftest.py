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

HAVE_TRITON = importlib.util.find_spec("triton") is not None
collect_ignore_glob = [] if HAVE_TRITON else ["test_*.py"]

if HAVE_TRITON and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# where the Triton kernels run and their dtype-keyed tolerances: one definition for every op test
from tests.backends import INTERPRETED, TRITON_TOLERANCES  # noqa: E402
from tests.backends import TRITON_DEVICE as DEVICE  # noqa: E402

__all__ = ["DEVICE", "INTERPRETED", "TRITON_TOLERANCES"]


@pytest.fixture(autouse=True)
def _triton_backend_usable() -> None:
    from tests.backends import prepare_triton

    prepare_triton()
