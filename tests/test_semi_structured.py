"""2:4 semi-structured linears: pattern checks, the masked dense fallback, sparsify_ / densify_."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsessm_kernels.nn import (
    PATHS,
    NotSemiStructuredError,
    SemiStructuredLinear,
    SparsifyReport,
    check_2to4,
    densify_,
    is_2to4,
    prune_2to4_,
    semi_structured_status,
    sparsify_,
)

ROOT = Path(__file__).resolve().parents[1]


def _linear(fan_in: int, fan_out: int, *, bias: bool = True, seed: int = 0, pruned: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(fan_in, fan_out, bias=bias)
    if pruned:
        prune_2to4_(lin)
    return lin


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.a = _linear(16, 32, seed=1)
        self.b = _linear(32, 16, bias=False, seed=2)
        self.dense = _linear(16, 16, seed=3, pruned=False)  # not 2:4
        self.odd = nn.Linear(6, 16)  # in_features not a multiple of 4
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.emb.weight  # tied: must stay dense

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = self.b(torch.relu(self.a(h))) + self.dense(h)
        return self.head(h)


# ------------------------------------------------------------------------------ the pattern
def test_prune_2to4_keeps_the_two_largest_of_every_group() -> None:
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 9.0]])
    keep = prune_2to4_(w)
    assert w.tolist() == [[0.0, -4.0, 3.0, 0.0, 0.5, 0.0, 0.0, 9.0]]
    assert keep.sum().item() == 4
    assert is_2to4(w)


def test_check_2to4_names_module_row_and_group() -> None:
    w = torch.zeros(8, 16)
    w[5, 8:11] = 1.0  # row 5, group 2 has 3 nonzeros
    w[6, 0:4] = 1.0  # a later row violates too: the first one is reported
    with pytest.raises(
        NotSemiStructuredError,
        match=r"layers\.3\.mixer\.in_proj: .*row 5, group 2 \(input columns 8\.\.11\) has 3 nonzeros",
    ):
        check_2to4(w, "layers.3.mixer.in_proj")
    assert not is_2to4(w)


def test_check_2to4_refuses_bad_shapes() -> None:
    with pytest.raises(NotSemiStructuredError, match="in_features=6 is not a multiple of 4"):
        check_2to4(torch.zeros(4, 6), "lin")
    with pytest.raises(NotSemiStructuredError, match="2-D"):
        check_2to4(torch.zeros(4), "lin")
    assert is_2to4(torch.zeros(4, 8))  # all-zero groups are 2:4


def test_from_linear_refuses_non_2to4_weight_with_a_clear_error() -> None:
    lin = _linear(16, 8, pruned=False)
    with pytest.raises(
        NotSemiStructuredError, match=r"^backbone\.x_proj: weight is not 2:4 .* row 0, group 0"
    ):
        SemiStructuredLinear.from_linear(lin, name="backbone.x_proj")
    with pytest.raises(TypeError, match=r"expected an nn\.Linear"):
        SemiStructuredLinear.from_linear(nn.Conv1d(4, 4, 1), name="conv")


# ------------------------------------------------------------------------------ fallback
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (2, 7), ()])
def test_fallback_equals_dense_masked_matmul(bias: bool, lead: tuple[int, ...]) -> None:
    lin = _linear(32, 24, bias=bias)
    mask = lin.weight != 0
    module = SemiStructuredLinear.from_linear(lin, name="proj")
    assert module.path == "masked_dense" and "CUDA" in module.reason
    x = torch.randn(*lead, 32)
    want = x @ (lin.weight * mask).T + (lin.bias if bias else 0)
    got = module(x)
    assert got.shape == (*lead, 24)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(got, lin(x))  # bit-identical to the original linear
    assert module.weight is lin.weight  # shared, not copied
    assert "path='masked_dense'" in repr(module)


def test_forced_sparse_path_without_cuda_raises() -> None:
    lin = _linear(64, 64)
    for path in ("cusparselt", "cutlass"):
        with pytest.raises(ValueError, match=rf"path='{path}' cannot run here"):
            SemiStructuredLinear.from_linear(lin, path=path)
    with pytest.raises(ValueError, match="path: expected one of"):
        SemiStructuredLinear.from_linear(lin, path="fast")
    assert SemiStructuredLinear.from_linear(lin, path="masked_dense").path == "masked_dense"


def test_to_linear_round_trip_reuses_parameters() -> None:
    lin = _linear(16, 8)
    back = SemiStructuredLinear.from_linear(lin).to_linear()
    assert type(back) is nn.Linear and back.weight is lin.weight and back.bias is lin.bias


def test_status_on_cpu() -> None:
    path, reason = semi_structured_status("cpu")
    assert path == "masked_dense" and "CUDA" in reason
    path, reason = semi_structured_status()
    assert path in PATHS and reason


# ------------------------------------------------------------------------------ model level
def test_sparsify_and_densify_a_model() -> None:
    model = Tiny().eval()
    ids = torch.randint(0, 10, (2, 5))
    before = model(ids)
    originals = {n: (m.weight, m.bias) for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    report = sparsify_(model)
    assert isinstance(report, SparsifyReport)
    assert report.swapped == {"a": "masked_dense", "b": "masked_dense"}
    assert set(report.skipped) == {"dense", "odd", "head"}
    assert "row 0, group" in report.skipped["dense"]
    assert "not a multiple of 4" in report.skipped["odd"]
    assert "tied" in report.skipped["head"]
    assert report.paths() == {"masked_dense": 2}
    assert "2 linear(s) swapped, 3 skipped" in str(report)
    assert isinstance(model.a, SemiStructuredLinear) and type(model.dense) is nn.Linear
    assert torch.equal(model(ids), before)

    assert sorted(densify_(model)) == ["a", "b"]
    assert type(model.a) is nn.Linear
    for name, (w, b) in originals.items():
        m = model.get_submodule(name)
        assert m.weight is w and m.bias is b
    assert torch.equal(model(ids), before)
    assert set(model.state_dict()) == set(Tiny().state_dict())


def test_sparsify_filter_and_strict() -> None:
    model = Tiny()
    report = sparsify_(model, filter_fn=lambda name, _m: name == "b")
    assert list(report.swapped) == ["b"] and report.skipped["a"] == "excluded by filter_fn"
    with pytest.raises(NotSemiStructuredError, match=r"^dense: "):
        sparsify_(Tiny(), filter_fn=lambda name, _m: name == "dense", strict=True)


def test_nn_layer_imports_only_ops_and_sparsity() -> None:
    for path in (ROOT / "sparsessm_kernels" / "nn").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert (node.module or "").split(".")[0] in ("ops", "sparsity"), path
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("sparsessm_kernels.") or node.module.split(".")[1] in (
                    "ops",
                    "sparsity",
                    "nn",
                ), path


# ------------------------------------------------------------------------------ GPU
def _cuda_sm80() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("fan_in", "fan_out"), [(1536, 80), (2048, 96), (768, 3072), (1536, 768), (64, 40)])
def test_gpu_semi_structured_matches_dense(dtype: torch.dtype, fan_in: int, fan_out: int) -> None:
    lin = _linear(fan_in, fan_out).to(device="cuda", dtype=dtype)
    module = SemiStructuredLinear.from_linear(lin, name="proj")
    if not _cuda_sm80():
        assert module.path == "masked_dense"
        return
    assert module.path in ("cusparselt", "cutlass"), module.reason
    for lead in ((1,), (7,), (3, 129)):
        x = torch.randn(*lead, fan_in, device="cuda", dtype=dtype)
        got, want = module(x).float(), lin(x).float()
        assert got.shape == (*lead, fan_out)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    back = module.to_linear()
    assert torch.equal(back.weight, lin.weight) and back.bias is lin.bias


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["cusparselt", "cutlass"])
def test_gpu_forced_paths(path: str) -> None:
    if not _cuda_sm80():
        pytest.skip("needs sm80+")
    lin = _linear(256, 96).to(device="cuda", dtype=torch.bfloat16)
    try:
        module = SemiStructuredLinear.from_linear(lin, path=path)
    except ValueError as exc:
        pytest.skip(str(exc))
    x = torch.randn(33, 256, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(module(x).float(), lin(x).float(), rtol=2e-2, atol=5e-2)


@pytest.mark.gpu
def test_gpu_status_and_fp32_fallback() -> None:
    path, reason = semi_structured_status("cuda")
    assert path in PATHS and reason
    lin = _linear(64, 64).cuda()
    module = SemiStructuredLinear.from_linear(lin)
    assert module.path == "masked_dense"  # float32 weights
    x = torch.randn(4, 64, device="cuda")
    assert torch.equal(module(x), F.linear(x, lin.weight, lin.bias))
