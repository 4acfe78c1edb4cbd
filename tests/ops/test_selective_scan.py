"""The selective scan (``ops/selective_scan``): its reference semantics, then every backend on the
named cases of ``tests/scan_cases.py`` against the float64 reference.

Reference, checked against independent computations:

* dense == transformers' own PyTorch fallback of the Mamba mixer (mamba_ssm semantics);
* zero_transition == the dense scan with A = -inf on pruned states;
* remove with a column mask == the dense scan on the kept states only;
* remove with a per-channel mask == channel-by-channel dense scans on the kept states;
* every named case (input-dependent and time-invariant B / C, every mask kind, both modes) ==
  the closed-form scan of ``tests/scan_oracle.py`` (no recurrence);
* a time-invariant ``(d, n)`` B / C == the same values as a grouped ``(b, g = d, n, l)`` B / C.

Backends (``tests/backends.py``): ``torch`` (chunked, through the public op), ``triton`` (the
kernels with 16 channels and 32 timesteps per program, interpreted on a CPU), ``cuda`` (GPU, built
extension) and ``cuda_emulated`` (the CUDA kernels compiled for the CPU, ``RUN_CUDA_BUILD_TESTS=1``),
each with the dtype-keyed tolerances of ``tests/scan_cases.py``. Launch-configuration sweeps and
kernel internals stay with their backend: ``tests/triton/test_triton_scan.py``,
``tests/test_cuda_backend.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout, selective_scan_ref
from tests.backends import backend_param, backend_params, tolerances, use_backend
from tests.scan_cases import CASES, ScanCase, assert_close, backend_args, make_inputs, to_float64
from tests.scan_oracle import closed_form_scan

MODES = ("zero_transition", "remove")


# ---------------------------------------------------------------------------------- reference
def _hf_scan():
    mamba = pytest.importorskip("transformers.models.mamba.modeling_mamba")
    fn = getattr(mamba, "mamba_selective_scan", None)
    if fn is None:
        pytest.skip("this transformers version has no standalone mamba_selective_scan")
    return fn


@pytest.mark.parametrize(
    "case",
    [
        ScanCase("basic"),
        ScanCase("l1", seqlen=1),
        ScanCase("odd", d=7, n=3, seqlen=11),
        ScanCase("no_optionals", with_D=False, with_z=False, with_bias=False, softplus=False),
    ],
    ids=lambda c: c.name,
)
def test_dense_reference_matches_transformers_fallback(case: ScanCase) -> None:
    hf_scan = _hf_scan()
    inputs, _ = make_inputs(case)
    x = to_float64(inputs)
    ours, ours_state = selective_scan_ref(**x, return_last_state=True)
    theirs, their_state = hf_scan(
        x["u"],
        x["delta"],
        x["A"],
        x["B"],
        x["C"],
        D=x["D"],
        z=x["z"],
        delta_bias=x["delta_bias"],
        delta_softplus=x["delta_softplus"],
        return_last_state=True,
    )
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours_state, their_state.to(ours_state.dtype), rtol=1e-10, atol=1e-10)


def test_dense_reference_math_is_float32_and_output_in_input_dtype() -> None:
    inputs, _ = make_inputs(ScanCase("half", dtype=torch.float16))
    out, state = selective_scan_ref(**inputs, return_last_state=True)
    assert out.dtype == torch.float16 and state.dtype == torch.float32
    out64 = selective_scan_ref(**to_float64(inputs))
    torch.testing.assert_close(out.double(), out64, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("mask_kind", ["column", "unstructured", "2:4", "empty_channel"])
def test_zero_transition_equals_dense_with_minus_inf(mask_kind: str) -> None:
    inputs, mask = make_inputs(ScanCase("zt", mask=mask_kind))
    x = to_float64(inputs)
    sparse, sparse_state = selective_scan_ref(**x, return_last_state=True, state_mask=mask)
    full = mask if mask.dim() == 2 else mask[None].expand_as(x["A"])
    A_inf = x["A"].masked_fill(~full, float("-inf"))
    dense, dense_state = selective_scan_ref(**{**x, "A": A_inf}, return_last_state=True)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sparse_state, dense_state * full, rtol=1e-12, atol=1e-12)
    assert (sparse_state[:, ~full] == 0).all()


def test_zero_transition_minus_remove_is_the_feedthrough() -> None:
    case = ScanCase("ft", mask="unstructured", with_D=False, with_z=False)
    inputs, mask = make_inputs(case)
    x = to_float64(inputs)
    zt = selective_scan_ref(**x, state_mask=mask, pruned_states="zero_transition")
    rm = selective_scan_ref(**x, state_mask=mask, pruned_states="remove")
    delta = F.softplus(x["delta"] + x["delta_bias"][:, None])
    bc = x["B"] * x["C"]  # (b, n, l)
    feedthrough = torch.einsum("dn,bnl->bdl", (~mask).double(), bc) * delta * x["u"]
    torch.testing.assert_close(zt - rm, feedthrough, rtol=1e-10, atol=1e-10)


def test_remove_column_equals_dense_on_kept_states() -> None:
    inputs, mask = make_inputs(ScanCase("rm_col", mask="column"))
    x = to_float64(inputs)
    sparse, state = selective_scan_ref(**x, return_last_state=True, state_mask=mask, pruned_states="remove")
    kept = {**x, "A": x["A"][:, mask], "B": x["B"][:, mask], "C": x["C"][:, mask]}
    dense, dense_state = selective_scan_ref(**kept, return_last_state=True)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[:, :, mask], dense_state, rtol=1e-12, atol=1e-12)
    assert (state[:, :, ~mask] == 0).all()


def test_remove_per_channel_equals_channelwise_dense_scans() -> None:
    inputs, mask = make_inputs(ScanCase("rm_ch", mask="empty_channel", d=6, seqlen=9))
    x = to_float64(inputs)
    sparse = selective_scan_ref(**x, state_mask=mask, pruned_states="remove")
    for ch in range(x["u"].shape[1]):
        keep = mask[ch]
        sl = slice(ch, ch + 1)
        one = {
            **x,
            "u": x["u"][:, sl],
            "delta": x["delta"][:, sl],
            "z": x["z"][:, sl],
            "A": x["A"][sl][:, keep],
            "B": x["B"][:, keep],
            "C": x["C"][:, keep],
            "D": x["D"][sl],
            "delta_bias": x["delta_bias"][sl],
        }
        if keep.any():
            expected = selective_scan_ref(**one)
        else:  # nothing recurs: only the D skip and the gate remain
            expected = one["u"] * one["D"][:, None] * F.silu(one["z"])
        torch.testing.assert_close(sparse[:, sl], expected, rtol=1e-12, atol=1e-12)


ORACLE_CASES = [c for c in CASES if c.n <= 64]


@pytest.mark.parametrize("pruned_states", MODES)
@pytest.mark.parametrize("case", ORACLE_CASES, ids=lambda c: c.name)
def test_reference_matches_the_closed_form(case: ScanCase, pruned_states: str) -> None:
    inputs, mask = make_inputs(case)
    x = to_float64(inputs)
    out, state = selective_scan_ref(**x, return_last_state=True, state_mask=mask, pruned_states=pruned_states)
    want, want_state = closed_form_scan(**x, state_mask=mask, pruned_states=pruned_states)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, want_state, rtol=1e-10, atol=1e-10)


def as_grouped(t: torch.Tensor, b: int, l: int) -> torch.Tensor:
    """A time-invariant (d, n) B / C materialised as grouped (b, g = d, n, l): one group per channel."""
    return t[None, :, :, None].repeat(b, 1, 1, l) if t.dim() == 2 else t


@pytest.mark.parametrize("case", [c for c in CASES if c.fixed], ids=lambda c: c.name)
def test_time_invariant_equals_one_group_per_channel(case: ScanCase) -> None:
    inputs, mask = make_inputs(case)
    x = to_float64(inputs)
    b, _, l = x["u"].shape
    grouped = {**x, "B": as_grouped(x["B"], b, l), "C": as_grouped(x["C"], b, l)}
    for ps in MODES:
        out, state = selective_scan_ref(**x, return_last_state=True, state_mask=mask, pruned_states=ps)
        want, want_state = selective_scan_ref(
            **grouped, return_last_state=True, state_mask=mask, pruned_states=ps
        )
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state, want_state, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ every backend, named cases
# "remove" on Triton for a few mask kinds only (the interpreter is slow): its launch-configuration
# sweep (tests/triton/test_triton_scan.py) runs both modes on every mask kind.
TRITON_REMOVE_TOO = ("column_mask", "nm_2_4_mask", "unstructured_sparse_gather_path", "channel_with_no_state")


def _modes(backend: str, case: ScanCase) -> tuple[str, ...]:
    if backend == "triton" and case.name not in TRITON_REMOVE_TOO:
        return ("zero_transition",)
    return MODES


def _named_case_params() -> list:
    params = []
    for backend in ("torch", "triton", "cuda", "cuda_emulated"):
        for case in CASES:
            if backend.startswith("cuda") and case.dtype == torch.float64:
                continue  # the CUDA kernels refuse float64 (tests/test_cuda_backend.py)
            for ps in _modes(backend, case):
                params.append(backend_param(backend, case, ps, id=f"{backend}-{case.name}-{ps}"))
    return params


def _run_backend(backend: str, case: ScanCase, inputs: dict, mask, pruned_states: str, device: str, mp):
    """``(out, last_state)`` of ``backend`` on the inputs, moved to ``device``."""
    if backend == "torch":  # the public op with the raw mask, chunked as the case says
        if case.chunk is not None:
            mp.setenv("SPARSESSM_TORCH_CHUNK", str(case.chunk))
        return ssk.selective_scan(
            **inputs, return_last_state=True, state_mask=mask, pruned_states=pruned_states, backend="torch"
        )
    dev_inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    layout = None if mask is None else StateLayout(mask).to(device)
    args = backend_args(dev_inputs, layout, pruned_states, "triton" if backend == "triton" else "cuda")
    if backend == "triton":
        from sparsessm_kernels.ops.selective_scan.triton_backend import ScanConfig, selective_scan_triton

        # 16 channels per program: d = 24, 37 and 300 end in a partial block, groups of 8 or 12
        # channels are gathered per channel; chunks of 32 (or the case's own): l = 17, 33, 40, 41 cross
        return selective_scan_triton(*args, config=ScanConfig(16, case.chunk or 32, 4))
    from sparsessm_kernels.ops.selective_scan.cuda_backend import selective_scan_cuda

    return selective_scan_cuda(*args)


def check_against_reference(
    backend: str, case: ScanCase, out, state, inputs: dict, mask, pruned_states: str
) -> None:
    """``out`` (and ``state`` unless None) against the float64 reference, with the backend's tolerances."""
    ref, ref_state = selective_scan_ref(
        **to_float64({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}),
        return_last_state=True,
        state_mask=None if mask is None else mask.cpu(),
        pruned_states=pruned_states,
    )
    tols = tolerances(backend)
    assert out.dtype == inputs["u"].dtype and out.shape == inputs["u"].shape
    assert_close(out.cpu(), ref, case.dtype, f"{backend} {case.name} out", tolerances=tols)
    if state is not None:
        state_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
        assert state.dtype == state_dtype and state.shape == ref_state.shape
        assert_close(
            state.cpu(), ref_state, state_dtype, f"{backend} {case.name} last_state", tolerances=tols
        )


