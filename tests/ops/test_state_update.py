"""The decode step (``selective_state_update``) on every backend against the float64 reference.

One file for the op: each test is parametrized over the backends (``torch``, and ``triton``,
compiled on a GPU or run by Triton's CPU interpreter) over the named cases of
``tests/step_cases.py`` with the dtype-keyed tolerances of ``tests/scan_cases.py``: dense and
compact states, a slot pool with pad rows and ``pad_slot_id``, a preallocated ``out``, chains of
steps against the scan, and, for the torch backend, no host sync and ``torch.compile``.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels import compat
from sparsessm_kernels.ops import StateLayout, selective_state_update_ref
from tests.scan_cases import ScanCase, assert_close, make_inputs, to_float64
from tests.step_cases import (
    BACKENDS,
    DECODE_CASES,
    DEVICE,
    POOL_CASES,
    DecodeCase,
    PoolCase,
    decode_setup,
    pool_setup,
    require_backend,
    tolerances,
)

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return request.param


@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("groups", [0, 2])
def test_step_matches_reference(backend: str, case: DecodeCase, pruned_states: str, groups: int) -> None:
    if case.mask == "none" and pruned_states == "remove":
        pytest.skip("pruned_states only matters with a mask")
    step, mask, state0, dtype = decode_setup(case, groups, DEVICE)
    ours = state0.clone()
    out = ssk.selective_state_update(
        ours, **step, state_mask=mask, pruned_states=pruned_states, backend=backend
    )
    ref_state = state0.clone().double()
    ref = selective_state_update_ref(
        ref_state, **to_float64(step), state_mask=mask, pruned_states=pruned_states
    )
    assert out.dtype == step["x"].dtype and ours.dtype == case.state_dtype
    tol = tolerances(backend)
    assert_close(out, ref, dtype, f"{case.name} out", tolerances=tol)
    assert_close(ours, ref_state, case.state_dtype, f"{case.name} state", tolerances=tol)


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_slot_pool_skips_pad_rows(backend: str, case: PoolCase) -> None:
    """Rows whose index is outside ``[0, S)`` or equals ``pad_slot_id`` are skipped: output 0 (also
    in a preallocated ``out`` holding garbage), their state rows untouched; so are rows of the pool
    no batch row addresses. The valid rows equal a plain step on the gathered rows."""
    step, layout, state0, sbi, skipped, untouched = pool_setup(case, DEVICE)
    ref_state = state0.clone().double()
    ref = selective_state_update_ref(
        ref_state,
        **to_float64(step),
        state_mask=layout,
        state_batch_indices=sbi,
        pad_slot_id=case.pad_slot_id,
    )
    ours = state0.clone()
    out = torch.full_like(step["x"], float("nan")) if case.with_out else None
    got = ssk.selective_state_update(
        ours, **step, state_mask=layout, backend=backend, state_batch_indices=sbi,
        pad_slot_id=case.pad_slot_id, out=out,
    )  # fmt: skip
    if case.with_out:
        assert got is out
    tol = tolerances(backend)
    assert_close(got, ref, torch.float32, f"{case.name} out", tolerances=tol)
    assert_close(ours, ref_state, torch.float32, f"{case.name} state", tolerances=tol)
    assert (got[skipped] == 0).all()
    assert torch.equal(ours[untouched], state0[untouched])
    valid = [i for i in range(sbi.shape[0]) if i not in skipped]
    rows = torch.tensor(valid, device=DEVICE)
    plain_state = state0[sbi[rows].long()].clone()
    plain = ssk.selective_state_update(
        plain_state, **{k: (v[rows] if k in ("x", "dt", "B", "C", "z") else v) for k, v in step.items()},
        state_mask=layout, backend=backend,
    )  # fmt: skip
    torch.testing.assert_close(plain, got[rows])
    torch.testing.assert_close(plain_state, ours[sbi[rows].long()])


@pytest.mark.parametrize(
    "case", [c for c in DECODE_CASES if c.name in ("dense", "nm_2_4_compact", "fp64")], ids=str
)
def test_out_is_written_and_returned(backend: str, case: DecodeCase) -> None:
    step, mask, state0, _ = decode_setup(case, 0, DEVICE)
    expected = ssk.selective_state_update(state0.clone(), **step, state_mask=mask, backend=backend)
    out = torch.full_like(step["x"], float("nan"))
    state = state0.clone()
    got = ssk.selective_state_update(state, **step, state_mask=mask, backend=backend, out=out)
    assert got is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_pad_slot_id_without_indices_has_no_effect(backend: str) -> None:
    step, _, state0, _ = decode_setup(DECODE_CASES[0], 0, DEVICE)
    plain = ssk.selective_state_update(state0.clone(), **step, backend=backend)
    padded = ssk.selective_state_update(state0.clone(), **step, backend=backend, pad_slot_id=0)
    torch.testing.assert_close(padded, plain, rtol=0, atol=0)


CHAINS = [
    ScanCase("chain_2_4", mask="2:4", seqlen=12, groups=0),
    *(
        ScanCase(f"chain_{m}_g2", batch=2, d=10, n=8, seqlen=7, mask=m, groups=2)
        for m in ("none", "column", "2:4")
    ),
]


@pytest.mark.parametrize("case", CHAINS, ids=lambda c: c.name)
def test_steps_chain_to_the_scan(backend: str, case: ScanCase) -> None:
    """Steps from a zero state (compact for a mask) reproduce the same backend's scan."""
    inputs, mask = make_inputs(case, device=DEVICE)
    layout = StateLayout(mask) if mask is not None else None
    out, last = ssk.selective_scan(**inputs, return_last_state=True, state_mask=layout, backend=backend)
    b, d, l = inputs["u"].shape
    state = torch.zeros(b, d, layout.n_kept if layout is not None else case.n, device=DEVICE)
    steps = [
        ssk.selective_state_update(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t],
            inputs["C"][..., t], inputs["D"], inputs["z"][..., t], inputs["delta_bias"], True,
            state_mask=layout, backend=backend,
        )
        for t in range(l)
    ]  # fmt: skip
    torch.testing.assert_close(torch.stack(steps, -1), out, rtol=1e-5, atol=1e-5)
    full = layout.expand_state(state) if layout is not None else state
    torch.testing.assert_close(full, last, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- the torch backend only
def _census(fn) -> Counter:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return Counter(e.name for e in prof.events())


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_torch_backend_slot_pool_does_not_sync(case: PoolCase) -> None:
    step, layout, state0, sbi, _, _ = pool_setup(case, "cpu")
    out = torch.empty_like(step["x"]) if case.with_out else None

    def run() -> None:
        ssk.selective_state_update(
            state0, **step, state_mask=layout, backend="torch", state_batch_indices=sbi,
            pad_slot_id=case.pad_slot_id, out=out,
        )  # fmt: skip

    run()  # plans and layouts built outside the census
    census = _census(run)
    assert census["aten::index_select"] >= 1  # the census saw the step
    assert not {op: census[op] for op in SYNC_OPS if census[op]}


def test_compile_fullgraph_slot_pool_with_pad_and_out() -> None:
    case = POOL_CASES[-1]
    step, layout, state0, sbi, _, _ = pool_setup(case, "cpu")

    def layer(state, out, sbi, x, dt, B, C, z):
        kw = {**step, "x": x, "dt": dt, "B": B, "C": C, "z": z}
        y = ssk.selective_state_update(
            state, **kw, state_mask=layout, backend="torch", state_batch_indices=sbi,
            pad_slot_id=case.pad_slot_id, out=out,
        )  # fmt: skip
        return y * 2

    args = (sbi, step["x"], step["dt"], step["B"], step["C"], step["z"])
    eager_state, eager_out = state0.clone(), torch.empty_like(step["x"])
    expected = layer(eager_state, eager_out, *args)
    compiled_state, compiled_out = state0.clone(), torch.empty_like(step["x"])
    got = torch.compile(layer, fullgraph=True, backend="aot_eager")(compiled_state, compiled_out, *args)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close(compiled_state, eager_state)


def test_opcheck_with_pool_pad_and_out() -> None:
    step, layout, state0, sbi, _, _ = pool_setup(POOL_CASES[-1], "cpu")
    args = (
        state0.clone(), *(step[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")), True,
        layout.mask, layout.kept_idx, layout.kept_count, "zero_transition", "torch", sbi,
        POOL_CASES[-1].pad_slot_id, torch.empty_like(step["x"]),
    )  # fmt: skip
    torch.library.opcheck(torch.ops.sparsessm.selective_state_update.default, args)


def test_compat_passes_pad_slot_id_and_out() -> None:
    """``compat.selective_state_update`` takes vLLM's keyword-only ``pad_slot_id`` and ``out``."""
    case = POOL_CASES[-1]
    step, layout, state0, sbi, _, _ = pool_setup(case, "cpu")
    ref_state = state0.clone()
    ref = ssk.selective_state_update(
        ref_state, **step, state_mask=layout, state_batch_indices=sbi, pad_slot_id=case.pad_slot_id
    )
    state, out = state0.clone(), torch.empty_like(step["x"])
    args = [step[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
    got = compat.selective_state_update(
        state, *args, True, sbi, state_mask=layout, pad_slot_id=case.pad_slot_id, out=out
    )
    assert got is out
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(state, ref_state, rtol=0, atol=0)


def test_bad_pad_slot_id_and_out_are_named() -> None:
    step, _, state0, _ = decode_setup(DECODE_CASES[0], 0)
    with pytest.raises(TypeError, match=r"pad_slot_id: expected None or an int, got 1\.0"):
        ssk.selective_state_update(state0, **step, pad_slot_id=1.0)
    with pytest.raises(ValueError, match=r"out: expected shape \(b, d\) like x = \(3, 20\), got \(3, 19\)"):
        ssk.selective_state_update(state0, **step, out=torch.empty(3, 19))
    with pytest.raises(TypeError, match=r"out: expected dtype torch\.float32"):
        ssk.selective_state_update(state0, **step, out=torch.empty(3, 20, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"out: expected a torch\.Tensor"):
        ssk.selective_state_update(state0, **step, out=[0.0])
    with pytest.raises(TypeError, match="pad_slot_id"):
        selective_state_update_ref(state0, **step, pad_slot_id="0")
