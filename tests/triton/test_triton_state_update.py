"""Triton decode step against the float64 reference: dense and compact states, in place,
``state_batch_indices`` with pad rows, and a chain of steps against the Triton scan."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout, selective_state_update_ref
from tests.scan_cases import ScanCase, assert_close, make_inputs, to_float64
from tests.step_cases import DECODE_CASES, DecodeCase, decode_setup, step_of

from .conftest import DEVICE, TRITON_TOLERANCES


@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("groups", [0, 2])
def test_decode_step_matches_reference(case: DecodeCase, pruned_states: str, groups: int) -> None:
    if case.mask == "none" and pruned_states == "remove":
        pytest.skip("pruned_states only matters with a mask")
    step, mask, state0, dtype = decode_setup(case, groups, DEVICE)
    name, state_dtype = case.name, case.state_dtype
    ours = state0.clone()
    out = ssk.selective_state_update(
        ours, **step, state_mask=mask, pruned_states=pruned_states, backend="triton"
    )
    ref_state = state0.clone().double()
    ref = selective_state_update_ref(
        ref_state, **to_float64(step), state_mask=mask, pruned_states=pruned_states
    )
    assert out.dtype == step["x"].dtype and ours.dtype == state_dtype
    assert_close(out, ref, dtype, f"{name} out", tolerances=TRITON_TOLERANCES)
    assert_close(ours, ref_state, state_dtype, f"{name} state", tolerances=TRITON_TOLERANCES)


@pytest.mark.parametrize("compact", [False, True], ids=["dense_state", "compact_state"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_state_batch_indices_with_pad_rows(compact: bool, index_dtype: torch.dtype) -> None:
    """Rows whose index is -1 or >= S are skipped: output 0, state untouched; other rows of the
    state (not addressed by any batch row) are untouched too. All backends agree."""
    case = ScanCase("sbi", batch=5, d=12, n=8, seqlen=1, mask="2:4" if compact else "none")
    inputs, mask = make_inputs(case, seed=4, device=DEVICE)
    layout = StateLayout(mask) if mask is not None else None
    k = layout.n_kept if compact else 8
    S = 7
    state0 = torch.randn(S, 12, k, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    sbi = torch.tensor([5, -1, 0, 7, 2], dtype=index_dtype, device=DEVICE)
    step = step_of(inputs)
    ref_state = state0.clone().double()
    ref = selective_state_update_ref(
        ref_state, **to_float64(step), state_mask=layout, state_batch_indices=sbi
    )
    for backend in ("triton", "torch"):
        ours = state0.clone()
        out = ssk.selective_state_update(
            ours, **step, state_mask=layout, backend=backend, state_batch_indices=sbi
        )
        assert_close(out, ref, torch.float32, f"{backend} out", tolerances=TRITON_TOLERANCES)
        assert_close(ours, ref_state, torch.float32, f"{backend} state", tolerances=TRITON_TOLERANCES)
        assert (out[1] == 0).all() and (out[3] == 0).all()
        untouched = [1, 3, 4, 6]
        assert torch.equal(ours[untouched], state0[untouched])
    # valid rows equal a plain step on the gathered rows
    rows = torch.tensor([0, 2, 4])
    plain_state = state0[sbi[rows].long()].clone()
    plain = ssk.selective_state_update(
        plain_state, **{k_: (v[rows] if k_ in ("x", "dt", "B", "C", "z") else v) for k_, v in step.items()},
        state_mask=layout, backend="triton",
    )  # fmt: skip
    torch.testing.assert_close(plain, out[rows.to(DEVICE)])


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


@pytest.mark.parametrize("mask_kind", ["none", "column", "2:4"])
def test_decode_chain_equals_triton_scan(mask_kind: str) -> None:
    case = ScanCase("chain", batch=2, d=10, n=8, seqlen=7, mask=mask_kind, groups=2)
    inputs, mask = make_inputs(case, device=DEVICE)
    layout = StateLayout(mask) if mask is not None else None
    out, last = ssk.selective_scan(**inputs, return_last_state=True, state_mask=layout, backend="triton")
    b, d, l = inputs["u"].shape
    k = layout.n_kept if layout is not None else 8
    state = torch.zeros(b, d, k, device=DEVICE)
    steps = []
    for t in range(l):
        steps.append(
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
                backend="triton",
            )
        )
    torch.testing.assert_close(torch.stack(steps, -1), out, rtol=1e-5, atol=1e-5)
    full = layout.expand_state(state) if layout is not None else state
    torch.testing.assert_close(full, last, rtol=1e-5, atol=1e-5)


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
