"""Named decode-step cases shared by the step tests of every backend (one table, one setup), the
backends they run on and the tolerances of each."""

from __future__ import annotations

from typing import NamedTuple

import torch

from tests.scan_cases import TOLERANCES, ScanCase, make_inputs

BACKENDS = ("torch", "triton")
"""The decode step's backends (Triton compiled on a GPU, else run by Triton's CPU interpreter)."""
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def require_backend(backend: str) -> None:
    """Skip the calling test, with the reason, when ``backend`` is not usable here."""
    import pytest

    from sparsessm_kernels.ops.dispatch import available_backends

    usable, reason = available_backends()[backend]
    if not usable:
        pytest.skip(f"the {backend} backend is not usable here: {reason}")


def tolerances(backend: str) -> dict[torch.dtype, tuple[float, float]]:
    """The dtype-keyed tolerances of ``backend`` against the float64 reference."""
    if backend != "triton":
        return TOLERANCES
    from tests.triton.conftest import TRITON_TOLERANCES  # bf16 conversions of the interpreter

    return TRITON_TOLERANCES


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


class PoolCase(NamedTuple):
    """A step on a slot pool: ``state_batch_indices`` with out-of-range pads, ``pad_slot_id``, ``out``."""

    name: str
    compact: bool  # a compact (S, d, k) pool under a 2:4 mask, else dense (S, d, n) without a mask
    index_dtype: torch.dtype
    pad_slot_id: int | None
    with_out: bool


POOL_CASES = [
    PoolCase("dense_int32", False, torch.int32, None, False),
    PoolCase("compact_int64", True, torch.int64, None, False),
    PoolCase("dense_pad_slot", False, torch.int64, 2, False),
    PoolCase("compact_pad_slot_out", True, torch.int32, 2, True),
]
POOL_ROWS = 7  # S, the pool's rows
POOL_INDICES = (5, -1, 0, 7, 2)  # -1 and 7 (= S) are out of range; 2 is the pad slot of some cases


def pool_setup(case: PoolCase, device: str = "cpu") -> tuple:
    """``(step kwargs, layout, pool state (S, d, n or k), state_batch_indices, skipped batch rows,
    untouched pool rows)`` of ``case``: batch 5, d 12, n 8, S 7."""
    from sparsessm_kernels.ops import StateLayout

    scan = ScanCase(case.name, batch=5, d=12, n=8, seqlen=1, mask="2:4" if case.compact else "none")
    inputs, mask = make_inputs(scan, seed=4, device=device)
    layout = StateLayout(mask) if mask is not None else None
    k = layout.n_kept if case.compact else 8
    state0 = torch.randn(POOL_ROWS, 12, k, generator=torch.Generator().manual_seed(1)).to(device)
    sbi = torch.tensor(POOL_INDICES, dtype=case.index_dtype, device=device)
    skipped = [i for i, r in enumerate(POOL_INDICES) if not 0 <= r < POOL_ROWS or r == case.pad_slot_id]
    written = {r for i, r in enumerate(POOL_INDICES) if i not in skipped}
    untouched = [r for r in range(POOL_ROWS) if r not in written]
    return step_of(inputs), layout, state0, sbi, skipped, untouched