@pytest.mark.parametrize(("backend", "case", "pruned_states"), _named_case_params())
def test_named_case_matches_reference(
    backend: str, case: ScanCase, pruned_states: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = use_backend(backend, monkeypatch)
    inputs, mask = make_inputs(case)
    out, state = _run_backend(backend, case, inputs, mask, pruned_states, device, monkeypatch)
    check_against_reference(backend, case, out, state, inputs, mask, pruned_states)


# ------------------------------------------------------------ every backend, the public op
@pytest.mark.parametrize("mask_kind", ["unstructured", "2:4"])
@pytest.mark.parametrize("backend", backend_params(["torch", "triton"]))
def test_strided_inputs_and_no_last_state(
    backend: str, mask_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs as transformers passes them (B and C transposes of (b, l, n) tensors, z a chunk view,
    u strided) through the public op, which then returns only ``out``."""
    device = use_backend(backend, monkeypatch)
    case = ScanCase("strided", batch=2, d=12, n=8, seqlen=20, mask=mask_kind)
    inputs, mask = make_inputs(case, device=device)
    strided = {
        **inputs,
        "B": inputs["B"].transpose(1, 2).contiguous().transpose(1, 2),
        "C": inputs["C"].transpose(1, 2).contiguous().transpose(1, 2),
        "z": torch.cat([inputs["z"], inputs["z"]], dim=1)[:, : case.d],
        "u": inputs["u"].transpose(1, 2).contiguous().transpose(1, 2),
    }
    assert not strided["B"].is_contiguous() and not strided["z"].is_contiguous()
    out = ssk.selective_scan(**strided, state_mask=mask, backend=backend)
    assert isinstance(out, torch.Tensor)
    check_against_reference(backend, case, out, None, inputs, mask, "zero_transition")


@pytest.mark.parametrize("mask_kind", ["none", "column", "2:4"])
@pytest.mark.parametrize("backend", backend_params(["torch", "triton"]))
def test_empty_batch(backend: str, mask_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    device = use_backend(backend, monkeypatch)
    case = ScanCase("empty", batch=0, d=12, n=8, seqlen=20, mask=mask_kind)
    inputs, mask = make_inputs(case, device=device)
    out, state = ssk.selective_scan(**inputs, return_last_state=True, state_mask=mask, backend=backend)
    assert out.shape == (0, 12, 20) and state.shape == (0, 12, 8)


# --------------------------------------------------------------------------- torch backend
def test_prebuilt_layout_equals_raw_mask() -> None:
    inputs, mask = make_inputs(ScanCase("layout", mask="2:4"))
    a = ssk.selective_scan(**inputs, state_mask=mask)
    b = ssk.selective_scan(**inputs, state_mask=StateLayout(mask))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_case_masks_exercise_both_per_channel_paths() -> None:
    from sparsessm_kernels.ops.selective_scan.torch_backend import MASKED_DENSE_FRACTION

    ks = {}
    for kind in ("unstructured", "unstructured_sparse", "2:4"):
        _, mask = make_inputs(ScanCase("paths", mask=kind))
        ks[kind] = StateLayout(mask).n_kept / mask.shape[1]
    assert ks["unstructured"] > MASKED_DENSE_FRACTION  # masked-dense path
    assert ks["unstructured_sparse"] <= MASKED_DENSE_FRACTION  # gather path, unequal counts
    assert ks["2:4"] <= MASKED_DENSE_FRACTION  # gather path, uniform counts


def test_scratch_arena_survives_switching_inference_mode() -> None:
    inputs, mask = make_inputs(ScanCase("modes", mask="column"))
    with torch.inference_mode():
        inside = ssk.selective_scan(**inputs, state_mask=mask)
    outside = ssk.selective_scan(**inputs, state_mask=mask)
    with torch.inference_mode():
        again = ssk.selective_scan(**inputs, state_mask=mask)
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
    torch.testing.assert_close(again, outside, rtol=0, atol=0)
