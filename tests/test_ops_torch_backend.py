"""The torch backend (chunked scan, vectorised decode step) against the float64 reference."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout, selective_scan_ref
from tests.scan_cases import CASES, ScanCase, assert_close, make_inputs, to_float64


@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_scan_matches_reference(case: ScanCase, pruned_states: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.chunk is not None:
        monkeypatch.setenv("SPARSESSM_TORCH_CHUNK", str(case.chunk))
    inputs, mask = make_inputs(case)
    out, state = ssk.selective_scan(
        **inputs, return_last_state=True, state_mask=mask, pruned_states=pruned_states, backend="torch"
    )
    ref, ref_state = selective_scan_ref(
        **to_float64(inputs), return_last_state=True, state_mask=mask, pruned_states=pruned_states
    )
    assert out.dtype == inputs["u"].dtype and out.shape == inputs["u"].shape
    expected_state_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    assert state.dtype == expected_state_dtype
    assert_close(out, ref, case.dtype, f"{case.name} out")
    assert_close(
        state, ref_state, torch.float32 if case.dtype != torch.float64 else case.dtype, f"{case.name} state"
    )


def test_prebuilt_layout_equals_raw_mask() -> None:
    inputs, mask = make_inputs(ScanCase("layout", mask="2:4"))
    a = ssk.selective_scan(**inputs, state_mask=mask)
    b = ssk.selective_scan(**inputs, state_mask=StateLayout(mask))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_non_contiguous_inputs_like_transformers_passes_them() -> None:
    case = ScanCase("strided", mask="unstructured")
    inputs, mask = make_inputs(case)
    # transformers hands over B and C as transposes of (b, l, n) tensors, z as a chunk view.
    B_t = inputs["B"].transpose(1, 2).contiguous().transpose(1, 2)
    zz = torch.cat([inputs["z"], inputs["z"]], dim=1)[:, : case.d]
    strided = {**inputs, "B": B_t, "C": inputs["C"].transpose(1, 2).contiguous().transpose(1, 2), "z": zz}
    assert not strided["B"].is_contiguous()
    out = ssk.selective_scan(**strided, state_mask=mask)
    ref = selective_scan_ref(**to_float64(inputs), state_mask=mask)
    assert_close(out, ref, torch.float32, "strided")


def test_return_last_state_false_returns_only_out() -> None:
    inputs, _ = make_inputs(ScanCase("plain"))
    out = ssk.selective_scan(**inputs)
    assert isinstance(out, torch.Tensor)


def test_case_masks_exercise_both_per_channel_paths() -> None:
    from sparsessm_kernels.ops.selective_scan.torch_backend import MASKED_DENSE_FRACTION

    ks = {}
    for kind in ("unstructured", "unstructured_sparse", "2:4"):
        _, mask = make_inputs(ScanCase("paths", mask=kind))
        ks[kind] = StateLayout(mask).n_kept / mask.shape[1]
    assert ks["unstructured"] > MASKED_DENSE_FRACTION  # masked-dense path
    assert ks["unstructured_sparse"] <= MASKED_DENSE_FRACTION  # gather path, unequal counts
    assert ks["2:4"] <= MASKED_DENSE_FRACTION  # gather path, uniform counts


def test_scratch_arena_survives_switching_inference_mode() -> None:
    inputs, mask = make_inputs(ScanCase("modes", mask="column"))
    with torch.inference_mode():
        inside = ssk.selective_scan(**inputs, state_mask=mask)
    outside = ssk.selective_scan(**inputs, state_mask=mask)
    with torch.inference_mode():
        again = ssk.selective_scan(**inputs, state_mask=mask)
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
    torch.testing.assert_close(again, outside, rtol=0, atol=0)


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
