"""Triton SSD decode step against the float64 oracle: dense, compact and masked dense states,
per-group and per-head masks, head transition pruning, ``state_batch_indices`` with a pad slot,
a preallocated ``out``, and a chain of steps against the scan."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops.ssd import SSDStateLayout, ssd_state_update_ref
from tests.ssd_cases import SSDCase, assert_close, make_inputs, step_inputs, to_float64

from .conftest import DEVICE, TRITON_TOLERANCES

# name, mask kind, compact state, head prune, state dtype, groups, d_state, headdim, D
STEP_CASES = [
    ("dense", "none", False, "none", torch.float32, 1, 16, 8, "h"),
    ("dense_n128_p64", "none", False, "some", torch.float32, 1, 128, 64, "hp"),
    ("dense_groups8", "none", False, "none", torch.float32, 8, 16, 4, "h"),
    ("group_compact", "group_uniform", True, "none", torch.float32, 2, 16, 8, "hp"),
    ("group_compact_n64_p32", "group_uniform", True, "some", torch.float32, 2, 64, 32, "h"),
    ("group_dense", "group", False, "some", torch.float32, 2, 16, 8, "hp"),
    ("head_compact", "head_uniform", True, "some", torch.float32, 1, 16, 8, "h"),
    ("head_dense", "head", False, "some", torch.float32, 2, 16, 8, None),
    ("group_all_pruned", "group_all_pruned", False, "some", torch.float32, 2, 16, 8, "h"),
    ("all_pruned_compact", "all_pruned", True, "none", torch.float32, 1, 16, 8, "h"),
    ("fp16_state", "group_uniform", True, "some", torch.float16, 2, 16, 8, "h"),
    ("bf16_state", "head", False, "none", torch.bfloat16, 2, 16, 8, "h"),
    ("fp64", "head_uniform", True, "some", torch.float64, 2, 16, 8, "hp"),
]


def _to(inputs: dict) -> dict:
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


@pytest.mark.parametrize("pruned_states", ["remove", "zero_transition"])
@pytest.mark.parametrize(
    ("name", "mask", "compact", "head_prune", "state_dtype", "groups", "n", "p", "D"),
    STEP_CASES,
    ids=[c[0] for c in STEP_CASES],
)
def test_step_matches_reference(
    name, mask, compact, head_prune, state_dtype, groups, n, p, D, pruned_states
) -> None:
    if mask == "none" and pruned_states == "zero_transition":
        pytest.skip("pruned_states only matters with a mask")
    dtype = torch.float64 if state_dtype == torch.float64 else torch.float32
    nheads = 16 if groups == 8 else 4
    case = SSDCase(
        name, batch=3, seqlen=1, nheads=nheads, headdim=p, ngroups=groups, d_state=n, mask=mask,
        head_prune=head_prune, dtype=dtype, D=D, dt_limit=(0.0, 2.0),
    )  # fmt: skip
    step = step_inputs(make_inputs(case, seed=3), 0)
    b, h, _ = step["x"].shape
    layout = (
        None if step["state_mask"] is None else SSDStateLayout(step["state_mask"], nheads=h, ngroups=groups)
    )
    k = layout.n_kept if compact else n
    state0 = torch.randn(b, h, p, k, generator=torch.Generator().manual_seed(5)).to(state_dtype)
    if layout is not None and not compact:  # pruned entries of a dense state hold garbage on entry
        state0 = state0 + 100 * (~layout.head_mask)[None, :, None, :].to(state_dtype)
    ours = state0.clone().to(DEVICE)
    out = ssk.ssd_state_update(ours, **_to(step), pruned_states=pruned_states, backend="triton")
    ref_state = state0.double()
    ref = ssd_state_update_ref(ref_state, **to_float64(step), pruned_states=pruned_states)
    assert out.dtype == step["x"].dtype and ours.dtype == state_dtype and out.shape == (b, h, p)
    assert_close(out.cpu(), ref, dtype, f"{name} out", TRITON_TOLERANCES)
    assert_close(ours.cpu(), ref_state, state_dtype, f"{name} state", TRITON_TOLERANCES)


@pytest.mark.parametrize("compact", [False, True])
def test_state_batch_indices_pad_slot_and_out(compact: bool) -> None:
    case = SSDCase("pool", batch=4, seqlen=1, ngroups=2, mask="group_uniform", head_prune="some", D="hp")
    step = step_inputs(make_inputs(case), 0)
    layout = SSDStateLayout(step["state_mask"], nheads=4, ngroups=2)
    k = layout.n_kept if compact else 16
    pool = layout.compact_state(torch.randn(6, 4, 8, 16, generator=torch.Generator().manual_seed(1)))
    pool = pool if compact else layout.expand_state(pool)
    idx = torch.tensor([3, 5, -1, 0], dtype=torch.int32)  # 5 is the pad slot (a real row)
    ours, ref_pool = pool.clone().to(DEVICE), pool.double()
    out = torch.full((4, 4, 8), 7.0, device=DEVICE)
    got = ssk.ssd_state_update(
        ours, **_to(step), state_batch_indices=idx.to(DEVICE), pad_slot_id=5, out=out, backend="triton"
    )
    ref = ssd_state_update_ref(ref_pool, **to_float64(step), state_batch_indices=idx, pad_slot_id=5)
    assert got is out and ours.shape[-1] == k
    assert torch.equal(out[1:3].cpu(), torch.zeros(2, 4, 8))
    assert torch.equal(ours[[1, 2, 4, 5]].cpu(), pool[[1, 2, 4, 5]])
    assert_close(out.cpu(), ref, torch.float32, "pool out", TRITON_TOLERANCES)
    assert_close(ours.cpu(), ref_pool, torch.float32, "pool state", TRITON_TOLERANCES)
    # the torch backend follows the same pad rule
    torch_pool = pool.clone()
    torch_out = ssk.ssd_state_update(
        torch_pool, **step, state_batch_indices=idx, pad_slot_id=5, backend="torch"
    )
    assert_close(torch_out, ref, torch.float32, "torch pool out")


def test_chain_of_steps_equals_scan() -> None:
    case = SSDCase("chain", seqlen=6, ngroups=2, mask="group_uniform", head_prune="some", init=True, D="hp")
    inputs = make_inputs(case)
    layout = SSDStateLayout(inputs["state_mask"], nheads=4, ngroups=2)
    out, final = ssk.ssd_scan(**inputs, return_final_states=True, backend="torch")
    state = layout.compact_state(inputs["initial_states"]).to(DEVICE)
    steps = [
        ssk.ssd_state_update(state, **_to({**step_inputs(inputs, t), "state_mask": layout}), backend="triton")
        for t in range(case.seqlen)
    ]
    torch.testing.assert_close(torch.stack(steps, dim=1).cpu(), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layout.expand_state(state).cpu(), final, rtol=1e-5, atol=1e-5)
