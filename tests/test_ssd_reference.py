"""The SSD oracle against independent references and the identities the semantics promise.

Independent references: transformers' own PyTorch Mamba-2 SSD (``mamba2_chunk_scan``, the chunked
"minimal SSD" of the Mamba-2 paper, and ``mamba2_selective_state_update``), and the Mamba-1
oracle run on ``nheads * headdim`` channels -- how mamba_ssm's own ``ssd_selective_scan`` test
reference expresses Mamba-2 through ``selective_scan_fn``.
"""

from __future__ import annotations

import pytest
import torch

from sparsessm_kernels.ops import selective_scan_ref
from sparsessm_kernels.ops.ssd import SSDStateLayout, ssd_scan_ref, ssd_state_update_ref
from tests.ssd_cases import SSDCase, make_inputs, step_inputs, to_float64

INF = float("inf")


def _f64(case: SSDCase, seed: int = 0) -> dict:
    return to_float64(make_inputs(SSDCase(**{**case.__dict__, "dtype": torch.float64}), seed))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------- transformers' torch Mamba-2


def _transformers_mamba2():
    m2 = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    # the decorators may swap in mamba_ssm's kernels when installed: take the PyTorch functions
    return (
        getattr(m2.mamba2_chunk_scan, "__wrapped__", m2.mamba2_chunk_scan),
        getattr(m2.mamba2_selective_state_update, "__wrapped__", m2.mamba2_selective_state_update),
    )


@pytest.mark.parametrize(
    "case",
    [
        SSDCase("hf_dense", seqlen=37, ngroups=2, init=True, with_z=False),
        SSDCase("hf_l1", seqlen=1, init=True, with_z=False),
        SSDCase("hf_groups8_n64", nheads=16, ngroups=8, headdim=4, d_state=64, seqlen=20, with_z=False),
        SSDCase("hf_dt_limit", dt_limit=(0.1, 0.4), with_z=False, D=None),
    ],
    ids=lambda c: c.name,
)
def test_scan_matches_transformers_mamba2_chunk_scan(case: SSDCase) -> None:
    chunk_scan, _ = _transformers_mamba2()
    t = _f64(case)
    out, final = ssd_scan_ref(**t, return_final_states=True)
    limit = t.get("dt_limit", (0.0, INF))
    init = t["initial_states"]
    hf_out, hf_final = chunk_scan(
        t["x"], t["dt"], t["A"], t["B"], t["C"], 16, D=t["D"], dt_bias=t["dt_bias"],
        initial_states=init, dt_softplus=True, dt_limit=limit, return_final_states=True,
    )  # fmt: skip
    # transformers computes in float32 even for float64 inputs
    torch.testing.assert_close(out, hf_out.double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final, hf_final.double(), rtol=1e-4, atol=1e-4)


def test_step_matches_transformers_mamba2_selective_state_update() -> None:
    _, state_update = _transformers_mamba2()
    case = SSDCase("hf_step", seqlen=1, ngroups=2, with_z=True, D="h")
    t = _f64(case)
    step = step_inputs(t, 0)
    b, h, p = step["x"].shape
    state0 = torch.randn(b, h, p, case.d_state, dtype=torch.float64)
    ours_state, hf_state = state0.clone(), state0.clone()
    ours = ssd_state_update_ref(ours_state, **step)
    n = case.d_state
    hf = state_update(
        hf_state, step["x"], step["dt"][..., None].expand(b, h, p), step["A"][:, None, None].expand(h, p, n),
        step["B"], step["C"], step["D"][:, None].expand(h, p), dt_bias=step["dt_bias"][:, None].expand(h, p),
        dt_softplus=True, z=step["z"],
    )  # fmt: skip
    _close(ours, hf, 1e-5)  # transformers forms exp(dt * A) in float32
    _close(ours_state, hf_state, 1e-5)


# ---------------------------------------------------------------- Mamba-1 oracle on h*p channels


def _as_mamba1(t: dict) -> dict:
    """SSD inputs as Mamba-1 ``selective_scan_ref`` inputs on ``d = nheads * headdim`` channels."""
    b, l, h, p = t["x"].shape
    n = t["B"].shape[-1]

    def channels(v: torch.Tensor) -> torch.Tensor:  # (b, l, h, p) -> (b, h*p, l)
        return v.reshape(b, l, h * p).transpose(1, 2)

    D = t["D"]
    return {
        "u": channels(t["x"]),
        "delta": channels(t["dt"][..., None].expand(b, l, h, p)),
        "A": t["A"][:, None, None].expand(h, p, n).reshape(h * p, n),
        "B": t["B"].permute(0, 2, 3, 1),  # (b, g, n, l): channel c uses group c // (h*p/g)
        "C": t["C"].permute(0, 2, 3, 1),
        "D": None if D is None else (D[:, None].expand(h, p) if D.dim() == 1 else D).reshape(h * p),
        "z": None if t["z"] is None else channels(t["z"]),
        "delta_bias": None if t["dt_bias"] is None else t["dt_bias"][:, None].expand(h, p).reshape(h * p),
        "delta_softplus": t["dt_softplus"],
    }


