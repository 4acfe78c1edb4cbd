"""The SparseSSM calibration statistic (``ops/saliency``): every backend against the loop reference.

``state_saliency_ref`` steps through time one state update at a time; the ``torch`` backend
(chunked, vectorised) and the ``triton`` kernel (states in registers, interpreted on a CPU) are
checked against it on the same named cases with the dtype-keyed tolerances of
``tests/scan_cases.py``, relative to the largest score (scores span orders of magnitude).
"""

from __future__ import annotations

import pytest
import torch

from sparsessm_kernels.ops import state_saliency, state_saliency_ref
from tests.backends import backend_params, use_backend
from tests.scan_cases import TOLERANCES, ScanCase, make_inputs, to_float64

BACKENDS = backend_params(["torch", "triton"])

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


def _args(case: ScanCase, device: str = "cpu") -> tuple[dict, torch.Tensor]:
    inputs, _ = make_inputs(case, device=device)
    weights = torch.rand(case.seqlen, generator=torch.Generator().manual_seed(2)).to(device)
    return inputs, weights


def _positional(inputs: dict) -> tuple:
    return tuple(inputs[k] for k in ("u", "delta", "A", "B", "delta_bias", "delta_softplus"))


def _ref(inputs: dict, weights: torch.Tensor | None, per_step: bool) -> torch.Tensor:
    x = to_float64({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()})
    w = None if weights is None else weights.cpu()
    return state_saliency_ref(*_positional(x), time_weights=w, per_step=per_step)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Scores are computed in fp32 (fp64 for fp64 inputs): that math's tolerance, relative to the
    largest score."""
    rtol, _ = TOLERANCES[torch.float64 if dtype == torch.float64 else torch.float32]
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual.double().cpu() / scale, expected / scale, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("per_step", [False, True], ids=["weighted_sum", "per_step"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_saliency_matches_reference(
    backend: str, case: ScanCase, per_step: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = use_backend(backend, monkeypatch)
    inputs, weights = _args(case, device)
    out = state_saliency(*_positional(inputs), time_weights=weights, per_step=per_step, backend=backend)
    d, n, l = case.d, case.n, case.seqlen
    assert out.shape == ((l, d, n) if per_step else (d, n))
    assert out.dtype == (torch.float64 if case.dtype == torch.float64 else torch.float32)
    _close(out, _ref(inputs, weights, per_step), case.dtype)
    if per_step:
        assert (out[0] == 0).all()  # h_{-1} = 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_weights_are_ones(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    device = use_backend(backend, monkeypatch)
    inputs, _ = _args(ScanCase("ones", batch=2, d=6, n=4, seqlen=7), device)
    weighted = state_saliency(*_positional(inputs), backend=backend)
    per_step = state_saliency(*_positional(inputs), per_step=True, backend=backend)
    torch.testing.assert_close(weighted, per_step.sum(0), rtol=1e-5, atol=1e-6)


def test_auto_on_cpu_is_the_torch_path() -> None:
    inputs, weights = _args(ScanCase("auto", batch=2, d=6, n=4, seqlen=9))
    out = state_saliency(*_positional(inputs), time_weights=weights, backend="auto")
    _close(out, _ref(inputs, weights, False), torch.float32)


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


# ------------------------------------------------------------------- backend work splitting
@pytest.mark.parametrize("per_step", [False, True], ids=["weighted_sum", "per_step"])
def test_torch_chunk_boundaries_carry_the_state(per_step: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsessm_kernels.ops.selective_scan import torch_backend as scan_torch

    monkeypatch.setattr(scan_torch, "TARGET_CHUNK_ELEMENTS", 2 * 4 * 4 * 5)  # chunks of 5 steps
    inputs, weights = _args(ScanCase("chunks", batch=2, d=4, n=4, seqlen=23))
    out = state_saliency(*_positional(inputs), time_weights=weights, per_step=per_step, backend="torch")
    _close(out, _ref(inputs, weights, per_step), torch.float32)


def test_triton_small_blocks_cover_several_batch_and_channel_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    device = use_backend("triton", monkeypatch)
    from sparsessm_kernels.ops.saliency.triton_backend import state_saliency_triton

    inputs, weights = _args(ScanCase("blocks", batch=5, d=9, n=4, seqlen=8), device)
    for per_step in (False, True):
        out = state_saliency_triton(*_positional(inputs), weights, per_step, block_b=2, block_d=2)
        _close(out, _ref(inputs, weights, per_step), torch.float32)


@pytest.mark.gpu
def test_triton_full_size_layer_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    use_backend("triton", monkeypatch)
    inputs, _ = make_inputs(
        ScanCase("gpu", batch=8, d=1536, n=16, seqlen=256, dtype=torch.bfloat16), device="cuda"
    )
    weights = torch.rand(256, device="cuda")
    out = state_saliency(*_positional(inputs), time_weights=weights, backend="triton")
    _close(out, _ref(inputs, weights, False), torch.bfloat16)
