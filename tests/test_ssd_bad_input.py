"""Bad input to the SSD ops raises a clear error naming the argument, the expected and the received value."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops.ssd import SSDStateLayout, ssd_scan_ref, ssd_state_update_ref
from tests.ssd_cases import SSDCase, make_inputs, step_inputs

# b=2, l=5, nheads=4, headdim=8, ngroups=2, d_state=16
CASE = SSDCase("bad", batch=2, seqlen=5, nheads=4, headdim=8, ngroups=2, d_state=16)


@pytest.fixture
def inputs() -> dict:
    return make_inputs(CASE)


def _mask(rows: int, n: int = 16) -> torch.Tensor:
    return torch.ones(rows, n, dtype=torch.bool)


def _uneven() -> torch.Tensor:
    """A (2, 16) per-group mask keeping 3 states in group 0 and 1 in group 1 (no compact state)."""
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :3] = mask[1, 0] = True
    return mask


SCAN_ERRORS = [
    (
        "x_3d",
        lambda t: {**t, "x": t["x"][0]},
        ValueError,
        r"x: expected shape \(b, l, nheads, headdim\), got \(5, 4, 8\)",
    ),
    (
        "x_int",
        lambda t: {**t, "x": t["x"].long()},
        TypeError,
        r"x: expected a floating dtype .* got torch.int64",
    ),
    ("x_list", lambda t: {**t, "x": [1.0]}, TypeError, r"x: expected a torch.Tensor, got list"),
    (
        "x_empty_l",
        lambda t: {**t, "x": t["x"][:, :0], "dt": t["dt"][:, :0], "B": t["B"][:, :0], "C": t["C"][:, :0]},
        ValueError,
        r"x: expected l >= 1",
    ),
    (
        "dt_shape",
        lambda t: {**t, "dt": t["dt"][..., :3]},
        ValueError,
        r"dt: expected shape \(b, l, nheads\) = \(2, 5, 4\), got \(2, 5, 3\)",
    ),
    (
        "A_mamba1",
        lambda t: {**t, "A": t["A"][:, None].expand(4, 16)},
        ValueError,
        r"A: expected shape \(nheads,\) = \(4,\) \(one scalar per head, Mamba-2\), got \(4, 16\)",
    ),
    ("A_heads", lambda t: {**t, "A": t["A"][:3]}, ValueError, r"A: expected shape \(nheads,\) = \(4,\)"),
    (
        "A_bf16",
        lambda t: {**t, "A": t["A"].bfloat16()},
        TypeError,
        r"A: expected float32 .* got torch.bfloat16",
    ),
    (
        "B_3d",
        lambda t: {**t, "B": t["B"][:, :, 0]},
        ValueError,
        r"B: expected shape \(b, l, ngroups, d_state\)",
    ),
    (
        "groups_not_dividing_heads",
        lambda t: {**t, "B": torch.randn(2, 5, 3, 16), "C": torch.randn(2, 5, 3, 16)},
        ValueError,
        r"B: expected ngroups .* dividing nheads=4 \(nheads % ngroups == 0\), got ngroups=3",
    ),
    (
        "C_d_state",
        lambda t: {**t, "C": t["C"][..., :8]},
        ValueError,
        r"C: expected shape \(b, l, ngroups, d_state\) like B = \(2, 5, 2, 16\), got \(2, 5, 2, 8\)",
    ),
    (
        "d_state_too_large",
        lambda t: {**t, "B": torch.randn(2, 5, 2, 300), "C": torch.randn(2, 5, 2, 300)},
        ValueError,
        r"B: expected 1 <= d_state <= 256, got d_state=300",
    ),
    (
        "D_shape",
        lambda t: {**t, "D": torch.randn(4, 7)},
        ValueError,
        r"D: expected shape \(nheads,\) = \(4,\) or \(nheads, headdim\) = \(4, 8\), got \(4, 7\)",
    ),
    (
        "z_shape",
        lambda t: {**t, "z": t["z"][..., :4]},
        ValueError,
        r"z: expected shape \(b, l, nheads, headdim\)",
    ),
    (
        "dt_bias_per_dim",
        lambda t: {**t, "dt_bias": torch.randn(4, 8)},
        ValueError,
        r"dt_bias: expected shape \(nheads,\) = \(4,\), got \(4, 8\)",
    ),
    (
        "initial_states_shape",
        lambda t: {**t, "initial_states": torch.zeros(2, 4, 8, 15)},
        ValueError,
        r"initial_states: expected shape \(b, nheads, headdim, d_state\) = \(2, 4, 8, 16\), "
        r"got \(2, 4, 8, 15\)",
    ),
    (
        "compact_initial_states_need_uniform_mask",
        lambda t: {**t, "initial_states": torch.zeros(2, 4, 8, 8), "state_mask": _uneven()},
        ValueError,
        r"initial_states: expected shape \(b, nheads, headdim, d_state\) = \(2, 4, 8, 16\)",
    ),
    (
        "seq_idx_float",
        lambda t: {**t, "seq_idx": torch.zeros(2, 5)},
        TypeError,
        r"seq_idx: expected int32 or int64, got torch.float32",
    ),
    (
        "seq_idx_shape",
        lambda t: {**t, "seq_idx": torch.zeros(2, 4, dtype=torch.long)},
        ValueError,
        r"seq_idx: expected shape \(b, l\) = \(2, 5\)",
    ),
    (
        "dt_limit_order",
        lambda t: {**t, "dt_limit": (1.0, 0.5)},
        ValueError,
        r"dt_limit: expected \(min, max\) with min <= max, got \(1.0, 0.5\)",
    ),
    (
        "dt_limit_type",
        lambda t: {**t, "dt_limit": 0.5},
        TypeError,
        r"dt_limit: expected a \(min, max\) pair of numbers, got 0.5",
    ),
    (
        "pruned_states",
        lambda t: {**t, "pruned_states": "drop"},
        ValueError,
        r"pruned_states: expected one of .* got 'drop'",
    ),
    (
        "mask_float",
        lambda t: {**t, "state_mask": torch.ones(2, 16)},
        TypeError,
        r"state_mask: expected dtype torch.bool .* got torch.float32",
    ),
    (
        "mask_rows",
        lambda t: {**t, "state_mask": _mask(3)},
        ValueError,
        r"state_mask: expected shape \(ngroups, d_state\) = \(2, 16\) \(per group\) or \(nheads, d_state\) = "
        r"\(4, 16\) \(per head\), got \(3, 16\)",
    ),
    (
        "mask_1d",
        lambda t: {**t, "state_mask": torch.ones(16, dtype=torch.bool)},
        ValueError,
        r"state_mask: expected shape \(ngroups, d_state\) = \(2, 16\)",
    ),
    (
        "mask_d_state",
        lambda t: {**t, "state_mask": _mask(2, 8)},
        ValueError,
        r"state_mask: expected shape .* got \(2, 8\)",
    ),
    (
        "layout_of_another_layer",
        lambda t: {**t, "state_mask": SSDStateLayout(_mask(8), nheads=8, ngroups=2)},
        ValueError,
        r"state_mask: a layout built for nheads=8, ngroups=2, d_state=16 was given to a layer with nheads=4",
    ),
    (
        "head_mask_shape",
        lambda t: {**t, "head_transition_mask": torch.ones(3, dtype=torch.bool)},
        ValueError,
        r"head_transition_mask: expected shape \(nheads,\) = \(4,\), got \(3,\)",
    ),
    (
        "head_mask_float",
        lambda t: {**t, "head_transition_mask": torch.ones(4)},
        TypeError,
        r"head_transition_mask: expected dtype torch.bool",
    ),
    (
        "device",
        lambda t: {**t, "dt_bias": t["dt_bias"].to("meta")},
        ValueError,
        r"dt_bias: expected a tensor on cpu \(the device of x\), got meta",
    ),
]


@pytest.mark.parametrize(("name", "change", "error", "message"), SCAN_ERRORS, ids=[e[0] for e in SCAN_ERRORS])
@pytest.mark.parametrize("fn", ["ssd_scan", "ssd_scan_ref"])
def test_scan_bad_input(inputs: dict, name: str, change, error: type, message: str, fn: str) -> None:
    op = ssk.ssd_scan if fn == "ssd_scan" else ssd_scan_ref
    with pytest.raises(error, match=message):
        op(**change(inputs))


def test_scan_bad_backend_and_chunk_size(inputs: dict) -> None:
    with pytest.raises(
        ValueError, match=r"backend: expected one of \('auto', 'torch', 'triton', 'cuda'\), got 'gpu'"
    ):
        ssk.ssd_scan(**inputs, backend="gpu")
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match=rf"chunk_size: expected a positive int, got {bad}"):
            ssk.ssd_scan(**inputs, chunk_size=bad)


STEP_ERRORS = [
    (
        "state_shape",
        lambda s: {**s, "state": torch.zeros(2, 4, 8, 15)},
        ValueError,
        r"state: expected shape \(b, nheads, headdim, d_state\) = \(2, 4, 8, 16\), got \(2, 4, 8, 15\)",
    ),
    (
        "state_compact_offered",
        lambda s: {**s, "state": torch.zeros(2, 4, 8, 3), "state_mask": torch.eye(2, 16, dtype=torch.bool)},
        ValueError,
        r"state: expected shape .* = \(2, 4, 8, 16\) or compact \(b, nheads, headdim, k\) = \(2, 4, 8, 1\), "
        r"got \(2, 4, 8, 3\)",
    ),
    (
        "x_2d",
        lambda s: {**s, "x": s["x"][:, 0]},
        ValueError,
        r"x: expected shape \(b, nheads, headdim\), got \(2, 8\)",
    ),
    (
        "dt_per_dim",
        lambda s: {**s, "dt": torch.randn(2, 4, 8)},
        ValueError,
        r"dt: expected shape \(b, nheads\) = \(2, 4\), got \(2, 4, 8\)",
    ),
    (
        "B_2d",
        lambda s: {**s, "B": s["B"][:, 0]},
        ValueError,
        r"B: expected shape \(b, ngroups, d_state\) = \(2, 'ngroups', 'd_state'\), got \(2, 16\)",
    ),
    (
        "indices_float",
        lambda s: {**s, "state_batch_indices": torch.zeros(2)},
        TypeError,
        r"state_batch_indices: expected int32 or int64",
    ),
    (
        "indices_shape",
        lambda s: {**s, "state_batch_indices": torch.zeros(3, dtype=torch.long)},
        ValueError,
        r"state_batch_indices: expected shape \(b,\) = \(2,\), got \(3,\)",
    ),
    (
        "pool_shape",
        lambda s: {
            **s,
            "state": torch.zeros(6, 4, 8, 15),
            "state_batch_indices": torch.zeros(2, dtype=torch.long),
        },
        ValueError,
        r"state: expected shape \(S, nheads, headdim, d_state\) = \(6, 4, 8, 16\)",
    ),
    (
        "dt_limit",
        lambda s: {**s, "dt_limit": (float("nan"), 1.0)},
        ValueError,
        r"dt_limit: expected \(min, max\) with min <= max",
    ),
]


@pytest.mark.parametrize(("name", "change", "error", "message"), STEP_ERRORS, ids=[e[0] for e in STEP_ERRORS])
@pytest.mark.parametrize("fn", ["ssd_state_update", "ssd_state_update_ref"])
def test_step_bad_input(inputs: dict, name: str, change, error: type, message: str, fn: str) -> None:
    op = ssk.ssd_state_update if fn == "ssd_state_update" else ssd_state_update_ref
    step = {"state": torch.zeros(2, 4, 8, 16), **step_inputs(inputs, 0)}
    with pytest.raises(error, match=message):
        op(**change(step))


def test_groups_and_heads_may_keep_no_state(inputs: dict) -> None:
    # allowed (SparseSSM may prune every state of a group): such heads keep only D * x
    mask = torch.zeros(2, 16, dtype=torch.bool)
    out = ssk.ssd_scan(**{**inputs, "z": None, "state_mask": mask})
    D = inputs["D"][:, None]
    torch.testing.assert_close(out, inputs["x"] * D)
    layout = SSDStateLayout(mask, nheads=4, ngroups=2)
    assert layout.n_kept == 0 and layout.uniform
    state = torch.zeros(2, 4, 8, 0)
    step = step_inputs({**inputs, "z": None}, 0)
    torch.testing.assert_close(ssk.ssd_state_update(state, **{**step, "state_mask": layout}), step["x"] * D)


def test_layout_errors() -> None:
    with pytest.raises(ValueError, match=r"ngroups: expected a divisor of nheads=4, got 3"):
        SSDStateLayout(_mask(3), nheads=4, ngroups=3)
    with pytest.raises(TypeError, match=r"state_mask: expected a bool torch.Tensor, got list"):
        SSDStateLayout([[True]], nheads=1, ngroups=1)
    uneven = torch.zeros(4, 16, dtype=torch.bool)
    uneven[0, :3] = uneven[1:, 0] = True
    with pytest.raises(
        ValueError, match=r"compact_state: a compact .* keeps between 1 and 3 states per head"
    ):
        SSDStateLayout(uneven, nheads=4, ngroups=2).compact_state(torch.zeros(1, 4, 8, 16))
    uniform = SSDStateLayout(torch.eye(2, 16, dtype=torch.bool), nheads=4, ngroups=2)
    with pytest.raises(ValueError, match=r"state: expected shape \(\.\.\., nheads, headdim, d_state\)"):
        uniform.compact_state(torch.zeros(1, 3, 8, 16))
    with pytest.raises(ValueError, match=r"state: expected a compact state .* k=1, got \(1, 4, 8, 2\)"):
        uniform.expand_state(torch.zeros(1, 4, 8, 2))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"out": torch.zeros(2, 4, 7)}, ValueError, r"out: expected shape \(b, nheads, headdim\) like x = "),
        ({"out": torch.zeros(2, 4, 8, dtype=torch.float64)}, TypeError, r"out: expected dtype torch.float32"),
        ({"out": [0.0]}, TypeError, r"out: expected a torch.Tensor, got list"),
        ({"pad_slot_id": 1.0}, TypeError, r"pad_slot_id: expected None or an int, got 1.0"),
        ({"pad_slot_id": True}, TypeError, r"pad_slot_id: expected None or an int, got True"),
    ],
)
def test_step_bad_out_and_pad_slot_leave_the_state_alone(inputs: dict, change: dict, error, message) -> None:
    state = torch.ones(2, 4, 8, 16)
    with pytest.raises(error, match=message):
        ssk.ssd_state_update(state, **step_inputs(inputs, 0), **change)
    assert torch.equal(state, torch.ones(2, 4, 8, 16))
