"""Mamba-2 entry points of sparsessm_kernels.compat: mamba_chunk_scan_combined and the multi-head
layout of selective_state_update, with mamba_ssm 2.x's signatures."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from sparsessm_kernels import compat
from sparsessm_kernels.ops.ssd import SSDStateLayout, ssd_scan_ref, ssd_state_update_ref
from tests.ssd_cases import SSDCase, assert_close, make_inputs, step_inputs, to_float64

INF = float("inf")

# mamba_ssm/ops/triton/ssd_combined.py
MAMBA_CHUNK_SCAN_COMBINED = [
    ("x", None), ("dt", None), ("A", None), ("B", None), ("C", None), ("chunk_size", None), ("D", None),
    ("z", None), ("dt_bias", None), ("initial_states", None), ("seq_idx", None), ("cu_seqlens", None),
    ("dt_softplus", False), ("dt_limit", (0.0, INF)), ("return_final_states", False),
    ("return_varlen_states", False), ("state_dtype", None),
]  # fmt: skip


def test_mamba_chunk_scan_combined_signature() -> None:
    params = inspect.signature(compat.mamba_chunk_scan_combined).parameters.values()
    positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    got = [(p.name, None if p.default is inspect.Parameter.empty else p.default) for p in positional]
    assert got == MAMBA_CHUNK_SCAN_COMBINED
    assert all(p.default is inspect.Parameter.empty for p in positional[:6])
    keyword_only = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == ["state_mask", "pruned_states", "head_transition_mask", "backend"]
    assert "mamba_chunk_scan_combined" in compat.__all__


def _positional(t: dict, chunk: int = 16, final: bool = True) -> tuple:
    return (
        t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, t["D"], t["z"], t["dt_bias"], t["initial_states"],
        t.get("seq_idx"), None, t["dt_softplus"], t.get("dt_limit", (0.0, INF)), final,
    )  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        SSDCase("compat_dense", seqlen=37, ngroups=2, init=True, D="hp"),
        SSDCase("compat_mask", seqlen=20, ngroups=2, mask="group", head_prune="some", seq_idx=True),
        SSDCase("compat_bf16", dtype=torch.bfloat16, dt_limit=(0.01, 0.5)),
    ],
    ids=lambda c: c.name,
)
def test_mamba_chunk_scan_combined_matches_reference(case: SSDCase) -> None:
    t = make_inputs(case)
    kw = {"state_mask": t["state_mask"], "head_transition_mask": t["head_transition_mask"]}
    out, final = compat.mamba_chunk_scan_combined(*_positional(t), **kw)
    ref, ref_final = ssd_scan_ref(**to_float64(t), return_final_states=True)
    assert out.dtype == case.dtype and final.dtype == t["C"].dtype  # mamba_ssm: states in C.dtype
    assert_close(out, ref, case.dtype, "out")
    assert_close(final, ref_final, case.dtype, "final_states")
    only_out = compat.mamba_chunk_scan_combined(*_positional(t, final=False), **kw)
    torch.testing.assert_close(only_out, out, rtol=0, atol=0)
    as_f64 = compat.mamba_chunk_scan_combined(*_positional(t), state_dtype=torch.float64, **kw)[1]
    assert as_f64.dtype == torch.float64


def test_mamba_chunk_scan_combined_varlen_states_are_refused_and_cu_seqlens_ignored() -> None:
    t = make_inputs(SSDCase("varlen", batch=1, seqlen=9))
    args = _positional(t)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with pytest.raises(
        ValueError, match=r"return_varlen_states: .* not supported .* got return_varlen_states=True"
    ):
        compat.mamba_chunk_scan_combined(*args[:11], cu, *args[12:], True)
    # as in mamba_ssm, cu_seqlens is only read for the varlen states
    with_cu = compat.mamba_chunk_scan_combined(*args[:11], cu, *args[12:])
    without = compat.mamba_chunk_scan_combined(*args)
    torch.testing.assert_close(with_cu, without, rtol=0, atol=0)


# ---------------------------------------------------------------- multi-head selective_state_update


def _mamba2_step_args(step: dict, headdim: int, d_state: int) -> tuple:
    """What mamba_ssm's Mamba2.step passes: A, dt, dt_bias, D repeated over the head dim (stride 0)."""
    b, h = step["dt"].shape
    return (
        step["x"],
        step["dt"][..., None].expand(b, h, headdim),
        step["A"][:, None, None].expand(h, headdim, d_state),
        step["B"],
        step["C"],
        step["D"][:, None].expand(h, headdim),
        step["z"],
        step["dt_bias"][:, None].expand(h, headdim),
    )


@pytest.mark.parametrize("softplus", [True, False])
def test_tied_multi_head_step_is_the_ssd_step_without_dt_clamp(softplus: bool) -> None:
    case = SSDCase("tied", seqlen=1, ngroups=2, softplus=softplus)
    step = step_inputs(make_inputs(case), 0)
    if not softplus:
        step["dt"] = step["dt"] - 0.5  # negative dt: mamba_ssm's step does not clamp it
    state0 = torch.randn(2, 4, 8, 16)
    ours = state0.clone()
    out = compat.selective_state_update(ours, *_mamba2_step_args(step, 8, 16), softplus)
    ref_state = state0.double()
    ref = ssd_state_update_ref(
        ref_state, **{**to_float64(step), "dt_softplus": softplus}, dt_limit=(-INF, INF)
    )
    assert out.shape == (2, 4, 8)
    assert_close(out, ref, torch.float32, "out")
    assert_close(ours, ref_state, torch.float32, "state")


