"""The decode-step reference, checked against independent computations.

* decode steps chained == the scan, for dense, full and compact states;
* the step == transformers' own PyTorch fallback of the Mamba decode step;
* a time-invariant ``(d, n)`` B / C given to the step as a grouped view chains to the same scan.

The scan reference's own checks are in ``tests/ops/test_selective_scan.py``.
"""

from __future__ import annotations

import pytest
import torch

from sparsessm_kernels.ops import selective_scan_ref, selective_state_update_ref
from tests.scan_cases import ScanCase, make_inputs, to_float64


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
