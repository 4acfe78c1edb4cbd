"""The reference semantics, checked against independent computations.

* dense == transformers' own PyTorch fallback of the Mamba mixer (mamba_ssm semantics);
* zero_transition == the dense scan with A = -inf on pruned states;
* remove with a column mask == the dense scan on the kept states only;
* remove with a per-channel mask == channel-by-channel dense scans on the kept states;
* decode steps chained == the scan, for dense, full and compact states;
* every curated case (input-dependent and time-invariant B / C, every mask kind, both modes) ==
  the closed-form scan of ``tests/scan_oracle.py`` (no recurrence);
* a time-invariant ``(d, n)`` B / C == the same values as a grouped ``(b, g = d, n, l)`` B / C.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsessm_kernels.ops import selective_scan_ref, selective_state_update_ref
from tests.scan_cases import CASES, ScanCase, make_inputs, to_float64
from tests.scan_oracle import closed_form_scan


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


@pytest.mark.parametrize("mask_kind", ["none", "column", "2:4", "unstructured"])
@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
@pytest.mark.parametrize("compact", [False, True])
def test_decode_steps_chain_to_the_scan(mask_kind: str, pruned_states: str, compact: bool) -> None:
    if compact and mask_kind in ("none", "unstructured"):
        pytest.skip("compact states need a uniform mask")
    case = ScanCase("decode", mask=mask_kind, seqlen=6, groups=2)
    inputs, mask = make_inputs(case)
    x = to_float64(inputs)
    ref, last = selective_scan_ref(**x, return_last_state=True, state_mask=mask, pruned_states=pruned_states)
    b, d, l = x["u"].shape
    n = x["A"].shape[1]
    k = int(mask.sum(-1).max()) if mask is not None else n
    state = torch.zeros(b, d, k if compact else n, dtype=torch.float64)
    outs = []
    for t in range(l):
        outs.append(
            selective_state_update_ref(
                state,
                x["u"][..., t],
                x["delta"][..., t],
                x["A"],
                x["B"][..., t],
                x["C"][..., t],
                x["D"],
                x["z"][..., t],
                x["delta_bias"],
                True,
                state_mask=mask,
                pruned_states=pruned_states,
            )
        )
    torch.testing.assert_close(torch.stack(outs, -1), ref, rtol=1e-12, atol=1e-12)
    if compact:
        cols = mask if mask.dim() == 1 else None
        expected = (
            last[:, :, cols]
            if cols is not None
            else torch.gather(last, 2, torch.nonzero(mask)[:, 1].view(d, k).expand(b, d, k))
        )
        torch.testing.assert_close(state, expected)
    else:
        torch.testing.assert_close(state, last)


def test_decode_reference_matches_transformers_fallback() -> None:
    mamba = pytest.importorskip("transformers.models.mamba.modeling_mamba")
    fn = getattr(mamba, "mamba_selective_state_update", None)
    if fn is None:
        pytest.skip("this transformers version has no standalone mamba_selective_state_update")
    g = torch.Generator().manual_seed(1)
    b, d, n = 3, 10, 4
    state = torch.randn(b, d, n, generator=g, dtype=torch.float64)
    args = dict(
        x=torch.randn(b, d, generator=g, dtype=torch.float64),
        dt=torch.randn(b, d, generator=g, dtype=torch.float64),
        A=-torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1,
        B=torch.randn(b, n, generator=g, dtype=torch.float64),
        C=torch.randn(b, n, generator=g, dtype=torch.float64),
        D=torch.randn(d, generator=g, dtype=torch.float64),
        z=torch.randn(b, d, generator=g, dtype=torch.float64),
        dt_bias=torch.randn(d, generator=g, dtype=torch.float64),
    )
    theirs_state = state.clone()
    theirs = fn(
        theirs_state,
        args["x"],
        args["dt"],
        args["A"],
        args["B"],
        args["C"],
        args["D"],
        dt_bias=args["dt_bias"],
        dt_softplus=True,
        z=args["z"],
    )
    ours = selective_state_update_ref(state, **args, dt_softplus=True)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(state, theirs_state)


ORACLE_CASES = [c for c in CASES if c.n <= 64]


@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
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
    for ps in ("zero_transition", "remove"):
        out, state = selective_scan_ref(**x, return_last_state=True, state_mask=mask, pruned_states=ps)
        want, want_state = selective_scan_ref(
            **grouped, return_last_state=True, state_mask=mask, pruned_states=ps
        )
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state, want_state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fixed", ["B", "C", "BC"])
def test_decode_steps_with_a_time_invariant_B_chain_to_the_scan(fixed: str) -> None:
    """The decode step takes a time-invariant B / C as the zero-copy grouped view
    ``B[None].expand(b, d, n)`` (one group per channel)."""
    case = ScanCase("decode_fixed", mask="2:4", seqlen=5, fixed=fixed)
    inputs, mask = make_inputs(case)
    x = to_float64(inputs)
    ref, last = selective_scan_ref(**x, return_last_state=True, state_mask=mask)
    b, d, l = x["u"].shape

    def at(t: torch.Tensor, step: int) -> torch.Tensor:
        return t[None].expand(b, *t.shape) if t.dim() == 2 else t[..., step]

    state = torch.zeros(b, d, x["A"].shape[1], dtype=torch.float64)
    outs = [
        selective_state_update_ref(
            state, x["u"][..., t], x["delta"][..., t], x["A"], at(x["B"], t), at(x["C"], t), x["D"],
            x["z"][..., t], x["delta_bias"], True, state_mask=mask,
        )
        for t in range(l)
    ]  # fmt: skip
    torch.testing.assert_close(torch.stack(outs, -1), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, last, rtol=1e-12, atol=1e-12)
