"""mamba_ssm's ``tests/ops/test_selective_scan.py`` parametrization, on CPU, against ``compat``.

mamba_ssm checks its ``selective_scan_fn`` and ``mamba_inner_fn`` against its own reference on a
GPU. The same parametrization runs here (forward only: the ops have no backward) against
independent oracles: the closed-form scan of ``tests/scan_oracle.py`` for ``selective_scan_fn``,
and a step-by-step float64 pipeline (explicit causal convolution, projections, the reference scan)
for ``mamba_inner_fn``, with mamba_ssm's tolerances. Sizes are mamba_ssm's except the sequence
lengths of ``selective_scan_fn`` (short, odd and mamba_ssm's shortest, 128). Departures, all
deliberate:

* real weights only: mamba_ssm's complex ``A`` (``wtype=complex64``) raises ``TypeError`` here;
* grouped B / C next to a time-invariant other one, which mamba_ssm skips as not applicable to its
  CUDA kernel, runs here (each of B and C may be time-invariant independently, at any groups).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sparsessm_kernels import compat
from sparsessm_kernels.ops import selective_scan_ref
from tests.scan_oracle import closed_form_scan

# mamba_ssm's (rtol, atol) per input dtype
MAMBA_SSM_TOLERANCES = {
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}
SEQLENS = (8, 33, 8, 33, 8, 33, 8, 128)  # cycled through the flag combinations (the oracle is O(l^2))
FLAGS = list(itertools.product([False, True], repeat=5))  # has_D, has_z, has_delta_bias, softplus, last


def _scan_inputs(
    is_variable_B: bool, is_variable_C: bool, groups: int, seqlen: int, itype: torch.dtype, seed: int
) -> dict:
    """mamba_ssm's test inputs: batch 2, dim 4, dstate 8; a time-invariant B / C is float32."""
    g = torch.Generator().manual_seed(seed)
    batch, dim, dstate = 2, 4, 8

    def bc(variable: bool) -> torch.Tensor:
        if not variable:
            return torch.randn(dim, dstate, generator=g)
        shape = (batch, dstate, seqlen) if groups == 1 else (batch, groups, dstate, seqlen)
        return torch.randn(*shape, generator=g).to(itype)

    return {
        "A": -0.5 * torch.rand(dim, dstate, generator=g),
        "B": bc(is_variable_B),
        "C": bc(is_variable_C),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, seqlen, generator=g).to(itype),
        "delta_bias": 0.5 * torch.rand(dim, generator=g),
        "u": torch.randn(batch, dim, seqlen, generator=g).to(itype),
        "delta": (0.5 * torch.rand(batch, dim, seqlen, generator=g)).to(itype),
    }


def run_scan_grid(
    is_variable_B: bool,
    is_variable_C: bool,
    varBC_groups: int,
    itype: torch.dtype,
    combos: list[tuple[int, tuple[bool, ...]]],
    backend: str = "auto",
) -> None:
    """mamba_ssm's checks of ``selective_scan_fn`` for the flag ``combos`` (``(i, flags)`` pairs
    of ``enumerate(FLAGS)``), against the closed-form oracle with mamba_ssm's tolerances."""
    rtol, atol = MAMBA_SSM_TOLERANCES[itype]
    for i, (has_D, has_z, has_bias, softplus, last) in combos:
        seqlen = SEQLENS[i % len(SEQLENS)]
        t = _scan_inputs(is_variable_B, is_variable_C, varBC_groups, seqlen, itype, seed=i)
        D, z, bias = (
            t["D"] if has_D else None,
            t["z"] if has_z else None,
            t["delta_bias"] if has_bias else None,
        )
        args = (t["u"], t["delta"], t["A"], t["B"], t["C"], D, z, bias, softplus, last)
        result = compat.selective_scan_fn(*args, backend=backend)
        out, state = result if last else (result, None)
        want, want_state = closed_form_scan(*args[:-1])
        what = f"D={has_D} z={has_z} bias={has_bias} softplus={softplus} l={seqlen}"
        assert out.dtype == itype and out.shape == t["u"].shape, what
        torch.testing.assert_close(
            out.double(), want, rtol=rtol, atol=atol, msg=lambda m, what=what: f"{what}: {m}"
        )
        if last:
            assert state.dtype == torch.float32 and state.shape == (2, 4, 8), what
            torch.testing.assert_close(state.double(), want_state, rtol=rtol, atol=atol)


