"""torch.library registration: opcheck, torch.compile(fullgraph=True), backend dispatch."""

from __future__ import annotations

import logging

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout
from sparsessm_kernels.ops.dispatch import BackendUnavailableError, resolve_backend
from tests.scan_cases import ScanCase, make_inputs


def _layout_args(mask: torch.Tensor | None) -> tuple:
    """``(mask, kept_idx, kept_count)`` as the public ops pass them to the registered op."""
    if mask is None:
        return None, None, None
    layout = StateLayout(mask)
    return layout.mask, layout.kept_idx, layout.kept_count


def _step_args(inputs: dict) -> tuple:
    """``(x, dt, A, B, C, D, z, dt_bias)`` of one decode step: timestep 0 of scan inputs."""
    return (
        inputs["u"][..., 0],
        inputs["delta"][..., 0],
        inputs["A"],
        inputs["B"][..., 0],
        inputs["C"][..., 0],
        inputs["D"],
        inputs["z"][..., 0],
        inputs["delta_bias"],
    )


def _scan_args(inputs: dict, mask: torch.Tensor | None, return_last_state: bool = True) -> tuple:
    return (
        inputs["u"],
        inputs["delta"],
        inputs["A"],
        inputs["B"],
        inputs["C"],
        inputs["D"],
        inputs["z"],
        inputs["delta_bias"],
        True,
        return_last_state,
        *_layout_args(mask),
        "zero_transition",
        "torch",
    )


@pytest.mark.parametrize("mask_kind", ["none", "column", "2:4"])
@pytest.mark.parametrize("return_last_state", [True, False])
def test_opcheck_selective_scan(mask_kind: str, return_last_state: bool) -> None:
    inputs, mask = make_inputs(ScanCase("opcheck", d=8, n=8, seqlen=5, mask=mask_kind))
    torch.library.opcheck(
        torch.ops.sparsessm.selective_scan.default, _scan_args(inputs, mask, return_last_state)
    )


@pytest.mark.parametrize(
    "case",
    [
        ScanCase("time_invariant_B_C", d=8, n=8, seqlen=5, mask="2:4", fixed="BC"),
        ScanCase("time_invariant_C_grouped_B", d=8, n=8, seqlen=5, fixed="C", groups=2),
        ScanCase("float64", d=8, n=8, seqlen=5, mask="column", dtype=torch.float64),
        ScanCase("empty_batch", batch=0, d=8, n=8, seqlen=5),
    ],
    ids=lambda c: c.name,
)
@pytest.mark.parametrize("return_last_state", [True, False])
def test_opcheck_selective_scan_more_layouts(case: ScanCase, return_last_state: bool) -> None:
    inputs, mask = make_inputs(case)
    torch.library.opcheck(
        torch.ops.sparsessm.selective_scan.default, _scan_args(inputs, mask, return_last_state)
    )


@pytest.mark.parametrize("mask_kind", ["none", "2:4"])
def test_opcheck_selective_state_update(mask_kind: str) -> None:
    inputs, mask = make_inputs(ScanCase("opcheck", d=8, n=8, seqlen=1, mask=mask_kind))
    k = 4 if mask is not None else 8
    state = torch.randn(2, 8, k)
    args = (
        state,
        *_step_args(inputs),
        True,
        *_layout_args(mask),
        "zero_transition",
        "torch",
        None,
        None,
        torch.empty(2, 8),
    )
    torch.library.opcheck(torch.ops.sparsessm.selective_state_update.default, args)


def test_compile_fullgraph_traces_without_graph_breaks() -> None:
    inputs, mask = make_inputs(ScanCase("compile", mask="2:4", seqlen=9))
    layout = StateLayout(mask)

    def layer(u, delta, A, B, C, D, z, delta_bias):
        out, last = ssk.selective_scan(u, delta, A, B, C, D, z, delta_bias, True, True, state_mask=layout)
        return out * 2, last

    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out, last = compiled(*args)
    ref_out, ref_last = layer(*args)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(last, ref_last)


def test_compile_fullgraph_decode_step() -> None:
    inputs, mask = make_inputs(ScanCase("compile_step", mask="column", seqlen=1))
    layout = StateLayout(mask)
    state = torch.zeros(2, inputs["u"].shape[1], layout.n_kept)

    def step(state, x, dt, A, B, C):
        return ssk.selective_state_update(state, x, dt, A, B, C, dt_softplus=True, state_mask=layout)

    args = (
        inputs["u"][..., 0],
        inputs["delta"][..., 0],
        inputs["A"],
        inputs["B"][..., 0],
        inputs["C"][..., 0],
    )
    eager_state = state.clone()
    expected = step(eager_state, *args)
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(state, *args)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(state, eager_state)


def test_available_backends_reports_reasons() -> None:
    backends = ssk.available_backends()
    assert set(backends) == {"torch", "triton", "cuda"}
    assert backends["torch"][0] is True
    for usable, reason in backends.values():
        assert isinstance(usable, bool) and reason


