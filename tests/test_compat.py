"""mamba_ssm-compatible entry points of sparsessm_kernels.compat."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsessm_kernels import compat
from sparsessm_kernels.ops import StateLayout, selective_scan_ref, selective_state_update_ref
from sparsessm_kernels.sparsity import column_mask, nm_mask

ROOT = Path(__file__).resolve().parents[1]

# Positional signatures of mamba_ssm 2.x
# (ops/selective_scan_interface.py, ops/triton/selective_state_update.py).
MAMBA_SSM_SIGNATURES = {
    "selective_scan_fn": [
        ("u", None), ("delta", None), ("A", None), ("B", None), ("C", None), ("D", None), ("z", None),
        ("delta_bias", None), ("delta_softplus", False), ("return_last_state", False),
    ],
    "selective_state_update": [
        ("state", None), ("x", None), ("dt", None), ("A", None), ("B", None), ("C", None), ("D", None),
        ("z", None), ("dt_bias", None), ("dt_softplus", False), ("state_batch_indices", None),
    ],
    "mamba_inner_fn": [
        ("xz", None), ("conv1d_weight", None), ("conv1d_bias", None), ("x_proj_weight", None),
        ("delta_proj_weight", None), ("out_proj_weight", None), ("out_proj_bias", None), ("A", None),
        ("B", None), ("C", None), ("D", None), ("delta_bias", None), ("B_proj_bias", None),
        ("C_proj_bias", None), ("delta_softplus", True), ("checkpoint_lvl", 1), ("b_rms_weight", None),
        ("c_rms_weight", None), ("dt_rms_weight", None), ("b_c_dt_rms_eps", 1e-6),
    ],
}  # fmt: skip
REQUIRED = {"selective_scan_fn": 5, "selective_state_update": 6, "mamba_inner_fn": 8}


@pytest.mark.parametrize("name", sorted(MAMBA_SSM_SIGNATURES))
def test_positional_signature_matches_mamba_ssm(name: str) -> None:
    params = inspect.signature(getattr(compat, name)).parameters.values()
    positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    got = [(p.name, None if p.default is inspect.Parameter.empty else p.default) for p in positional]
    assert got == MAMBA_SSM_SIGNATURES[name]
    assert all(p.default is inspect.Parameter.empty for p in positional[: REQUIRED[name]])
    keyword_only = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    # the multi-head layout's mask, and vLLM's pad slot and preallocated output
    extra = ["head_transition_mask", "pad_slot_id", "out"] if name == "selective_state_update" else []
    assert keyword_only == ["state_mask", "pruned_states", "backend", *extra]


def _scan_inputs(b: int = 2, d: int = 8, n: int = 16, l: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(b, d, l, generator=g),
        "delta": torch.randn(b, d, l, generator=g) * 0.5 - 1,
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        "B": torch.randn(b, n, l, generator=g),
        "C": torch.randn(b, n, l, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, l, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.1,
    }


@pytest.mark.parametrize("with_z", [True, False])
@pytest.mark.parametrize("mask", ["dense", "column", "nm"])
def test_selective_scan_fn(with_z: bool, mask: str) -> None:
    t = _scan_inputs()
    if not with_z:
        t.pop("z")
    g = torch.Generator().manual_seed(3)
    state_mask = {
        "dense": None,
        "column": column_mask(torch.rand(16, generator=g), 0.5),
        "nm": nm_mask(torch.rand(8, 16, generator=g), 2, 4),
    }[mask]
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t.get("z"), t["delta_bias"], True)
    out = compat.selective_scan_fn(*args, state_mask=state_mask)
    assert isinstance(out, torch.Tensor) and out.dtype == t["u"].dtype
    want, want_state = selective_scan_ref(*args, return_last_state=True, state_mask=state_mask)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    out2, last = compat.selective_scan_fn(*args, True, state_mask=state_mask)  # positional return_last_state
    assert last.shape == (2, 8, 16) and last.dtype == torch.float32
    torch.testing.assert_close(out2, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, want_state, rtol=1e-4, atol=1e-4)


def _step_inputs(b: int = 3, d: int = 8, n: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, d, generator=g),
        "dt": torch.randn(b, d, generator=g) * 0.5 - 1,
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        "B": torch.randn(b, n, generator=g),
        "C": torch.randn(b, n, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, generator=g),
        "dt_bias": torch.randn(d, generator=g) * 0.1,
    }


def _step_args(t: dict[str, torch.Tensor]) -> tuple:
    return t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"], True


def test_selective_state_update_in_place() -> None:
    t = _step_inputs()
    state = torch.randn(3, 8, 16)
    ref_state = state.clone()
    out = compat.selective_state_update(state, *_step_args(t))
    want = selective_state_update_ref(ref_state, *_step_args(t))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)


def test_selective_state_update_compact_state_with_mask() -> None:
    t = _step_inputs()
    layout = StateLayout(column_mask(torch.rand(16, generator=torch.Generator().manual_seed(2)), 0.5))
    dense = torch.randn(3, 8, 16) * layout.mask
    compact = layout.compact_state(dense)
    out = compat.selective_state_update(compact, *_step_args(t), state_mask=layout)
    want = selective_state_update_ref(dense, *_step_args(t), state_mask=layout)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compact, layout.compact_state(dense), rtol=1e-5, atol=1e-5)


def test_selective_state_update_state_batch_indices() -> None:
    t = _step_inputs()
    pool = torch.randn(6, 8, 16)
    idx = torch.tensor([4, -1, 2])  # -1: a pad slot, skipped
    expected_pool = pool.clone()
    rows = expected_pool[idx[[0, 2]]].clone()
    sub = {k: (v[[0, 2]] if v.dim() == 2 and v.shape[0] == 3 else v) for k, v in t.items()}
    want = selective_state_update_ref(rows, *_step_args(sub))
    expected_pool[idx[[0, 2]]] = rows
    out = compat.selective_state_update(pool, *_step_args(t), idx)
    torch.testing.assert_close(out[[0, 2]], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[1], torch.zeros(8))
    torch.testing.assert_close(pool, expected_pool, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        compat.selective_state_update(pool, *_step_args(t), torch.tensor([0, 1]))


def test_selective_state_update_rejects_mixed_layouts() -> None:
    # The multi-head (Mamba-2) layout itself is tested in tests/test_ssd_compat.py.
    b, h, p, n = 2, 4, 8, 16
    x = torch.randn(b, h, p)
    B = torch.randn(b, 1, n)
    with pytest.raises(ValueError, match=r"mixed layouts.*Mamba-1.*multi-head"):
        compat.selective_state_update(torch.zeros(b, p, n), x, x, -torch.ones(p, n), B[:, 0], B[:, 0])
    with pytest.raises(ValueError, match="head_transition_mask: only for the multi-head"):
        compat.selective_state_update(
            torch.zeros(b, p, n), x[:, 0], x[:, 0], -torch.ones(p, n), B[:, 0], B[:, 0],
            head_transition_mask=torch.ones(h, dtype=torch.bool),
        )  # fmt: skip


def _inner_weights(d_model: int = 8, d: int = 16, n: int = 8, r: int = 2, w: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv1d_weight": torch.randn(d, 1, w, generator=g) * 0.3,
        "conv1d_bias": torch.randn(d, generator=g) * 0.1,
        "x_proj_weight": torch.randn(r + 2 * n, d, generator=g) * 0.2,
        "delta_proj_weight": torch.randn(d, r, generator=g) * 0.3,
        "out_proj_weight": torch.randn(d_model, d, generator=g) * 0.2,
        "out_proj_bias": torch.randn(d_model, generator=g) * 0.1,
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        "D": torch.randn(d, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.1 - 2,
    }


def _inner_manual(xz: torch.Tensor, wt: dict, state_mask=None, norms: dict | None = None) -> torch.Tensor:
    l = xz.shape[-1]
    r = wt["delta_proj_weight"].shape[1]
    n = wt["A"].shape[1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, wt["conv1d_weight"], wt["conv1d_bias"], padding=3, groups=x.shape[1])[..., :l])
    x_dbl = x.transpose(1, 2) @ wt["x_proj_weight"].T  # (b, l, r + 2n)
    delta = (x_dbl[..., :r] @ wt["delta_proj_weight"].T).transpose(1, 2)  # (b, d, l)
    B, C = x_dbl[..., r : r + n], x_dbl[..., r + n :]
    if norms:

        def rms(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)

        B, C = rms(B) * norms["b"], rms(C) * norms["c"]
        delta = (rms(delta.transpose(1, 2)) * norms["dt"]).transpose(1, 2)
    y = selective_scan_ref(
        x,
        delta,
        wt["A"],
        B.transpose(1, 2),
        C.transpose(1, 2),
        wt["D"],
        z,
        wt["delta_bias"],
        True,
        state_mask=state_mask,
    )
    return y.transpose(1, 2) @ wt["out_proj_weight"].T + wt["out_proj_bias"]


@pytest.mark.parametrize("masked", [False, True])
def test_mamba_inner_fn(masked: bool) -> None:
    wt = _inner_weights()
    xz = torch.randn(2, 32, 10, generator=torch.Generator().manual_seed(5))
    mask = column_mask(torch.rand(8, generator=torch.Generator().manual_seed(6)), 0.5) if masked else None
    args = (xz, *[wt[k] for k in ("conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight",
                                  "out_proj_weight", "out_proj_bias", "A")])  # fmt: skip
    out = compat.mamba_inner_fn(*args, None, None, wt["D"], wt["delta_bias"], state_mask=mask)
    assert out.shape == (2, 10, 8)
    torch.testing.assert_close(out, _inner_manual(xz, wt, mask), rtol=1e-4, atol=1e-4)


def test_mamba_inner_fn_falcon_norms() -> None:
    wt = _inner_weights()
    xz = torch.randn(2, 32, 10, generator=torch.Generator().manual_seed(7))
    norms = {"b": torch.rand(8) + 0.5, "c": torch.rand(8) + 0.5, "dt": torch.rand(16) + 0.5}
    out = compat.mamba_inner_fn(
        xz, wt["conv1d_weight"], wt["conv1d_bias"], wt["x_proj_weight"], wt["delta_proj_weight"],
        wt["out_proj_weight"], wt["out_proj_bias"], wt["A"], D=wt["D"], delta_bias=wt["delta_bias"],
        b_rms_weight=norms["b"], c_rms_weight=norms["c"], dt_rms_weight=norms["dt"],
    )  # fmt: skip
    torch.testing.assert_close(out, _inner_manual(xz, wt, None, norms), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["B", "C"])
def test_mamba_inner_fn_rms_norm_needs_an_input_dependent_B_C(which: str) -> None:
    """FalconMamba's B / C norms act on every step of an input-dependent B / C; a time-invariant one
    is refused with a clear error (mamba_ssm fails inside a rearrange there)."""
    wt = _inner_weights()
    xz = torch.randn(2, 32, 10, generator=torch.Generator().manual_seed(8))
    given = {"B": None, "C": None, which: torch.randn(16, 8)}
    x_proj = wt["x_proj_weight"][: 2 + 8]  # dt_rank + one input-dependent B / C
    with pytest.raises(
        ValueError, match=rf"{which.lower()}_rms_weight: .* {which} is time-invariant with shape \(16, 8\)"
    ):
        compat.mamba_inner_fn(
            xz, wt["conv1d_weight"], wt["conv1d_bias"], x_proj, wt["delta_proj_weight"],
            wt["out_proj_weight"], wt["out_proj_bias"], wt["A"], given["B"], given["C"], wt["D"],
            **{f"{which.lower()}_rms_weight": torch.ones(8)},
        )  # fmt: skip


@pytest.mark.parametrize("module", ["compat.py", "_compat_ssd.py"])
def test_compat_imports_only_ops(module: str) -> None:
    allowed = {"ops", "_compat_ssd"} if module == "compat.py" else {"ops"}  # its own Mamba-2 half
    tree = ast.parse((ROOT / "sparsessm_kernels" / module).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            assert (node.module or "").split(".")[0] in allowed
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("sparsessm")
        ):
            assert node.module.split(".")[1] == "ops"


@pytest.mark.gpu
def test_gpu_compat_matches_reference() -> None:
    t = {k: v.cuda() for k, v in _scan_inputs(b=2, d=64, l=64).items()}
    mask = column_mask(torch.rand(16, generator=torch.Generator().manual_seed(3)), 0.5).cuda()
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True)
    out, last = compat.selective_scan_fn(*args, True, state_mask=mask)
    want, want_last = selective_scan_ref(*args, return_last_state=True, state_mask=mask)
    torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(last, want_last, rtol=1e-3, atol=1e-3)
    s = {k: v.cuda() for k, v in _step_inputs(d=64).items()}
    pool = torch.randn(5, 64, 16, device="cuda")
    idx = torch.tensor([3, 1, 4], device="cuda")
    rows = pool[idx].clone()
    want = selective_state_update_ref(rows, *_step_args(s))
    out = compat.selective_state_update(pool, *_step_args(s), idx)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pool[idx], rows, rtol=1e-4, atol=1e-4)
