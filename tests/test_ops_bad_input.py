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


def _seq_len(x: dict, l: int) -> dict:
    """Every sequence tensor cut to ``l`` steps (a consistent call with another length)."""
    return {**x, **{k: x[k][..., :l] for k in ("u", "delta", "B", "C", "z")}}


# Each argument wrong in turn: the error names it, says what was expected (with the sizes the
# other arguments agree on) and what came. Sizes: b=2, d=8, l=5, n=4.
SCAN_ERRORS = [
    ("u_2d", lambda x: {**x, "u": x["u"][0]}, ValueError, r"u: expected shape \(b, d, l\), got \(8, 5\)"),
    (
        "u_int",
        lambda x: {**x, "u": x["u"].long()},
        TypeError,
        r"u: expected a floating dtype .* got torch.int64",
    ),
    ("u_not_tensor", lambda x: {**x, "u": [1.0]}, TypeError, r"u: expected a torch.Tensor, got list"),
    (
        "u_wrong_d",
        lambda x: {**x, "u": x["u"][:, :7]},
        ValueError,
        r"^u: expected shape \(b, d, l\) = \(2, 8, 5\), got \(2, 7, 5\)$",
    ),
    (
        "u_wrong_b",
        lambda x: {**x, "u": torch.zeros(3, 8, 5)},
        ValueError,
        r"^u: expected shape \(b, d, l\) = \(2, 8, 5\), got \(3, 8, 5\)$",
    ),
    (
        "u_wrong_l",
        lambda x: {**x, "u": x["u"][..., :4]},
        ValueError,
        r"^u: expected shape \(b, d, l\) = \(2, 8, 5\), got \(2, 8, 4\)$",
    ),
    ("empty_l", lambda x: _seq_len(x, 0), ValueError, r"u: expected a sequence length l >= 1, got shape"),
    (
        "empty_d",
        lambda x: {
            **x,
            **{k: x[k][:, :0] for k in ("u", "delta", "z")},
            **{k: x[k][:0] for k in ("A", "D", "delta_bias")},
        },
        ValueError,
        r"u: expected d >= 1 channels, got shape \(2, 0, 5\)",
    ),
    (
        "delta_shape",
        lambda x: {**x, "delta": x["delta"][:, :, :4]},
        ValueError,
        r"^delta: expected shape \(b, d, l\) = \(2, 8, 5\), got \(2, 8, 4\)$",
    ),
    (
        "A_wrong_d",
        lambda x: {**x, "A": x["A"][:7]},
        ValueError,
        r"^A: expected shape \(d, n\) = \(8, 4\), got \(7, 4\)$",
    ),
    (
        "A_wrong_n",
        lambda x: {**x, "A": x["A"][:, :3]},
        ValueError,
        r"^A: expected shape \(d, n\) = \(8, 4\), got \(8, 3\)$",
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
        "B_wrong_n",
        lambda x: {**x, "B": x["B"][:, :3]},
        ValueError,
        r"^B: expected shape \(b, n, l\) = \(2, 4, 5\), got \(2, 3, 5\)$",
    ),
    (
        "B_wrong_b",
        lambda x: {**x, "B": x["B"][:1]},
        ValueError,
        r"^B: expected shape \(b, n, l\) = \(2, 4, 5\), got \(1, 4, 5\)$",
    ),
    (
        "B_wrong_rank",
        lambda x: {**x, "B": torch.zeros(8)},
        ValueError,
        r"^B: expected shape \(b, n, l\), grouped \(b, g, n, l\) or time-invariant \(d, n\), got \(8,\)$",
    ),
    (
        "B_time_invariant_wrong_d",
        lambda x: {**x, "B": torch.zeros(7, 4)},
        ValueError,
        r"^B: expected time-invariant shape \(d, n\) = \(8, 4\), got \(7, 4\)$",
    ),
    (
        "C_time_invariant_wrong_n",
        lambda x: {**x, "C": torch.zeros(8, 5)},
        ValueError,
        r"^C: expected time-invariant shape \(d, n\) = \(8, 4\), got \(8, 5\)$",
    ),
    (
        "C_groups_not_dividing_d",
        lambda x: {**x, "C": torch.zeros(2, 3, 4, 5)},
        ValueError,
        r"^C: expected grouped shape \(b, g, n, l\) with g dividing d=8, got \(2, 3, 4, 5\) \(g=3\)$",
    ),
    (
        "C_grouped_wrong_l",
        lambda x: {**x, "C": torch.zeros(2, 2, 4, 6)},
        ValueError,
        r"^C: expected grouped shape \(b, g, n, l\) = \(2, g, 4, 5\), got \(2, 2, 4, 6\)$",
    ),
    (
        "D_shape",
        lambda x: {**x, "D": torch.zeros(7)},
        ValueError,
        r"^D: expected shape \(d,\) = \(8,\), got \(7,\)$",
    ),
    (
        "z_shape",
        lambda x: {**x, "z": x["z"][:1]},
        ValueError,
        r"^z: expected shape \(b, d, l\) = \(2, 8, 5\), got \(1, 8, 5\)$",
    ),
    (
        "delta_bias_rank",
        lambda x: {**x, "delta_bias": torch.zeros(8, 1)},
        ValueError,
        r"^delta_bias: expected shape \(d,\), got \(8, 1\)$",
    ),
    (
        "delta_bias_shape",
        lambda x: {**x, "delta_bias": torch.zeros(9)},
        ValueError,
        r"^delta_bias: expected shape \(d,\) = \(8,\), got \(9,\)$",
    ),
    (
        # only u and delta carry b here (B, C time-invariant, no z): a tie goes to the earlier one
        "tie_blames_the_later_argument",
        lambda x: {
            **x,
            "delta": torch.zeros(3, 8, 5),
            "B": torch.zeros(8, 4),
            "C": torch.zeros(8, 4),
            "z": None,
        },
        ValueError,
        r"^delta: expected shape \(b, d, l\) = \(2, 8, 5\), got \(3, 8, 5\)$",
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
        "D": scan_inputs["D"],
        "z": scan_inputs["z"][..., 0],
        "dt_bias": scan_inputs["delta_bias"],
    }


STEP_ERRORS = [
    (
        "state_wrong_n",
        lambda x: {**x, "state": torch.zeros(2, 8, 3)},
        r"^state: expected shape \(b, d, n\) = \(2, 8, 4\), got \(2, 8, 3\)$",
    ),
    (
        "state_wrong_d",
        lambda x: {**x, "state": torch.zeros(2, 7, 4)},
        r"^state: expected shape \(b, d, n\) = \(2, 8, 4\), got \(2, 7, 4\)$",
    ),
    (
        "state_wrong_b",
        lambda x: {**x, "state": torch.zeros(3, 8, 4)},
        r"^state: expected shape \(b, d, n\) = \(2, 8, 4\), got \(3, 8, 4\)$",
    ),
    (
        "state_2d",
        lambda x: {**x, "state": torch.zeros(8, 4)},
        r"^state: expected shape \(b, d, n\), got \(8, 4\)$",
    ),
    ("x_3d", lambda x: {**x, "x": torch.zeros(2, 8, 1)}, r"^x: expected shape \(b, d\), got \(2, 8, 1\)$"),
    (
        "x_wrong_d",
        lambda x: {**x, "x": torch.zeros(2, 7)},
        r"^x: expected shape \(b, d\) = \(2, 8\), got \(2, 7\)$",
    ),
    (
        "x_wrong_b",
        lambda x: {**x, "x": torch.zeros(3, 8)},
        r"^x: expected shape \(b, d\) = \(2, 8\), got \(3, 8\)$",
    ),
    (
        "dt_shape",
        lambda x: {**x, "dt": torch.zeros(2, 7)},
        r"^dt: expected shape \(b, d\) = \(2, 8\), got \(2, 7\)$",
    ),
    (
        "A_wrong_n",
        lambda x: {**x, "A": x["A"][:, :3]},
        r"^A: expected shape \(d, n\) = \(8, 4\), got \(8, 3\)$",
    ),
    (
        "A_wrong_d",
        lambda x: {**x, "A": x["A"][:7]},
        r"^A: expected shape \(d, n\) = \(8, 4\), got \(7, 4\)$",
    ),
    (
        "B_shape",
        lambda x: {**x, "B": torch.zeros(2, 5)},
        r"^B: expected shape \(b, n\) = \(2, 4\), got \(2, 5\)$",
    ),
    (
        "B_wrong_rank",
        lambda x: {**x, "B": torch.zeros(2, 1, 4, 1)},
        r"^B: expected shape \(b, n\) or grouped \(b, g, n\), got \(2, 1, 4, 1\)$",
    ),
    (
        "C_grouped_wrong_b",
        lambda x: {**x, "C": torch.zeros(1, 2, 4)},
        r"^C: expected grouped shape \(b, g, n\) = \(2, g, 4\), got \(1, 2, 4\)$",
    ),
    (
        "C_groups_not_dividing_d",
        lambda x: {**x, "C": torch.zeros(2, 3, 4)},
        r"^C: expected grouped shape \(b, g, n\) with g dividing d=8, got \(2, 3, 4\) \(g=3\)$",
    ),
    ("D_shape", lambda x: {**x, "D": torch.zeros(9)}, r"^D: expected shape \(d,\) = \(8,\), got \(9,\)$"),
    (
        "z_shape",
        lambda x: {**x, "z": torch.zeros(2, 9)},
        r"^z: expected shape \(b, d\) = \(2, 8\), got \(2, 9\)$",
    ),
    (
        "dt_bias_shape",
        lambda x: {**x, "dt_bias": torch.zeros(7)},
        r"^dt_bias: expected shape \(d,\) = \(8,\), got \(7,\)$",
    ),
    (
        "state_batch_indices_shape",
        lambda x: {
            **x,
            "state": torch.zeros(5, 8, 4),
            "state_batch_indices": torch.zeros(3, dtype=torch.long),
        },
        r"^state_batch_indices: expected shape \(b,\) = \(2,\), got \(3,\)$",
    ),
    (
        "indexed_state_wrong_d",
        lambda x: {
            **x,
            "state": torch.zeros(5, 7, 4),
            "state_batch_indices": torch.zeros(2, dtype=torch.long),
        },
        r"^state: expected shape \(S, d, n\) = \(5, 8, 4\), got \(5, 7, 4\)$",
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


# ------------------------------------------------------------------------------ empty batch
# b = 0 is a valid, empty call (e.g. a decode step with no live sequences): empty outputs, no state
# change, no kernel launched; every backend goes through the same early return of the op body.
def _empty_batch(x: dict) -> dict:
    return {k: (v[:0] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}


@pytest.mark.parametrize("fixed_B", [False, True], ids=["variable_B", "time_invariant_B"])
@pytest.mark.parametrize("mask", [None, "column", "channel"])
def test_scan_with_an_empty_batch(scan_inputs: dict, mask: str | None, fixed_B: bool) -> None:
    x = _empty_batch(scan_inputs)
    if fixed_B:
        x["B"] = torch.randn(8, 4)
    state_mask = {
        None: None,
        "column": torch.tensor([True, False, True, True]),
        "channel": torch.rand(8, 4) > 0.5,
    }
    for fn in (ssk.selective_scan, ssk.selective_scan_ref):
        out, last = fn(**x, return_last_state=True, state_mask=state_mask[mask])
        assert out.shape == (0, 8, 5) and out.dtype == x["u"].dtype
        assert last.shape == (0, 8, 4) and last.dtype == torch.float32


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_empty_batch_reaches_no_backend(scan_inputs: dict, backend: str) -> None:
    """The op body returns before choosing a kernel, so no backend (nor its import) is involved."""
    from sparsessm_kernels.ops import library

    x = _empty_batch(scan_inputs)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, last = library.selective_scan_op(*args, True, True, None, None, None, "zero_transition", backend)
    assert out.shape == (0, 8, 5) and last.shape == (0, 8, 4)
    step = [x["u"][..., 0], x["delta"][..., 0], x["A"], x["B"][..., 0], x["C"][..., 0], None, None, None]
    state = torch.zeros(0, 8, 4)
    y = torch.empty(0, 8)
    library.selective_state_update_op(
        state, *step, True, None, None, None, "zero_transition", backend, None, None, y
    )
    assert y.shape == (0, 8)


def test_state_update_with_an_empty_batch(step_inputs: dict) -> None:
    x = {k: (v[:0] if k in ("state", "x", "dt", "B", "C", "z") else v) for k, v in step_inputs.items()}
    for fn in (ssk.selective_state_update, ssk.selective_state_update_ref):
        assert fn(**x).shape == (0, 8)
        pool = torch.randn(3, 8, 4)
        before = pool.clone()
        out = fn(**{**x, "state": pool}, state_batch_indices=torch.zeros(0, dtype=torch.long))
        assert out.shape == (0, 8) and torch.equal(pool, before)


def test_saliency_needs_a_sample(scan_inputs: dict) -> None:
    from sparsessm_kernels.ops import state_saliency, state_saliency_ref

    x = _empty_batch(scan_inputs)
    for fn in (state_saliency, state_saliency_ref):
        with pytest.raises(ValueError, match=r"u: expected at least one calibration sample \(b >= 1\)"):
            fn(x["u"], x["delta"], x["A"], x["B"])
