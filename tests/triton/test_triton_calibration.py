"""Triton calibration kernel (SparseSSM transition saliency) against the loop reference."""

from __future__ import annotations

import pytest
import torch

from sparsessm_kernels.ops import state_saliency, state_saliency_ref
from sparsessm_kernels.ops.saliency.triton_backend import state_saliency_triton
from tests.scan_cases import TOLERANCES, ScanCase, make_inputs, to_float64

from .conftest import DEVICE

CASES = [
    ScanCase("basic", batch=3, d=20, n=8, seqlen=30),
    ScanCase("l1", batch=2, d=6, n=4, seqlen=1),
    ScanCase("batch_blocks_d_odd", batch=11, d=13, n=4, seqlen=9),
    ScanCase("n16_grouped", batch=2, d=12, n=16, seqlen=12, groups=3),
    ScanCase("n32", batch=1, d=4, n=32, seqlen=10),
    ScanCase("no_bias_no_softplus", batch=2, d=8, n=4, seqlen=15, with_bias=False, softplus=False),
    ScanCase("bf16", batch=2, d=8, n=8, seqlen=20, dtype=torch.bfloat16),
    ScanCase("fp64", batch=2, d=8, n=8, seqlen=20, dtype=torch.float64),
    ScanCase("time_invariant_B", batch=3, d=10, n=8, seqlen=12, fixed="B"),
]


def _args(case: ScanCase):
    inputs, _ = make_inputs(case, device=DEVICE)
    weights = torch.rand(case.seqlen, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    return inputs, weights


def _ref(inputs, weights, per_step):
    x = to_float64(inputs)
    return state_saliency_ref(
        x["u"], x["delta"], x["A"], x["B"], x["delta_bias"], x["delta_softplus"],
        time_weights=weights, per_step=per_step,
    )  # fmt: skip


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    rtol, _ = TOLERANCES[torch.float64 if dtype == torch.float64 else torch.float32]
    # scores span orders of magnitude: compare relative to the largest one
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual.double() / scale, expected / scale, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("per_step", [False, True], ids=["weighted_sum", "per_step"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_saliency_matches_reference(case: ScanCase, per_step: bool) -> None:
    inputs, weights = _args(case)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["delta_bias"])
    out = state_saliency(
        *args, inputs["delta_softplus"], time_weights=weights, per_step=per_step, backend="triton"
    )
    expected = _ref(inputs, weights, per_step)
    d, n, l = case.d, case.n, case.seqlen
    assert out.shape == ((l, d, n) if per_step else (d, n))
    assert out.dtype == (torch.float64 if case.dtype == torch.float64 else torch.float32)
    _close(out, expected, case.dtype)
    if per_step:
        assert (out[0] == 0).all()  # h_{-1} = 0


def test_small_blocks_cover_several_batch_and_channel_blocks() -> None:
    case = ScanCase("blocks", batch=5, d=9, n=4, seqlen=8)
    inputs, weights = _args(case)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["delta_bias"], True, weights)
    for per_step in (False, True):
        out = state_saliency_triton(*args, per_step, block_b=2, block_d=2)
        _close(out, _ref(inputs, weights, per_step), torch.float32)


def test_default_weights_are_ones() -> None:
    case = ScanCase("ones", batch=2, d=6, n=4, seqlen=7)
    inputs, _ = _args(case)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["delta_bias"], True)
    weighted = state_saliency(*args, backend="triton")
    per_step = state_saliency(*args, per_step=True, backend="triton")
    torch.testing.assert_close(weighted, per_step.sum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_full_size_layer_on_gpu() -> None:
    case = ScanCase("gpu", batch=8, d=1536, n=16, seqlen=256, dtype=torch.bfloat16)
    inputs, weights = make_inputs(case, device="cuda")[0], torch.rand(256, device="cuda")
    out = state_saliency(
        inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["delta_bias"], True,
        time_weights=weights, backend="triton",
    )  # fmt: skip
    _close(out, _ref(inputs, weights, False), case.dtype)
