"""Shared test configuration: the ``gpu`` marker skips cleanly without a CUDA device."""

from __future__ import annotations

import os

import pytest
import torch

# Keep CPU test runs deterministic and small on 2-core CI machines.
torch.manual_seed(0)
os.environ.setdefault("SPARSESSM_BACKEND", "auto")

# Without a GPU the Triton kernel tests (tests/triton/ and the triton cases of tests/ops/) run
# through Triton's CPU interpreter. TRITON_INTERPRET (Triton's own variable) must be set before
# anything imports triton: Triton's own library functions are built compiled or interpreted when
# triton is first imported, and test modules collected before them may import it (e.g. through
# transformers). It only affects Triton; backend="auto" still runs the torch backend for CPU
# tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