@pytest.mark.parametrize("itype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("varBC_groups", [1, 2])
@pytest.mark.parametrize("is_variable_C", [False, True])
@pytest.mark.parametrize("is_variable_B", [False, True])
def test_selective_scan(
    is_variable_B: bool, is_variable_C: bool, varBC_groups: int, itype: torch.dtype
) -> None:
    """mamba_ssm's grid over has_D, has_z, has_delta_bias, delta_softplus and return_last_state
    inside one test per (B, C, groups, dtype): every combination in float32, every third in the
    16-bit dtypes (each flag still both on and off; keeps the CPU run short); sequence lengths cycle.
    (The Triton backend runs the same grid: ``tests/triton/test_triton_compat_port.py``.)"""
    combos = list(enumerate(FLAGS))
    run_scan_grid(
        is_variable_B, is_variable_C, varBC_groups, itype, combos if itype == torch.float32 else combos[::3]
    )


def test_selective_scan_complex_weights_are_refused() -> None:
    """mamba_ssm's ``wtype=complex64`` cases: real SSMs only here, with a clear error."""
    t = _scan_inputs(True, True, 1, 8, torch.float32, seed=0)
    A = torch.complex(t["A"], t["A"])
    with pytest.raises(TypeError, match=r"A: complex tensors are not supported"):
        compat.selective_scan_fn(t["u"], t["delta"], A, t["B"], t["C"])
    B = torch.complex(torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(TypeError, match=r"B: complex tensors are not supported"):
        compat.selective_scan_fn(t["u"], t["delta"], t["A"], B, t["C"])


# ------------------------------------------------------------------------------ mamba_inner_fn
def _inner_inputs(is_variable_B: bool, is_variable_C: bool, seqlen: int) -> dict:
    """mamba_ssm's test_mamba_inner_fn inputs (dim 768, dstate 8, dt_rank 48, conv width 3)."""
    torch.manual_seed(0)
    batch, dim, dstate, dt_rank = 2, 768, 8, 48
    return {
        "xz": torch.randn(batch, 2 * dim, seqlen),
        "conv1d_weight": torch.randn(dim, 1, 3),
        "conv1d_bias": torch.randn(dim),
        "x_proj_weight": torch.randn(dt_rank + (int(is_variable_B) + int(is_variable_C)) * dstate, dim),
        "delta_proj_weight": torch.randn(dim, dt_rank),
        "out_proj_weight": torch.randn(dim // 2, dim),
        "out_proj_bias": None,
        "A": -0.5 * torch.rand(dim, dstate),
        "B": None if is_variable_B else torch.randn(dim, dstate),
        "C": None if is_variable_C else torch.randn(dim, dstate),
        "D": torch.randn(dim),
        "delta_bias": 0.5 * torch.rand(dim),
    }


def _inner_reference(t: dict) -> torch.Tensor:
    """Float64, written out step by step: causal depthwise convolution as a sum over its taps,
    SiLU, x_proj rows ``[dt_rank | B | C]`` (only the input-dependent ones), dt_proj, the reference
    scan with softplus, out_proj."""
    f = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
    x, z = f["xz"].chunk(2, dim=1)
    l = x.shape[-1]
    w = f["conv1d_weight"][:, 0]  # (d, width)
    width = w.shape[1]
    padded = F.pad(x, (width - 1, 0))
    conv = sum(w[:, k, None] * padded[..., k : k + l] for k in range(width)) + f["conv1d_bias"][:, None]
    x = conv * torch.sigmoid(conv)
    x_dbl = torch.einsum("rd,bdl->brl", f["x_proj_weight"], x)  # (b, rows, l)
    r, n = f["delta_proj_weight"].shape[1], f["A"].shape[1]
    delta = torch.einsum("dr,brl->bdl", f["delta_proj_weight"], x_dbl[:, :r])
    rows = iter(x_dbl[:, r + i * n : r + (i + 1) * n] for i in range(2))
    B = f["B"] if f["B"] is not None else next(rows)
    C = f["C"] if f["C"] is not None else next(rows)
    y = selective_scan_ref(x, delta, f["A"], B, C, f["D"], z, f["delta_bias"], True)
    return torch.einsum("ed,bdl->ble", f["out_proj_weight"], y)


def run_mamba_inner(is_variable_B: bool, is_variable_C: bool, backend: str = "auto") -> None:
    """mamba_ssm's ``test_mamba_inner_fn`` check (forward), against the float64 pipeline."""
    rtol, atol = MAMBA_SSM_TOLERANCES[torch.float32]
    t = _inner_inputs(is_variable_B, is_variable_C, seqlen=128)
    out = compat.mamba_inner_fn(
        t["xz"], t["conv1d_weight"], t["conv1d_bias"], t["x_proj_weight"], t["delta_proj_weight"],
        t["out_proj_weight"], t["out_proj_bias"], t["A"], t["B"], t["C"], t["D"],
        delta_bias=t["delta_bias"], delta_softplus=True, backend=backend,
    )  # fmt: skip
    assert out.shape == (2, 128, 384)
    # mamba_ssm's unscaled random weights give outputs of about 1e6, where float32 rounding alone
    # exceeds an absolute 2e-3 (mamba_ssm compares with a float32 reference that rounds the same
    # way); so its tolerances apply to the output in units of its RMS.
    want = _inner_reference(t)
    rms = want.square().mean().sqrt()
    torch.testing.assert_close(out.double() / rms, want / rms, rtol=rtol, atol=atol)


@pytest.mark.parametrize("is_variable_C", [False, True])
@pytest.mark.parametrize("is_variable_B", [False, True])
def test_mamba_inner_fn(is_variable_B: bool, is_variable_C: bool) -> None:
    run_mamba_inner(is_variable_B, is_variable_C)


def test_mamba_inner_fn_complex_A_is_refused() -> None:
    t = _inner_inputs(True, True, seqlen=8)
    A = torch.complex(t["A"], t["A"])
    with pytest.raises(TypeError, match=r"A: complex tensors are not supported"):
        compat.mamba_inner_fn(
            t["xz"], t["conv1d_weight"], t["conv1d_bias"], t["x_proj_weight"], t["delta_proj_weight"],
            t["out_proj_weight"], None, A,
        )  # fmt: skip
