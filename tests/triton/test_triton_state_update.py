"""Triton-only checks of the decode step: index validation, opcheck, CUDA-graph capture, full-size
GPU steps and time-invariant B / C. The per-case comparison against the reference, slot pools
with pad rows and chains against the scan run on every backend in ``tests/ops/test_state_update.py``."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout, selective_state_update_ref
from tests.scan_cases import ScanCase, assert_close, make_inputs, to_float64
from tests.step_cases import step_of

from .conftest import DEVICE, TRITON_TOLERANCES


def test_state_batch_indices_validation() -> None:
    case = ScanCase("sbi_bad", batch=2, d=8, n=4, seqlen=1)
    inputs, _ = make_inputs(case, device=DEVICE)
    state = torch.zeros(3, 8, 4, device=DEVICE)
    with pytest.raises(TypeError, match="state_batch_indices: expected int32 or int64"):
        ssk.selective_state_update(
            state, **step_of(inputs), backend="triton", state_batch_indices=torch.zeros(2, device=DEVICE)
        )
    with pytest.raises(ValueError, match=r"state_batch_indices: expected shape \(b,\)"):
        ssk.selective_state_update(
            state,
            **step_of(inputs),
            backend="triton",
            state_batch_indices=torch.zeros(3, dtype=torch.int32, device=DEVICE),
        )


def test_opcheck_state_update_on_triton() -> None:
    case = ScanCase("opcheck", batch=2, d=8, n=8, seqlen=1, mask="2:4")
    inputs, mask = make_inputs(case, device=DEVICE)
    layout = StateLayout(mask)
    step = step_of(inputs)
    args = (
        torch.randn(3, 8, layout.n_kept, device=DEVICE),
        *(step[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")),
        True,
        layout.mask,
        layout.kept_idx,
        layout.kept_count,
        "zero_transition",
        "triton",
        torch.tensor([2, -1], dtype=torch.int32, device=DEVICE),
        2,
        torch.empty(2, 8, device=DEVICE),
    )
    torch.library.opcheck(
        torch.ops.sparsessm.selective_state_update.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64, 256])
@pytest.mark.parametrize("mask_kind", ["none", "2:4"])
def test_full_size_decode_on_gpu(batch: int, mask_kind: str) -> None:
    case = ScanCase("gpu_decode", batch=batch, d=4096, n=16, seqlen=1, mask=mask_kind, dtype=torch.float32)
    inputs, mask = make_inputs(case, device="cuda")
    layout = StateLayout(mask) if mask is not None else None
    k = layout.n_kept if layout is not None else 16
    state0 = torch.randn(batch, 4096, k, device="cuda")
    step = {**step_of(inputs), "x": inputs["u"][..., 0].bfloat16(), "z": inputs["z"][..., 0].bfloat16()}
    ours = state0.clone()
    out = ssk.selective_state_update(ours, **step, state_mask=layout, backend="triton")
    ref_state = state0.clone().double()
    ref = selective_state_update_ref(ref_state, **to_float64(step), state_mask=layout)
    assert_close(out, ref, torch.bfloat16, "out", tolerances=TRITON_TOLERANCES)
    assert_close(ours, ref_state, torch.float32, "state", tolerances=TRITON_TOLERANCES)


@pytest.mark.gpu
def test_cuda_graph_capture_replays_the_decode_step() -> None:
    case = ScanCase("graph_decode", batch=8, d=512, n=16, seqlen=1, mask="2:4")
    inputs, mask = make_inputs(case, device="cuda")
    layout = StateLayout(mask)
    state = torch.randn(8, 512, layout.n_kept, device="cuda")
    expected_state = state.clone()
    expected = ssk.selective_state_update(
        expected_state, **step_of(inputs), state_mask=layout, backend="triton"
    )
    warm = state.clone()
    ssk.selective_state_update(warm, **step_of(inputs), state_mask=layout, backend="triton")
    graph = torch.cuda.CUDAGraph()
    captured_state = state.clone()
    with torch.cuda.graph(graph):
        captured = ssk.selective_state_update(
            captured_state, **step_of(inputs), state_mask=layout, backend="triton"
        )
    captured_state.copy_(state)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expected)
    torch.testing.assert_close(captured_state, expected_state)


@pytest.mark.parametrize("mask_kind", ["none", "2:4"])
def test_decode_chain_with_time_invariant_B_C(mask_kind: str) -> None:
    """Time-invariant (d, n) B / C: the scan takes them as they are, the decode step as the grouped
    view ``B[None].expand(b, d, n)`` (stride 0 over the batch, one group per channel)."""
    case = ScanCase("chain_fixed", batch=2, d=10, n=8, seqlen=6, mask=mask_kind, fixed="BC")
    inputs, mask = make_inputs(case, device=DEVICE)
    layout = StateLayout(mask) if mask is not None else None
    out, last = ssk.selective_scan(**inputs, return_last_state=True, state_mask=layout, backend="triton")
    b, d, l = inputs["u"].shape
    k = layout.n_kept if layout is not None else 8
    B_step, C_step = (inputs[name][None].expand(b, d, 8) for name in ("B", "C"))
    state = torch.zeros(b, d, k, device=DEVICE)
    steps = [
        ssk.selective_state_update(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], B_step, C_step, inputs["D"],
            inputs["z"][..., t], inputs["delta_bias"], True, state_mask=layout, backend="triton",
        )
        for t in range(l)
    ]  # fmt: skip
    torch.testing.assert_close(torch.stack(steps, -1), out, rtol=1e-5, atol=1e-5)
    full = layout.expand_state(state) if layout is not None else state
    torch.testing.assert_close(full, last, rtol=1e-5, atol=1e-5)
