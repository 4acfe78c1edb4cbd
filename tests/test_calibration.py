"""The torch path of ``state_saliency`` (chunked, vectorised) against the loop oracle."""

from __future__ import annotations

import pytest
import torch

from sparsessm_kernels.ops import state_saliency, state_saliency_ref
from sparsessm_kernels.ops.selective_scan import torch_backend as scan_torch
from tests.scan_cases import ScanCase, make_inputs, to_float64

CASES = [
    ScanCase("basic", batch=3, d=20, n=8, seqlen=30),
    ScanCase("l1", batch=2, d=6, n=4, seqlen=1),
    ScanCase("grouped", batch=2, d=12, n=16, seqlen=12, groups=3),
    ScanCase("no_bias_no_softplus", batch=2, d=8, n=4, seqlen=15, with_bias=False, softplus=False),
    ScanCase("fp64", batch=2, d=8, n=8, seqlen=20, dtype=torch.float64),
    ScanCase("time_invariant_B", batch=3, d=10, n=8, seqlen=17, fixed="B"),
]


def _run(case: ScanCase, per_step: bool, backend: str = "torch"):
    inputs, _ = make_inputs(case)
    weights = torch.rand(case.seqlen, generator=torch.Generator().manual_seed(2))
    args = (
        inputs["u"],
        inputs["delta"],
        inputs["A"],
        inputs["B"],
        inputs["delta_bias"],
        inputs["delta_softplus"],
    )
    out = state_saliency(*args, time_weights=weights, per_step=per_step, backend=backend)
    x = to_float64(inputs)
    ref = state_saliency_ref(
        x["u"], x["delta"], x["A"], x["B"], x["delta_bias"], x["delta_softplus"],
        time_weights=weights, per_step=per_step,
    )  # fmt: skip
    return out, ref


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual.double() / scale, expected / scale, rtol=tol, atol=tol)


@pytest.mark.parametrize("per_step", [False, True], ids=["weighted_sum", "per_step"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_path_matches_reference(case: ScanCase, per_step: bool) -> None:
    out, ref = _run(case, per_step)
    assert out.shape == ref.shape
    assert out.dtype == (torch.float64 if case.dtype == torch.float64 else torch.float32)
    _close(out, ref, case.dtype)


@pytest.mark.parametrize("per_step", [False, True], ids=["weighted_sum", "per_step"])
def test_chunk_boundaries_carry_the_state(per_step: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    case = ScanCase("chunks", batch=2, d=4, n=4, seqlen=23)
    monkeypatch.setattr(scan_torch, "TARGET_CHUNK_ELEMENTS", 2 * 4 * 4 * 5)  # chunks of 5 steps
    out, ref = _run(case, per_step)
    _close(out, ref, torch.float32)


def test_auto_on_cpu_is_the_torch_path() -> None:
    case = ScanCase("auto", batch=2, d=6, n=4, seqlen=9)
    out, ref = _run(case, False, backend="auto")
    _close(out, ref, torch.float32)


def test_bad_arguments() -> None:
    inputs, _ = make_inputs(ScanCase("bad", batch=2, d=6, n=4, seqlen=9))
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"])
    with pytest.raises(ValueError, match=r"time_weights: expected shape \(l,\)"):
        state_saliency(*args, time_weights=torch.ones(3))
    with pytest.raises(ValueError, match="backend: expected one of"):
        state_saliency(*args, backend="fast")
    with pytest.raises(ValueError, match="B: expected"):
        state_saliency(inputs["u"], inputs["delta"], inputs["A"], inputs["B"][:, :2])


def test_time_invariant_B_equals_one_group_per_channel() -> None:
    inputs, _ = make_inputs(ScanCase("fixed", batch=2, d=6, n=4, seqlen=9, fixed="B"))
    x = to_float64(inputs)
    b, _, l = x["u"].shape
    grouped = x["B"][None, :, :, None].repeat(b, 1, 1, l)  # (b, g = d, n, l)
    for per_step in (False, True):
        ours = state_saliency_ref(
            x["u"], x["delta"], x["A"], x["B"], x["delta_bias"], True, per_step=per_step
        )
        theirs = state_saliency_ref(
            x["u"], x["delta"], x["A"], grouped, x["delta_bias"], True, per_step=per_step
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
