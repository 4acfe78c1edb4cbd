"""The SSD torch backend (chunked scan, decode step) against the float64 oracle."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops.dispatch import BackendUnavailableError
from sparsessm_kernels.ops.ssd import SSDStateLayout, ssd_scan_ref, ssd_state_update_ref
from sparsessm_kernels.ops.ssd.dispatch import resolve_ssd_backend
from sparsessm_kernels.ops.ssd.torch_backend import _Rows
from tests.ssd_cases import CASES, SSDCase, assert_close, make_inputs, step_inputs, to_float64


def _math(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("pruned_states", ["remove", "zero_transition"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_scan_matches_reference(case: SSDCase, pruned_states: str) -> None:
    inputs = make_inputs(case)
    out, final = ssk.ssd_scan(
        **inputs,
        return_final_states=True,
        pruned_states=pruned_states,
        chunk_size=case.chunk,
        backend="torch",
    )
    ref, ref_final = ssd_scan_ref(**to_float64(inputs), return_final_states=True, pruned_states=pruned_states)
    assert out.dtype == case.dtype and out.shape == inputs["x"].shape
    assert final.dtype == _math(case.dtype) and final.shape == ref_final.shape
    assert_close(out, ref, case.dtype, f"{case.name} out")
    assert_close(final, ref_final, _math(case.dtype), f"{case.name} final_states")


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_result_does_not_depend_on_chunk_size(chunk: int) -> None:
    inputs = make_inputs(SSDCase("chunks", seqlen=29, mask="head", ngroups=2, init=True, head_prune="some"))
    ref = ssk.ssd_scan(**inputs, chunk_size=64)
    torch.testing.assert_close(ssk.ssd_scan(**inputs, chunk_size=chunk), ref, rtol=1e-5, atol=1e-5)


def test_compact_initial_states_equal_dense() -> None:
    inputs = make_inputs(SSDCase("compact_init", mask="group_uniform", ngroups=2, init=True))
    layout = SSDStateLayout(inputs["state_mask"], nheads=4, ngroups=2)
    dense = ssk.ssd_scan(**inputs)
    compact = ssk.ssd_scan(**{**inputs, "initial_states": layout.compact_state(inputs["initial_states"])})
    torch.testing.assert_close(compact, dense, rtol=0, atol=0)


def test_masks_pick_the_cheapest_rows() -> None:
    # per-group masks (and per-head masks shared within groups) slice B / C once per group
    for kind, rows in (("group", 2), ("head_shared_in_group", 2), ("head", 8)):
        mask = make_inputs(SSDCase("rows", nheads=8, ngroups=2, mask=kind))["state_mask"]
        layout = SSDStateLayout(mask, nheads=8, ngroups=2)
        assert _Rows(layout, 8, 2, 16, torch.float32, torch.device("cpu")).rows == rows, kind
    assert _Rows(None, 8, 2, 16, torch.float32, torch.device("cpu")).rows == 2


DECODE_CASES = [
    # name, mask kind, compact state, head prune, state dtype, groups
    ("dense", "none", False, "none", torch.float32, 1),
    ("dense_groups", "none", False, "none", torch.float32, 2),
    ("group_compact", "group_uniform", True, "none", torch.float32, 2),
    ("group_dense", "group", False, "none", torch.float32, 2),
    ("head_compact", "head_uniform", True, "some", torch.float32, 1),
    ("head_dense", "head", False, "some", torch.float32, 2),
    ("group_all_pruned", "group_all_pruned", False, "some", torch.float32, 2),
    ("all_pruned_compact", "all_pruned", True, "none", torch.float32, 1),
    ("fp16_state", "group_uniform", True, "some", torch.float16, 2),
    ("bf16_state", "head", False, "none", torch.bfloat16, 4),
    ("fp64", "head_uniform", True, "some", torch.float64, 2),
]


@pytest.mark.parametrize("pruned_states", ["remove", "zero_transition"])
@pytest.mark.parametrize(
    ("name", "mask", "compact", "head_prune", "state_dtype", "groups"),
    DECODE_CASES,
    ids=[c[0] for c in DECODE_CASES],
)
def test_decode_step_matches_reference(
    name: str,
    mask: str,
    compact: bool,
    head_prune: str,
    state_dtype: torch.dtype,
    groups: int,
    pruned_states: str,
) -> None:
    dtype = _math(state_dtype)
    case = SSDCase(name, seqlen=1, ngroups=groups, mask=mask, head_prune=head_prune, dtype=dtype, D="hp")
    step = step_inputs(make_inputs(case, seed=3), 0)
    b, h, p = step["x"].shape
    layout = (
        None if step["state_mask"] is None else SSDStateLayout(step["state_mask"], nheads=h, ngroups=groups)
    )
    k = layout.n_kept if compact else case.d_state
    state0 = torch.randn(b, h, p, k, generator=torch.Generator().manual_seed(5)).to(state_dtype)
    ours = state0.clone()
    out = ssk.ssd_state_update(ours, **step, pruned_states=pruned_states, backend="torch")
    ref_state = state0.double()
    ref = ssd_state_update_ref(ref_state, **to_float64(step), pruned_states=pruned_states)
    assert out.dtype == step["x"].dtype and ours.dtype == state_dtype and out.shape == (b, h, p)
    assert_close(out, ref, dtype, f"{name} out")
    assert_close(ours, ref_state, state_dtype, f"{name} state")


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("pruned_states", ["remove", "zero_transition"])
def test_decode_chain_equals_scan(compact: bool, pruned_states: str) -> None:
    case = SSDCase("chain", seqlen=11, ngroups=2, mask="group_uniform", head_prune="some", init=True, D="hp")
    inputs = make_inputs(case)
    layout = SSDStateLayout(inputs["state_mask"], nheads=4, ngroups=2)
    out, final = ssk.ssd_scan(**inputs, return_final_states=True, pruned_states=pruned_states)
    init = inputs["initial_states"]
    state = layout.compact_state(init) if compact else init.clone()
    steps = [
        ssk.ssd_state_update(
            state, **{**step_inputs(inputs, t), "state_mask": layout}, pruned_states=pruned_states
        )
        for t in range(case.seqlen)
    ]
    torch.testing.assert_close(torch.stack(steps, dim=1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layout.expand_state(state) if compact else state, final, rtol=1e-5, atol=1e-5)


def test_state_batch_indices_update_their_rows_and_skip_pads() -> None:
    case = SSDCase("pool", batch=3, seqlen=1, ngroups=2, mask="head", head_prune="some")
    step = step_inputs(make_inputs(case), 0)
    pool = torch.randn(5, 4, 8, 16, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([3, -1, 0])
    ours, ref_pool = pool.clone(), pool.double()
    out = ssk.ssd_state_update(ours, **step, state_batch_indices=idx)
    ref = ssd_state_update_ref(ref_pool, **to_float64(step), state_batch_indices=idx)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(ours[[1, 2, 4]], pool[[1, 2, 4]])
    assert_close(out, ref, torch.float32, "pool out")
    assert_close(ours, ref_pool, torch.float32, "pool state")
    none_valid = ssk.ssd_state_update(pool.clone(), **step, state_batch_indices=torch.tensor([-1, 5, 7]))
    assert torch.equal(none_valid, torch.zeros_like(none_valid))


@pytest.mark.parametrize("pad_slot_id", [None, 3])
def test_state_pool_step_does_not_sync(pad_slot_id: int | None) -> None:
    case = SSDCase("pool", batch=3, seqlen=1, ngroups=2, mask="head", head_prune="some")
    step = step_inputs(make_inputs(case), 0)
    # a raw mask: its layout is built on the first call (outside the census) and cached
    pool = torch.randn(5, 4, 8, 16, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([3, -1, 0])

    def run() -> torch.Tensor:
        return ssk.ssd_state_update(pool, **step, state_batch_indices=idx, pad_slot_id=pad_slot_id)

    run()  # layouts built outside the census
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = run()
    names = {e.name for e in prof.events()}
    assert "aten::index_select" in names  # the census saw the pool step
    assert not names & {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero"}
    if pad_slot_id == 3:
        assert torch.equal(out[0], torch.zeros_like(out[0]))


def test_gradients_match_the_reference() -> None:
    case = SSDCase("grad", batch=1, seqlen=13, nheads=4, headdim=3, ngroups=2, d_state=4, dtype=torch.float64)
    inputs = make_inputs(SSDCase(**{**case.__dict__, "mask": "head", "head_prune": "some", "init": True}))
    leaves = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
    grads = []
    for fn in (lambda **kw: ssk.ssd_scan(**kw, chunk_size=4), ssd_scan_ref):
        args = {k: (v.clone().requires_grad_(True) if k in leaves else v) for k, v in inputs.items()}
        out, final = fn(**args, return_final_states=True, pruned_states="zero_transition")
        (out.square().sum() + final.sum()).backward()
        grads.append([args[k].grad for k in leaves])
    for name, ours, ref in zip(leaves, *grads):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


def test_auto_picks_triton_on_cuda_else_torch_and_warns_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparsessm_kernels.ops import dispatch
    from sparsessm_kernels.ops.ssd import dispatch as ssd_dispatch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    statuses = {"torch": (True, ""), "triton": (True, "ok"), "cuda": (False, "not built")}
    monkeypatch.setattr(ssd_dispatch, "_statuses", lambda: statuses)
    assert resolve_ssd_backend("auto", cpu, "ssd_scan") == "torch"
    assert resolve_ssd_backend("auto", cuda, "ssd_scan") == "triton"
    for key in [k for k in dispatch._warned if k.startswith("ssd-auto")]:
        dispatch._warned.discard(key)
    with caplog.at_level(logging.WARNING, logger="sparsessm_kernels"):
        assert resolve_ssd_backend("auto", cuda, "ssd_scan", grad=True) == "torch"
        assert resolve_ssd_backend("auto", cuda, "ssd_state_update", grad=True) == "torch"
        statuses["triton"] = (False, "triton does not import")
        assert resolve_ssd_backend("auto", cuda, "ssd_scan") == "torch"
        assert resolve_ssd_backend("auto", cuda, "ssd_state_update") == "torch"
    messages = [r.message for r in caplog.records if "slow path" in r.message]
    assert len(messages) == 2 and "requires grad" in messages[0] and "does not import" in messages[1]
    assert resolve_ssd_backend("torch", cuda, "ssd_scan") == "torch"
    with pytest.raises(
        BackendUnavailableError, match="backend='triton' is not usable for ssd_scan: triton does"
    ):
        resolve_ssd_backend("triton", cuda, "ssd_scan")
    statuses["triton"] = (True, "ok")
    with pytest.raises(ValueError, match="forward-only"):
        resolve_ssd_backend("triton", cuda, "ssd_scan", grad=True)


def test_cuda_backend_says_it_has_no_ssd_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = make_inputs(SSDCase("no_kernel", seqlen=3))
    with pytest.raises(
        BackendUnavailableError,
        match=r"backend='cuda' is not usable for ssd_scan: the CUDA extension has no Mamba-2 \(SSD\) kernel.*"
        r"'torch', 'triton'",
    ):
        ssk.ssd_scan(**inputs, backend="cuda")
    step = step_inputs(inputs, 0)
    with pytest.raises(BackendUnavailableError, match=r"ssd_state_update: the CUDA extension has no"):
        ssk.ssd_state_update(torch.zeros(2, 4, 8, 16), **step, backend="cuda")
    monkeypatch.setenv("SPARSESSM_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="from SPARSESSM_BACKEND"):
        ssk.ssd_scan(**inputs)
    monkeypatch.setenv("SPARSESSM_BACKEND", "torch")
    ssk.ssd_scan(**inputs)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name in ("dense_basic", "mask_head", "bf16", "seq_idx")]
)
def test_gpu_torch_backend_matches_reference(case: SSDCase) -> None:
    inputs = make_inputs(case)
    cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    out, final = ssk.ssd_scan(**cuda, return_final_states=True, chunk_size=case.chunk)
    ref, ref_final = ssd_scan_ref(**to_float64(inputs), return_final_states=True)
    assert_close(out.cpu(), ref, case.dtype, f"{case.name} out")
    assert_close(final.cpu(), ref_final, _math(case.dtype), f"{case.name} final")


def test_readme_ssd_example_runs() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "ssk.ssd_scan" in b)
    sizes = "b, l, h, p, g, n = 1, 512, 24, 64, 1, 128"
    assert sizes in example
    namespace: dict = {}
    exec(
        compile(example.replace(sizes, "b, l, h, p, g, n = 1, 40, 8, 16, 1, 32"), "README.md", "exec"),
        namespace,
    )
    assert namespace["y"].shape == (1, 8, 16)
    assert namespace["state"].shape == (1, 8, 16, 16)
