"""Named decode-step cases shared by the step tests of every backend (one table, one setup)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from tests.scan_cases import ScanCase, make_inputs


class DecodeCase(NamedTuple):
    name: str
    mask: str  # a mask kind of tests.scan_cases.make_mask
    compact: bool  # a compact (b, d, k) state (uniform masks) rather than (b, d, n)
    state_dtype: torch.dtype


DECODE_CASES = [
    DecodeCase("dense", "none", False, torch.float32),
    DecodeCase("dense_n32", "none", False, torch.float32),
    DecodeCase("column_compact", "column", True, torch.float32),
    DecodeCase("column_full", "column", False, torch.float32),
    DecodeCase("nm_2_4_compact", "2:4", True, torch.float32),
    DecodeCase("nm_2_4_full", "2:4", False, torch.float32),
    DecodeCase("unstructured_full", "unstructured", False, torch.float32),
    DecodeCase("channel_with_every_state_pruned", "empty_channel", False, torch.float32),
    DecodeCase("column_all_pruned_compact", "all_pruned_column", True, torch.float32),
    DecodeCase("nm_2_4_compact_fp16_state", "2:4", True, torch.float16),
    DecodeCase("nm_2_4_compact_bf16_state", "2:4", True, torch.bfloat16),
    DecodeCase("fp64", "2:4", True, torch.float64),
]


def step_of(inputs: dict) -> dict:
    """The keyword arguments of one decode step: timestep 0 of a scan case's inputs."""
    return {
        "x": inputs["u"][..., 0],
        "dt": inputs["delta"][..., 0],
        "A": inputs["A"],
        "B": inputs["B"][..., 0],
        "C": inputs["C"][..., 0],
        "D": inputs["D"],
        "z": inputs["z"][..., 0],
        "dt_bias": inputs["delta_bias"],
        "dt_softplus": True,
    }


def decode_setup(case: DecodeCase, groups: int, device: str = "cpu") -> tuple:
    """``(step kwargs, mask, initial state, math dtype)`` of ``case`` with ``groups`` B/C groups."""
    dtype = torch.float64 if case.state_dtype == torch.float64 else torch.float32
    n = 32 if case.name.endswith("n32") else 8
    scan = ScanCase(case.name, batch=3, d=20, n=n, seqlen=1, mask=case.mask, groups=groups, dtype=dtype)
    inputs, mask = make_inputs(scan, seed=3, device=device)
    b, d, _ = inputs["u"].shape
    k = int(mask.sum(-1).max()) if (case.compact and mask is not None) else n
    state0 = torch.randn(b, d, k, generator=torch.Generator().manual_seed(5))
    return step_of(inputs), mask, state0.to(device=device, dtype=case.state_dtype), dtype
