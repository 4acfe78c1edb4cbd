"""Bad input to the ops raises a clear error naming the argument, the expected and the actual value."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout
from tests.scan_cases import ScanCase, make_inputs


@pytest.fixture
def scan_inputs() -> dict:
    inputs, _ = make_inputs(ScanCase("bad", batch=2, d=8, n=4, seqlen=5))
    return inputs


SCAN_ERRORS = [
    ("u_2d", lambda x: {**x, "u": x["u"][0]}, ValueError, r"u: expected shape \(b, d, l\), got \(8, 5\)"),
    (
        "u_int",
        lambda x: {**x, "u": x["u"].long()},
        TypeError,
        r"u: expected a floating dtype .* got torch.int64",
    ),
    ("u_not_tensor", lambda x: {**x, "u": [1.0]}, TypeError, r"u: expected a torch.Tensor, got list"),
    ("u_empty_l", lambda x: {**x, "u": x["u"][..., :0], "delta": x["delta"][..., :0]}, ValueError, r"l >= 1"),
    (
        "delta_shape",
        lambda x: {**x, "delta": x["delta"][:, :, :4]},
        ValueError,
        r"delta: expected shape \(b, d, l\) = \(2, 8, 5\), got \(2, 8, 4\)",
    ),
    (
        "A_shape",
        lambda x: {**x, "A": x["A"][:7]},
        ValueError,
        r"A: expected shape \(d, n\) with d=8, got \(7, 4\)",
    ),
    ("A_half", lambda x: {**x, "A": x["A"].half()}, TypeError, r"A: expected float32 .* got torch.float16"),
    ("A_complex", lambda x: {**x, "A": torch.complex(x["A"], x["A"])}, TypeError, r"A: complex tensors"),
    (
        "n_too_big",
        lambda x: {**x, "A": torch.zeros(8, 257), "B": torch.zeros(2, 257, 5), "C": torch.zeros(2, 257, 5)},
        ValueError,
        r"A: expected 1 <= n <= 256 states, got n=257",
    ),
    (
        "B_shape",
        lambda x: {**x, "B": x["B"][:, :3]},
        ValueError,
        r"B: expected shape \(b, n, l\) = \(2, 4, 5\)",
    ),
    (
        "B_time_invariant",
        lambda x: {**x, "B": torch.zeros(8, 4)},
        ValueError,
        r"B: expected shape \(b, n, l\) or grouped",
    ),
    (
        "C_groups_not_dividing_d",
        lambda x: {**x, "C": torch.zeros(2, 3, 4, 5)},
        ValueError,
        r"C: expected grouped shape",
    ),
    (
        "D_shape",
        lambda x: {**x, "D": torch.zeros(7)},
        ValueError,
        r"D: expected shape \(d,\) = \(8,\), got \(7,\)",
    ),
    ("z_shape", lambda x: {**x, "z": x["z"][:1]}, ValueError, r"z: expected shape \(b, d, l\)"),
    (
        "delta_bias_shape",
        lambda x: {**x, "delta_bias": torch.zeros(8, 1)},
        ValueError,
        r"delta_bias: expected shape",
    ),
    (
        "device_mismatch",
        lambda x: {**x, "D": torch.zeros(8, device="meta")},
        ValueError,
        r"D: expected a tensor on cpu \(the device of u\), got meta",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "exc", "pattern"), SCAN_ERRORS, ids=[e[0] for e in SCAN_ERRORS])
@pytest.mark.parametrize("fn", [ssk.selective_scan, ssk.selective_scan_ref], ids=["dispatch", "reference"])
def test_scan_rejects_bad_input(scan_inputs: dict, name: str, mutate, exc: type, pattern: str, fn) -> None:
    with pytest.raises(exc, match=pattern):
        fn(**mutate(scan_inputs))


MASK_ERRORS = [
    ("mask_float", torch.ones(4), TypeError, r"state_mask: expected dtype torch.bool .* got torch.float32"),
    ("mask_list", [True, False], TypeError, r"state_mask: expected a bool torch.Tensor, got list"),
    (
        "mask_3d",
        torch.ones(1, 8, 4, dtype=torch.bool),
        ValueError,
        r"state_mask: expected shape \(n,\) .* got shape \(1, 8, 4\)",
    ),
    (
        "mask_wrong_n",
        torch.ones(5, dtype=torch.bool),
        ValueError,
        r"state_mask: expected 4 states \(A has shape \(d, 4\)\), got a mask of shape \(5,\)",
    ),
    (
        "mask_wrong_d",
        torch.ones(7, 4, dtype=torch.bool),
        ValueError,
        r"state_mask: per-channel mask has d=7 rows but the layer has d=8 channels",
    ),
]


@pytest.mark.parametrize(("name", "mask", "exc", "pattern"), MASK_ERRORS, ids=[e[0] for e in MASK_ERRORS])
def test_scan_rejects_bad_masks(scan_inputs: dict, name: str, mask, exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        ssk.selective_scan(**scan_inputs, state_mask=mask)


def test_bad_pruned_states(scan_inputs: dict) -> None:
    with pytest.raises(ValueError, match=r"pruned_states: expected one of .* got 'drop'"):
        ssk.selective_scan(**scan_inputs, state_mask=torch.ones(4, dtype=torch.bool), pruned_states="drop")


def test_layout_rejects_n_over_256() -> None:
    with pytest.raises(ValueError, match=r"state_mask: expected 1 <= n <= 256 states, got n=300"):
        StateLayout(torch.ones(300, dtype=torch.bool))


def test_channel_with_every_state_pruned_is_valid(scan_inputs: dict) -> None:
    mask = torch.ones(8, 4, dtype=torch.bool)
    mask[3] = False
    out = ssk.selective_scan(**scan_inputs, state_mask=mask)
    assert torch.isfinite(out).all()


@pytest.fixture
def step_inputs(scan_inputs: dict) -> dict:
    return {
        "state": torch.zeros(2, 8, 4),
        "x": scan_inputs["u"][..., 0],
        "dt": scan_inputs["delta"][..., 0],
        "A": scan_inputs["A"],
        "B": scan_inputs["B"][..., 0],
        "C": scan_inputs["C"][..., 0],
    }


STEP_ERRORS = [
    (
        "state_shape",
        lambda x: {**x, "state": torch.zeros(2, 8, 3)},
        r"state: expected shape \(b, d, n\) = \(2, 8, 4\)",
    ),
    ("x_3d", lambda x: {**x, "x": torch.zeros(2, 8, 1)}, r"x: expected shape \(b, d\), got \(2, 8, 1\)"),
    (
        "dt_shape",
        lambda x: {**x, "dt": torch.zeros(2, 7)},
        r"dt: expected shape \(b, d\) = \(2, 8\), got \(2, 7\)",
    ),
    (
        "B_shape",
        lambda x: {**x, "B": torch.zeros(2, 5)},
        r"B: expected shape \(b, n\) = \(2, 4\), got \(2, 5\)",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "pattern"), STEP_ERRORS, ids=[e[0] for e in STEP_ERRORS])
@pytest.mark.parametrize(
    "fn", [ssk.selective_state_update, ssk.selective_state_update_ref], ids=["dispatch", "reference"]
)
def test_state_update_rejects_bad_input(step_inputs: dict, name: str, mutate, pattern: str, fn) -> None:
    with pytest.raises(ValueError, match=pattern):
        fn(**mutate(step_inputs))


def test_compact_state_needs_uniform_mask(step_inputs: dict) -> None:
    mask = torch.ones(8, 4, dtype=torch.bool)
    mask[0, :2] = False  # channel 0 keeps 2, the others 4: no compact state possible
    with pytest.raises(ValueError, match=r"state: expected shape \(b, d, n\) = \(2, 8, 4\), got \(2, 8, 2\)"):
        ssk.selective_state_update(**{**step_inputs, "state": torch.zeros(2, 8, 2)}, state_mask=mask)
    with pytest.raises(ValueError, match=r"compact_state: a compact \(b, d, k\) state needs the same number"):
        StateLayout(mask).compact_state(torch.zeros(2, 8, 4))


def test_compact_state_shape_accepted_for_column_mask(step_inputs: dict) -> None:
    mask = torch.tensor([True, False, True, False])
    out = ssk.selective_state_update(**{**step_inputs, "state": torch.zeros(2, 8, 2)}, state_mask=mask)
    assert out.shape == (2, 8)
