"""The torch backend's vectorised decode step against the float64 reference (the chunked scan is
checked with every backend in ``tests/ops/test_selective_scan.py``)."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout, selective_scan_ref, selective_state_update_ref
from tests.scan_cases import ScanCase, assert_close, make_inputs, to_float64
from tests.step_cases import DECODE_CASES, DecodeCase, decode_setup


@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("groups", [0, 2])
def test_decode_step_matches_reference(case: DecodeCase, pruned_states: str, groups: int) -> None:
    if case.mask == "none" and pruned_states == "remove":
        pytest.skip("pruned_states only matters with a mask")
    step, mask, state0, dtype = decode_setup(case, groups)
    name, state_dtype = case.name, case.state_dtype
    ours_state = state0.clone()
    out = ssk.selective_state_update(
        ours_state, **step, state_mask=mask, pruned_states=pruned_states, backend="torch"
    )
    ref_state = state0.clone().double()
    ref = selective_state_update_ref(
        ref_state, **to_float64(step), state_mask=mask, pruned_states=pruned_states
    )
    assert out.dtype == step["x"].dtype and ours_state.dtype == state_dtype
    assert_close(out, ref, dtype, f"{name} out")
    assert_close(ours_state, ref_state, state_dtype, f"{name} state")


def test_decode_chain_equals_scan_with_compact_state() -> None:
    case = ScanCase("chain", mask="2:4", seqlen=12, groups=0)
    inputs, mask = make_inputs(case)
    layout = StateLayout(mask)
    out, last = ssk.selective_scan(**inputs, return_last_state=True, state_mask=layout)
    b, d, l = inputs["u"].shape
    state = torch.zeros(b, d, layout.n_kept)
    steps = [
        ssk.selective_state_update(
            state,
            inputs["u"][..., t],
            inputs["delta"][..., t],
            inputs["A"],
            inputs["B"][..., t],
            inputs["C"][..., t],
            inputs["D"],
            inputs["z"][..., t],
            inputs["delta_bias"],
            True,
            state_mask=layout,
        )
        for t in range(l)
    ]
    torch.testing.assert_close(torch.stack(steps, -1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layout.expand_state(state), last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_kind", ["none", "column", "2:4", "unstructured_sparse"])
def test_time_invariant_B_C_strided_and_through_decode_steps(mask_kind: str) -> None:
    """A time-invariant B given as a transposed (n, d) parameter (any strides), and decode steps
    that take B / C as the grouped view ``B[None].expand(b, d, n)`` chaining to the same scan."""
    case = ScanCase("fixed_chain", mask=mask_kind, seqlen=7, fixed="BC")
    inputs, mask = make_inputs(case)
    inputs["B"] = inputs["B"].t().contiguous().t()
    assert not inputs["B"].is_contiguous()
    out, last = ssk.selective_scan(**inputs, return_last_state=True, state_mask=mask, backend="torch")
    ref, ref_last = selective_scan_ref(**to_float64(inputs), return_last_state=True, state_mask=mask)
    assert_close(out, ref, torch.float32, "out")
    assert_close(last, ref_last, torch.float32, "last_state")
    b, d, l = inputs["u"].shape
    B_step, C_step = (inputs[k][None].expand(b, d, case.n) for k in ("B", "C"))
    state = torch.zeros(b, d, case.n)
    steps = [
        ssk.selective_state_update(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], B_step, C_step, inputs["D"],
            inputs["z"][..., t], inputs["delta_bias"], True, state_mask=mask, backend="torch",
        )
        for t in range(l)
    ]  # fmt: skip
    torch.testing.assert_close(torch.stack(steps, -1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)
