"""Shared test configuration: the ``gpu`` marker skips cleanly without a CUDA device."""

from __future__ import annotations

import os

import pytest
import torch

# Keep CPU test runs deterministic and small on 2-core CI machines.
torch.manual_seed(0)
os.environ.setdefault("SPARSESSM_BACKEND", "auto")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
