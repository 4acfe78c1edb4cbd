"""The torch backend with a time-invariant B / C: the scan and a chain of decode steps agree (each op
against the reference over every backend: ``tests/ops/test_selective_scan.py``,
``tests/ops/test_state_update.py``)."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import selective_scan_ref
from tests.scan_cases import ScanCase, assert_close, make_inputs, to_float64


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