def test_tied_multi_head_step_takes_ssd_masks_compact_states_and_head_pruning() -> None:
    case = SSDCase("tied_mask", seqlen=1, ngroups=2, mask="group_uniform", head_prune="some")
    step = step_inputs(make_inputs(case), 0)
    layout = SSDStateLayout(step["state_mask"], nheads=4, ngroups=2)
    state0 = layout.compact_state(torch.randn(2, 4, 8, 16))
    ours = state0.clone()
    out = compat.selective_state_update(
        ours, *_mamba2_step_args(step, 8, 16), True, state_mask=layout,
        head_transition_mask=step["head_transition_mask"], pruned_states="zero_transition",
    )  # fmt: skip
    ref_state = state0.double()
    ref = ssd_state_update_ref(
        ref_state, **to_float64(step), dt_limit=(-INF, INF), pruned_states="zero_transition"
    )
    assert_close(out, ref, torch.float32, "out")
    assert_close(ours, ref_state, torch.float32, "state")


def test_tied_multi_head_step_with_one_group_as_2d_B_and_state_batch_indices() -> None:
    step = step_inputs(make_inputs(SSDCase("tied_pool", batch=3, seqlen=1)), 0)
    pool = torch.randn(6, 4, 8, 16)
    idx = torch.tensor([4, -1, 1])
    ours, ref_pool = pool.clone(), pool.double()
    args = list(_mamba2_step_args(step, 8, 16))
    args[3], args[4] = step["B"][:, 0], step["C"][:, 0]  # (batch, dstate)
    out = compat.selective_state_update(ours, *args, True, idx)
    ref = ssd_state_update_ref(ref_pool, **to_float64(step), dt_limit=(-INF, INF), state_batch_indices=idx)
    assert_close(out, ref, torch.float32, "out")
    assert_close(ours, ref_pool, torch.float32, "pool")


def _untied_inputs(b: int = 2, h: int = 4, p: int = 3, g: int = 2, n: int = 8, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, h, p, generator=gen),
        "dt": torch.randn(b, h, p, generator=gen) * 0.5 - 1,
        "A": -torch.rand(h, p, n, generator=gen) * 3,
        "B": torch.randn(b, g, n, generator=gen),
        "C": torch.randn(b, g, n, generator=gen),
        "D": torch.randn(h, p, generator=gen),
        "z": torch.randn(b, h, p, generator=gen),
        "dt_bias": torch.randn(h, p, generator=gen) * 0.1,
    }


def _mamba_ssm_multi_head_step(state: torch.Tensor, t: dict) -> torch.Tensor:
    """The formula of mamba_ssm's selective_state_update_ref on the multi-head layout."""
    h, g = t["x"].shape[1], t["B"].shape[1]
    dt = F.softplus(t["dt"] + t["dt_bias"])
    B = t["B"].repeat_interleave(h // g, dim=1)
    C = t["C"].repeat_interleave(h // g, dim=1)
    state.copy_(state * torch.exp(dt[..., None] * t["A"]) + dt[..., None] * B[:, :, None] * t["x"][..., None])
    out = torch.einsum("bhdn,bhn->bhd", state, C) + t["x"] * t["D"]
    return out * F.silu(t["z"])


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_untied_multi_head_step_is_mamba1_on_head_channels(layout: str) -> None:
    t = _untied_inputs()
    state0 = torch.randn(2, 4, 3, 8)
    ours = state0.clone() if layout == "contiguous" else state0.transpose(1, 2).contiguous().transpose(1, 2)
    out = compat.selective_state_update(
        ours, t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"], True
    )
    ref_state = state0.double()
    ref = _mamba_ssm_multi_head_step(ref_state, {k: v.double() for k, v in t.items()})
    assert_close(out, ref, torch.float32, "out")
    assert_close(ours, ref_state, torch.float32, "state (updated in place)")


def test_untied_multi_head_step_takes_mamba1_masks_but_not_head_pruning() -> None:
    t = _untied_inputs()
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"], True)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[:4] = True  # a Mamba-1 column mask over the 12 channels
    state = torch.randn(2, 4, 3, 4)  # compact
    compat.selective_state_update(state, *args, state_mask=mask)
    with pytest.raises(ValueError, match=r"head_transition_mask: needs the tied multi-head form"):
        compat.selective_state_update(
            torch.zeros(2, 4, 3, 8), *args, head_transition_mask=torch.ones(4, dtype=torch.bool)
        )


def test_multi_head_step_bad_shapes() -> None:
    t = _untied_inputs()
    state = torch.zeros(2, 4, 3, 8)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, nheads, dim\) with a multi-head state"):
        compat.selective_state_update(state, t["x"][:, 0], t["dt"], t["A"], t["B"], t["C"])
    with pytest.raises(
        ValueError, match=r"dt_bias: expected shape \(4, 3\) \(multi-head layout\), got \(4,\)"
    ):
        compat.selective_state_update(state, t["x"], t["dt"], t["A"], t["B"], t["C"], dt_bias=torch.zeros(4))
    with pytest.raises(ValueError, match=r"A: expected shape \(nheads, dim, dstate\)"):
        compat.selective_state_update(state, t["x"], t["dt"], t["A"][:, 0], t["B"], t["C"])
