"""Triton SSD scan (chunked, sparse states) against the float64 oracle over the named cases of
``tests/ssd_cases.py`` (batch 1 where the batch adds nothing, to keep the interpreter fast)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops.ssd import SSDStateLayout, ssd_scan_ref
from tests.ssd_cases import CASES, SSDCase, assert_close, make_inputs, to_float64

from .conftest import DEVICE, TRITON_TOLERANCES

# (case name, pruned_states): every size the issue names (l = 1, l crossing chunks, n 16 / 64 / 128,
# headdim 32 / 64, groups 1 / 8), each mask kind, head pruning, seq_idx and every dtype
SCAN_CASES = [
    ("dense_basic", "remove"),
    ("l1", "remove"),
    ("l_crosses_chunk", "remove"),
    ("l_shorter_than_chunk", "remove"),
    ("chunk_1", "remove"),
    ("n64", "remove"),
    ("n128", "remove"),
    ("headdim32", "remove"),
    ("headdim64", "remove"),
    ("groups8", "remove"),
    ("D_per_dim", "remove"),
    ("no_optionals", "remove"),
    ("initial_states", "remove"),
    ("dt_limit", "remove"),
    ("mask_group", "zero_transition"),
    ("mask_group_uniform", "remove"),
    ("mask_head", "zero_transition"),
    ("mask_head_uniform", "remove"),
    ("mask_group_all_pruned", "zero_transition"),
    ("mask_all_pruned", "zero_transition"),
    ("head_prune", "remove"),
    ("head_prune_mask_head", "zero_transition"),
    ("head_prune_all", "remove"),
    ("seq_idx", "remove"),
    ("seq_idx_init_mask", "zero_transition"),
    ("groups8_mask_head_prune", "zero_transition"),
    ("fp16", "zero_transition"),
    ("bf16", "remove"),
    ("bf16_headdim64_n128", "remove"),
    ("fp64", "zero_transition"),
]
_BY_NAME = {c.name: c for c in CASES}
_KEEP_BATCH = ("l1", "seq_idx", "seq_idx_init_mask")  # cases whose second row tests something


def _case(name: str) -> SSDCase:
    case = _BY_NAME[name]
    if name not in _KEEP_BATCH:
        case = dataclasses.replace(case, batch=1)
    if name.startswith("groups8"):
        case = dataclasses.replace(case, seqlen=min(case.seqlen, 17))
    return case


def _to(inputs: dict) -> dict:
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def _math(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize(("name", "pruned_states"), SCAN_CASES, ids=[f"{n}-{m}" for n, m in SCAN_CASES])
def test_scan_matches_reference(name: str, pruned_states: str) -> None:
    case = _case(name)
    inputs = make_inputs(case)
    out, final = ssk.ssd_scan(
        **_to(inputs), return_final_states=True, pruned_states=pruned_states, chunk_size=case.chunk,
        backend="triton",
    )  # fmt: skip
    ref, ref_final = ssd_scan_ref(**to_float64(inputs), return_final_states=True, pruned_states=pruned_states)
    assert out.dtype == case.dtype and out.shape == inputs["x"].shape
    assert final.dtype == _math(case.dtype) and final.shape == ref_final.shape
    assert_close(out.cpu(), ref, case.dtype, f"{name} out", TRITON_TOLERANCES)
    assert_close(final.cpu(), ref_final, _math(case.dtype), f"{name} final_states", TRITON_TOLERANCES)


def test_several_row_and_column_blocks_and_compact_initial_states() -> None:
    # chunks of 32 in row blocks of 16 (the in-chunk loop runs over several blocks) and headdim 20 in
    # column blocks of 16; compact initial states; no final state asked for
    from sparsessm_kernels.ops.ssd.dispatch import _tables
    from sparsessm_kernels.ops.ssd.triton_scan import SSDScanConfig, ssd_scan_triton

    case = SSDCase("blocks", batch=1, seqlen=45, headdim=20, ngroups=2, mask="group_uniform", init=True)
    inputs = make_inputs(case)
    layout = SSDStateLayout(inputs["state_mask"], nheads=4, ngroups=2)
    ref, ref_final = ssd_scan_ref(**to_float64(inputs), return_final_states=True)
    dev = _to(inputs)
    compact = layout.compact_state(dev["initial_states"])
    config = SSDScanConfig(chunk=32, block_m=16, block_p=16, num_warps=4)
    for init, final_wanted in ((compact, True), (dev["initial_states"], False)):
        out, final = ssd_scan_triton(
            dev["x"], dev["dt"], dev["A"], dev["B"], dev["C"], dev["D"], dev["z"], dev["dt_bias"], True,
            (0.0, float("inf")), init, final_wanted, None, *_tables(layout, dev["x"].device), None, "remove",
            config=config,
        )  # fmt: skip
        assert_close(out.cpu(), ref, torch.float32, "blocks out", TRITON_TOLERANCES)
        assert (final is None) != final_wanted
        if final_wanted:
            assert_close(final.cpu(), ref_final, torch.float32, "blocks final", TRITON_TOLERANCES)


def test_decode_continues_the_triton_scan() -> None:
    case = SSDCase("prefill_then_decode", batch=2, seqlen=20, ngroups=2, mask="group_uniform", D="hp")
    inputs = make_inputs(case)
    layout = SSDStateLayout(inputs["state_mask"], nheads=4, ngroups=2)
    dev = _to({**inputs, "state_mask": layout})
    prefix = {k: v[:, :19] if k in ("x", "dt", "B", "C", "z") else v for k, v in dev.items()}
    _, final = ssk.ssd_scan(**prefix, return_final_states=True, backend="triton")
    state = layout.compact_state(final)
    step = {
        k: (v[:, 19] if k in ("x", "dt", "B", "C", "z") else v)
        for k, v in dev.items()
        if k != "initial_states"
    }
    y = ssk.ssd_state_update(state, **step, backend="triton")
    ref = ssd_scan_ref(**to_float64(inputs))[:, 19]
    assert_close(y.cpu(), ref, torch.float32, "decode after prefill", TRITON_TOLERANCES)