def _channel_mask(head_mask: torch.Tensor, headdim: int) -> torch.Tensor:
    return head_mask.repeat_interleave(headdim, dim=0)


@pytest.mark.parametrize("pruned_states", ["remove", "zero_transition"])
@pytest.mark.parametrize("mask", ["none", "group", "head"])
def test_scan_equals_mamba1_oracle_on_head_channels(mask: str, pruned_states: str) -> None:
    case = SSDCase("m1", seqlen=23, nheads=6, headdim=5, ngroups=3, d_state=8, mask=mask, D="hp")
    t = _f64(case)
    out, final = ssd_scan_ref(**t, return_final_states=True, pruned_states=pruned_states)
    m1_mask = None
    if t["state_mask"] is not None:
        head_mask = SSDStateLayout(t["state_mask"], nheads=6, ngroups=3).head_mask
        m1_mask = _channel_mask(head_mask, case.headdim)
    m1_out, m1_last = selective_scan_ref(
        **_as_mamba1(t), return_last_state=True, state_mask=m1_mask, pruned_states=pruned_states
    )
    b, l, h, p = t["x"].shape
    _close(out, m1_out.transpose(1, 2).reshape(b, l, h, p))
    _close(final, m1_last.reshape(b, h, p, -1))


def test_head_transition_pruning_equals_mamba1_zero_transition_of_the_head_channels() -> None:
    # Without a state mask, zeroing head h's transition is Mamba-1's zero_transition on every
    # (channel, state) of the head's channels.
    case = SSDCase("m1_heads", seqlen=19, nheads=6, headdim=3, ngroups=2, d_state=8, head_prune="some")
    t = _f64(case)
    out = ssd_scan_ref(**t, pruned_states="remove")  # final states differ: Mamba-1 zeroes pruned ones
    heads = t["head_transition_mask"]
    m1_mask = _channel_mask(heads[:, None].expand(6, 8), case.headdim)
    m1_out, _ = selective_scan_ref(
        **_as_mamba1(t), return_last_state=True, state_mask=m1_mask, pruned_states="zero_transition"
    )
    b, l, h, p = t["x"].shape
    _close(out, m1_out.transpose(1, 2).reshape(b, l, h, p))


# ---------------------------------------------------------------- identities of the semantics


@pytest.mark.parametrize("init", [False, True])
def test_remove_equals_zeroing_the_pruned_columns_of_B_and_C(init: bool) -> None:
    t = _f64(SSDCase("remove_id", seqlen=21, ngroups=2, mask="group", init=init))
    mask = t.pop("state_mask")
    out, final = ssd_scan_ref(**t, return_final_states=True, state_mask=mask, pruned_states="remove")
    keep = mask.to(torch.float64)  # (g, n) broadcasts over (b, l, g, n)
    zeroed = {**t, "B": t["B"] * keep, "C": t["C"] * keep}
    dense_out, dense_final = ssd_scan_ref(**zeroed, return_final_states=True)
    _close(out, dense_out)
    per_head = keep.repeat_interleave(2, dim=0)[:, None, :]  # (h, 1, n)
    _close(final, dense_final * per_head)  # pruned entries of the final state are 0


def test_head_transition_pruning_equals_A_minus_infinity() -> None:
    t = _f64(SSDCase("head_id", seqlen=17, ngroups=2, mask="group", head_prune="some", init=True))
    heads = t.pop("head_transition_mask")
    for pruned_states in ("remove", "zero_transition"):
        out, final = ssd_scan_ref(
            **t, return_final_states=True, head_transition_mask=heads, pruned_states=pruned_states
        )
        A_inf = torch.where(heads, t["A"], torch.full_like(t["A"], -INF))  # softplus: dt > 0
        ref_out, ref_final = ssd_scan_ref(
            **{**t, "A": A_inf}, return_final_states=True, pruned_states=pruned_states
        )
        _close(out, ref_out)
        _close(final, ref_final)


def test_head_with_zeroed_transition_has_no_memory() -> None:
    t = _f64(SSDCase("memoryless", seqlen=6, head_prune="all", init=True, D=None, with_z=False))
    out = ssd_scan_ref(**t)
    dt = torch.nn.functional.softplus(t["dt"] + t["dt_bias"])
    bc = (t["B"] * t["C"]).sum(-1)[:, :, 0]  # one group: (b, l)
    _close(out, dt[..., None] * t["x"] * bc[:, :, None, None])