def test_unknown_backend_is_rejected() -> None:
    inputs, _ = make_inputs(ScanCase("bad_backend", seqlen=2))
    with pytest.raises(ValueError, match=r"backend: expected one of .* got 'fast'"):
        ssk.selective_scan(**inputs, backend="fast")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_unusable_backend_says_why(backend: str) -> None:
    usable, _ = ssk.available_backends()[backend]
    if usable:
        pytest.skip(f"{backend} is usable here")
    inputs, _ = make_inputs(ScanCase("no_backend", seqlen=2))
    with pytest.raises(BackendUnavailableError, match=backend):
        ssk.selective_scan(**inputs, backend=backend)


def test_auto_picks_torch_on_cpu_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setenv("SPARSESSM_BACKEND", "torch")
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setenv("SPARSESSM_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        resolve_backend("auto", torch.device("cpu"))


def test_auto_on_cuda_without_kernels_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    from sparsessm_kernels.ops import dispatch

    if any(dispatch.available_backends()[b][0] for b in ("triton", "cuda")):
        pytest.skip("a GPU backend is usable here")
    dispatch._warned.discard("auto-torch-on-cuda")
    with caplog.at_level(logging.WARNING, logger="sparsessm_kernels"):
        assert resolve_backend("auto", torch.device("cuda")) == "torch"
        assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert sum("slow path" in r.message for r in caplog.records) == 1


def test_chunk_override_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, _ = make_inputs(ScanCase("chunk_env", seqlen=3))
    monkeypatch.setenv("SPARSESSM_TORCH_CHUNK", "zero")
    with pytest.raises(ValueError, match="SPARSESSM_TORCH_CHUNK"):
        ssk.selective_scan(**inputs)


def test_ops_without_a_cuda_kernel_never_resolve_to_cuda() -> None:
    for op, what in (("selective_state_update", "decode-step"), ("state_saliency", "calibration")):
        with pytest.raises(BackendUnavailableError, match=what):
            resolve_backend("cuda", torch.device("cuda"), op=op)
    with pytest.raises(BackendUnavailableError, match="float64"):
        resolve_backend("cuda", torch.device("cuda"), float64=True)


# --------------------------------------------------------------------- eager fast path
def test_plain_eager_fast_path_is_taken_only_when_safe() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sparsessm_kernels.ops.library import plain_eager

    t = torch.randn(2, 3)
    assert plain_eager(t, None, torch.nn.Parameter(torch.randn(3), requires_grad=False))
    leaf = torch.randn(3, requires_grad=True)
    assert not plain_eager(t, leaf)  # autograd: keep the registered op
    with torch.no_grad():
        assert plain_eager(t, leaf)
    with FakeTensorMode():
        assert not plain_eager(torch.empty(2))  # a dispatch mode is active
    seen = []

    def probe(x):
        seen.append(plain_eager(x))
        return x + 1

    torch.compile(probe, fullgraph=True, backend="aot_eager")(t)
    assert seen == [False]  # traced by dynamo: the op path
    torch.func.vmap(probe)(t)
    torch.jit.trace(probe, (t,), check_trace=False)
    with torch.autograd.forward_ad.dual_level():
        probe(t)
    assert seen == [False] * 4  # vmap, jit.trace, forward AD: the op path
    assert plain_eager(t)  # and back to plain eager afterwards


def test_fast_path_matches_the_registered_ops_exactly() -> None:
    inputs, mask = make_inputs(ScanCase("fast", mask="2:4", seqlen=13))
    layout = StateLayout(mask)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, last = ssk.selective_scan(*args, True, True, state_mask=layout)
    ref_out, ref_last = torch.ops.sparsessm.selective_scan(*_scan_args(inputs, mask))
    assert torch.equal(out, ref_out) and torch.equal(last, ref_last)

    d, n = inputs["A"].shape
    state = torch.randn(2, d, n)
    state_ref = state.clone()
    step = _step_args(inputs)
    y = ssk.selective_state_update(state, *step, True, state_mask=layout)
    y_ref = torch.empty_like(y)
    torch.ops.sparsessm.selective_state_update(
        state_ref, *step, True, *_layout_args(mask), "zero_transition", "torch", None, None, y_ref
    )
    assert torch.equal(y, y_ref) and torch.equal(state, state_ref)


def test_raw_mask_layout_is_built_once_per_mask_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw mask passed on every call is validated and turned into a layout once, not per call."""
    from sparsessm_kernels.ops import layout as layout_mod

    built = []
    real_init = layout_mod.StateLayout.__init__

    def counting_init(self, mask):
        built.append(tuple(mask.shape))
        real_init(self, mask)

    monkeypatch.setattr(layout_mod.StateLayout, "__init__", counting_init)
    d, n = 6, 4
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(1, d, 5, generator=g), torch.randn(1, d, 5, generator=g)
    A = -torch.rand(d, n, generator=g) - 0.5
    B, C = torch.randn(1, n, 5, generator=g), torch.randn(1, n, 5, generator=g)
    mask = torch.rand(d, n, generator=g) > 0.5
    first = ssk.selective_scan(u, delta, A, B, C, state_mask=mask)
    for _ in range(3):
        assert torch.equal(ssk.selective_scan(u, delta, A, B, C, state_mask=mask), first)
    assert len(built) == 1
    mask[0] = ~mask[0]  # an in-place change is seen: the layout is rebuilt
    changed = ssk.selective_scan(u, delta, A, B, C, state_mask=mask)
    assert len(built) == 2 and not torch.equal(changed, first)
    want = ssk.selective_scan(u, delta, A, B, C, state_mask=mask.clone())  # a new tensor: a new layout
    assert len(built) == 3 and torch.equal(changed, want)
    key = (id(mask), ())
    del mask
    import gc

    gc.collect()
    assert key not in layout_mod._RAW_MASK_LAYOUTS  # freed masks leave the cache


def test_build_plan_derives_mask_kind_k_and_feedthrough_once() -> None:
    from sparsessm_kernels.ops.plan import MASK_CHANNEL, MASK_COLUMN, MASK_DENSE, build_plan

    dense = build_plan("torch", 8, "zero_transition", True, torch.float32)
    assert (dense.mask_kind, dense.k, dense.pruned, dense.feedthrough) == (MASK_DENSE, 8, False, False)
    col = StateLayout(torch.tensor([True, False, True, False]))
    tables = (col.mask, col.kept_idx, col.kept_count)
    plan = build_plan("torch", 4, "zero_transition", False, torch.float32, *tables)
    assert (plan.mask_kind, plan.k, plan.pruned, plan.feedthrough) == (MASK_COLUMN, 2, True, True)
    removed = build_plan("torch", 4, "remove", False, torch.float32, *tables)
    assert removed.pruned and not removed.feedthrough
    full = StateLayout(torch.ones(4, dtype=torch.bool))
    kept_all = build_plan("torch", 4, "zero_transition", False, torch.float32, full.mask, full.kept_idx, None)
    assert not kept_all.pruned and not kept_all.feedthrough
    chan = StateLayout(torch.tensor([[True, False], [True, True], [False, False]]))
    plan = build_plan(
        "torch", 2, "zero_transition", False, torch.float32, chan.mask, chan.kept_idx, chan.kept_count
    )
    assert (plan.mask_kind, plan.k, plan.feedthrough) == (MASK_CHANNEL, 2, True)
    with pytest.raises(ValueError, match="kept_idx"):
        build_plan("torch", 4, "zero_transition", False, torch.float32, col.mask, None, None)
    with pytest.raises(ValueError, match="kept_count"):
        build_plan("torch", 2, "zero_transition", False, torch.float32, chan.mask, chan.kept_idx, None)


def test_plans_are_built_once_per_layer_and_shape_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation and planning run on the first call of a shape class; later calls reuse the plan
    (a raw mask's after its layout is cached), and a new shape, mask or backend gets a new one."""
    import importlib

    # ops.selective_scan is the function; the package of the op is reached by its module name
    scan_pkg = importlib.import_module("sparsessm_kernels.ops.selective_scan")
    step_pkg = importlib.import_module("sparsessm_kernels.ops.state_update")

    built = []
    for pkg, name in ((scan_pkg, "check_scan_inputs"), (step_pkg, "check_state_update_inputs")):
        real = getattr(pkg, name)

        def counting(*args, real=real, name=name, **kwargs):
            built.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(pkg, name, counting)
    scan_pkg._PLANS.clear()
    step_pkg._PLANS.clear()
    g = torch.Generator().manual_seed(0)
    u, A, B = (
        torch.randn(2, 6, 5, generator=g),
        -torch.rand(6, 4, generator=g),
        torch.randn(2, 4, 5, generator=g),
    )
    mask = torch.rand(6, 4, generator=g) > 0.5
    for _ in range(3):
        ssk.selective_scan(u, u, A, B, B, state_mask=mask)
    assert built.count("check_scan_inputs") == 2  # the raw mask's layout is cached after the first
    ssk.selective_scan(u[:1], u[:1], A, B[:1], B[:1], state_mask=mask)
    assert built.count("check_scan_inputs") == 3  # a new shape class
    mask.logical_not_()  # an in-place change: a new layout, a new plan
    ssk.selective_scan(u, u, A, B, B, state_mask=mask)
    assert built.count("check_scan_inputs") == 4
    state = torch.zeros(2, 6, 4)
    for _ in range(3):
        ssk.selective_state_update(state, u[..., 0], u[..., 0], A, B[..., 0], B[..., 0], backend="torch")
    assert built.count("check_state_update_inputs") == 1
    ssk.selective_state_update(state, u[..., 0], u[..., 0], A, B[..., 0], B[..., 0], backend="auto")
    assert built.count("check_state_update_inputs") == 2
    with pytest.raises(ValueError, match="x: expected"):  # a bad call is still validated in full
        ssk.selective_state_update(state, u[..., :2, 0], u[..., 0], A, B[..., 0], B[..., 0], backend="torch")