def test_per_group_mask_equals_the_same_mask_per_head() -> None:
    t = _f64(SSDCase("group_head", nheads=8, ngroups=2, mask="group", init=True))
    per_head = t["state_mask"].repeat_interleave(4, dim=0)
    for pruned_states in ("remove", "zero_transition"):
        a = ssd_scan_ref(**t, return_final_states=True, pruned_states=pruned_states)
        b = ssd_scan_ref(
            **{**t, "state_mask": per_head}, return_final_states=True, pruned_states=pruned_states
        )
        _close(a[0], b[0], 0)
        _close(a[1], b[1], 0)


@pytest.mark.parametrize("mask", ["none", "group_uniform"])
def test_scan_continues_from_its_final_state(mask: str) -> None:
    t = _f64(SSDCase("split", seqlen=20, ngroups=2, mask=mask, init=True, head_prune="some"))
    whole, whole_final = ssd_scan_ref(**t, return_final_states=True)

    def part(sl: slice, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = {k: (t[k][:, sl] if t[k] is not None else None) for k in ("x", "dt", "B", "C", "z")}
        return ssd_scan_ref(**{**t, **seq, "initial_states": init}, return_final_states=True)

    first, mid = part(slice(0, 7), t["initial_states"])
    if mask != "none":  # the middle state as a compact (b, h, p, k) state
        mid = SSDStateLayout(t["state_mask"], nheads=4, ngroups=2).compact_state(mid)
    second, final = part(slice(7, 20), mid)
    _close(torch.cat([first, second], dim=1), whole)
    _close(final, whole_final)


def test_seq_idx_restarts_the_state() -> None:
    t = _f64(SSDCase("seq", batch=1, seqlen=15, init=True))
    seq_idx = torch.tensor([[0] * 6 + [1] * 9])
    out, final = ssd_scan_ref(**t, return_final_states=True, seq_idx=seq_idx)

    def part(sl: slice, init: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        seq = {k: (t[k][:, sl] if t[k] is not None else None) for k in ("x", "dt", "B", "C", "z")}
        return ssd_scan_ref(**{**t, **seq, "initial_states": init}, return_final_states=True)

    first, _ = part(slice(0, 6), t["initial_states"])
    second, second_final = part(slice(6, 15), None)  # the second sequence starts from 0
    _close(out, torch.cat([first, second], dim=1))
    _close(final, second_final)
    # a first sequence whose index is not 0 does not see the initial states
    shifted = ssd_scan_ref(**t, seq_idx=seq_idx + 1)
    _close(shifted[:, :6], part(slice(0, 6), None)[0])


def test_dt_limit_clamps_after_bias_and_softplus() -> None:
    t = _f64(SSDCase("limit", seqlen=5, softplus=False, with_bias=True, D=None, with_z=False))
    t["dt"] = t["dt"] - 0.5  # some negative dt: the default (0, inf) clamps them to 0
    out = ssd_scan_ref(**t)
    clamped = (t["dt"] + t["dt_bias"]).clamp(min=0.0)
    _close(out, ssd_scan_ref(**{**t, "dt": clamped, "dt_bias": None, "dt_limit": (-INF, INF)}))
    assert bool((t["dt"] + t["dt_bias"] < 0).any())
    with_limit = ssd_scan_ref(**{**t, "dt_softplus": True, "dt_limit": (0.2, 0.3)})
    dt = torch.nn.functional.softplus(t["dt"] + t["dt_bias"]).clamp(0.2, 0.3)
    _close(with_limit, ssd_scan_ref(**{**t, "dt": dt, "dt_bias": None, "dt_limit": (-INF, INF)}))


def test_reference_step_chain_equals_reference_scan() -> None:
    t = _f64(SSDCase("ref_chain", seqlen=9, ngroups=2, mask="head", head_prune="some", init=True, D="hp"))
    for pruned_states in ("remove", "zero_transition"):
        out, final = ssd_scan_ref(**t, return_final_states=True, pruned_states=pruned_states)
        state = t["initial_states"].clone()
        steps = [
            ssd_state_update_ref(state, **step_inputs(t, i), pruned_states=pruned_states) for i in range(9)
        ]
        _close(torch.stack(steps, dim=1), out)
        _close(state, final)


def test_final_states_of_pruned_entries_are_zero() -> None:
    t = _f64(SSDCase("zeros", ngroups=2, mask="head", init=True, head_prune="some"))
    layout = SSDStateLayout(t["state_mask"], nheads=4, ngroups=2)
    for pruned_states in ("remove", "zero_transition"):
        _, final = ssd_scan_ref(**t, return_final_states=True, pruned_states=pruned_states)
        assert bool((final[:, ~layout.head_mask[:, None, :].expand(4, 8, 16)] == 0).all())
