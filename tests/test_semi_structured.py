"""2:4 semi-structured linears: pattern checks, the masked dense fallback, sparsify_ / densify_."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsessm_kernels.nn.semi_structured as ss
from sparsessm_kernels.nn import (
    DEFAULT_M_BUCKETS,
    PATHS,
    BucketChoice,
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


# ------------------------------------------------------------------------------ direct cuSPARSELt (faked)
class FakeCusparselt:
    """Counting stand-ins for ``torch._cslt_compress`` / ``_cslt_sparse_mm`` / ``_cslt_sparse_mm_search``.

    The fake compressed format: per row, the 2 kept values of every group of 4 followed by their
    positions in the group, flattened (``out * in`` elements, like the real 1-D buffer).
    """

    def __init__(self) -> None:
        self.compress_calls = 0
        self.mm_calls: list[dict] = []
        self.search_calls = 0

    def compress(self, dense: torch.Tensor) -> torch.Tensor:
        self.compress_calls += 1
        out_f, in_f = dense.shape
        groups = dense.reshape(out_f, in_f // 4, 4)
        pos = torch.sort((groups != 0).int(), dim=-1, descending=True, stable=True).indices[..., :2]
        values = torch.gather(groups, -1, pos)
        return torch.cat([values.reshape(out_f, -1), pos.reshape(out_f, -1).to(dense.dtype)], dim=1).reshape(
            -1
        )

    @staticmethod
    def decompress(packed: torch.Tensor, in_f: int) -> torch.Tensor:
        rows = packed.reshape(-1, in_f)
        values, pos = rows[:, : in_f // 2], rows[:, in_f // 2 :].long()
        dense = torch.zeros(rows.shape[0], in_f // 4, 4, dtype=torch.float32)
        dense.scatter_(-1, pos.reshape(rows.shape[0], -1, 2), values.float().reshape(rows.shape[0], -1, 2))
        return dense.reshape(rows.shape[0], in_f)

    def mm(
        self, packed, dense_b, bias=None, alpha=None, out_dtype=None, transpose_result=False, alg_id=0, **kw
    ):
        self.mm_calls.append({"shape": tuple(dense_b.shape), "alg_id": alg_id, "transpose": transpose_result})
        assert not isinstance(packed, torch.sparse.SparseSemiStructuredTensor)
        assert dense_b.shape[1] % 8 == 0  # the token count is padded to a multiple of 8
        w = self.decompress(packed, dense_b.shape[0])
        res = w @ dense_b.float()
        if bias is not None:
            res = res + bias.float()[:, None]
        res = res.to(dense_b.dtype)
        return res.t().contiguous() if transpose_result else res

    def search(self, packed, dense_b, bias=None, alpha=None, out_dtype=None, transpose_result=False):
        self.search_calls += 1
        return 7


@pytest.fixture
def fake_cslt(monkeypatch: pytest.MonkeyPatch) -> FakeCusparselt:
    """cuSPARSELt faked by counting references, and a mocked capability that resolves to it."""
    fake = FakeCusparselt()
    monkeypatch.setattr(torch, "_cslt_compress", fake.compress)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", fake.mm)
    monkeypatch.setattr(torch, "_cslt_sparse_mm_search", fake.search)
    monkeypatch.setattr(ss, "_resolve", lambda device, dtype, requested="auto": ("cusparselt", "mocked GPU"))

    def no_subclass(*args: object, **kwargs: object) -> None:
        raise AssertionError("a SparseSemiStructuredTensor was built")

    for cls in (
        torch.sparse.SparseSemiStructuredTensorCUSPARSELT,
        torch.sparse.SparseSemiStructuredTensorCUTLASS,
    ):
        monkeypatch.setattr(cls, "from_dense", no_subclass)
    return fake


def _bf16_linear(fan_in: int, fan_out: int, *, bias: bool = True, seed: int = 0) -> nn.Linear:
    return _linear(fan_in, fan_out, bias=bias, seed=seed).to(torch.bfloat16)


def _timer_sparse_from(threshold: int, calls: list | None = None):
    """A timer that makes 2:4 win (1 ms vs 2 ms) exactly for buckets ``>= threshold``."""

    def timer(kind: str, m: int, fn) -> float:
        if calls is not None:
            calls.append((kind, m))
        fn()  # the candidate must run
        return (1.0 if m >= threshold else 3.0) if kind == "sparse" else 2.0

    return timer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("fan_in", "fan_out"), [(64, 48), (48, 80), (32, 20)])
@pytest.mark.parametrize("lead", [(1,), (5,), (3, 7), (16,)])
def test_direct_cusparselt_compresses_once_and_calls_one_mm(
    fake_cslt: FakeCusparselt, bias: bool, fan_in: int, fan_out: int, lead: tuple[int, ...]
) -> None:
    lin = _bf16_linear(fan_in, fan_out, bias=bias)
    module = SemiStructuredLinear.from_linear(lin, name="proj", select="sparse")
    assert module.path == "cusparselt" and fake_cslt.compress_calls == 1
    assert fake_cslt.search_calls == len(DEFAULT_M_BUCKETS)
    assert all(c.sparse and c.alg_id == 7 for c in module.plan)
    assert module.weight is lin.weight and type(module.packed) is torch.Tensor  # a plain buffer
    assert not any(
        isinstance(t, torch.sparse.SparseSemiStructuredTensor) for t in module.state_dict().values()
    )
    assert set(module.state_dict()) == set(lin.state_dict())  # the compressed buffer is not saved
    x = torch.randn(*lead, fan_in).to(torch.bfloat16)
    for _ in range(3):
        before = len(fake_cslt.mm_calls)
        got = module(x)
        assert len(fake_cslt.mm_calls) == before + 1  # exactly one matmul per forward
    assert fake_cslt.compress_calls == 1
    call = fake_cslt.mm_calls[-1]
    assert call["transpose"] and call["alg_id"] == 7
    want = x.float() @ lin.weight.float().T + (lin.bias.float() if bias else 0)
    assert got.shape == (*lead, fan_out) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    assert module.to_linear().weight is lin.weight


def test_direct_cusparselt_selects_per_bucket_by_timing(fake_cslt: FakeCusparselt) -> None:
    calls: list = []
    module = SemiStructuredLinear.from_linear(
        _bf16_linear(32, 32), buckets=(1, 16, 256, 4096), timer=_timer_sparse_from(256, calls)
    )
    assert [c.sparse for c in module.plan] == [False, False, True, True]
    assert module.plan[2] == BucketChoice(256, True, 7, 1.0, 2.0)
    assert sorted(set(calls)) == sorted({(k, m) for k in ("sparse", "dense") for m in (1, 16, 256, 4096)})
    assert "2:4 in 2 of 4 token buckets" in module.reason and "sparse_buckets=[256, 4096]" in repr(module)
    fake_cslt.mm_calls.clear()
    for m, sparse in ((1, False), (16, False), (17, True), (300, True), (9000, True)):
        before = len(fake_cslt.mm_calls)
        module(torch.randn(m, 32).to(torch.bfloat16))
        assert len(fake_cslt.mm_calls) - before == int(sparse), m


def test_sparsify_times_each_shape_once(fake_cslt: FakeCusparselt) -> None:
    model = nn.Sequential(
        _bf16_linear(32, 64, seed=1), _bf16_linear(32, 64, seed=2), _bf16_linear(64, 32, seed=3)
    )
    calls: list = []
    report = sparsify_(model, buckets=(8, 512), timer=_timer_sparse_from(512, calls))
    assert report.paths() == {"cusparselt": 3}
    assert fake_cslt.compress_calls == 3  # one compression per layer
    assert len(calls) == 2 * 2 * 2  # 2 shapes x 2 buckets x (sparse, dense)
    assert [c.sparse for c in model[1].plan] == [False, True]


def test_direct_cusparselt_refusals(fake_cslt: FakeCusparselt) -> None:
    lin = _bf16_linear(32, 32)
    with pytest.raises(ValueError, match="select='timed' needs a CUDA weight or an explicit timer"):
        SemiStructuredLinear.from_linear(lin)
    with pytest.raises(ValueError, match="select: expected one of"):
        SemiStructuredLinear.from_linear(lin, select="fastest")
    with pytest.raises(ValueError, match="buckets: expected strictly ascending"):
        SemiStructuredLinear.from_linear(lin, select="sparse", buckets=(16, 4))
    module = SemiStructuredLinear.from_linear(lin, select="sparse")
    with pytest.raises(TypeError, match=r"input dtype torch\.float32 does not match"):
        module(torch.randn(2, 32))
    module.half()
    with pytest.raises(RuntimeError, match=r"compressed 2:4 weight was cast from torch\.bfloat16"):
        module(torch.randn(2, 32).half())


def test_bucket_of() -> None:
    assert [ss.bucket_of(m, (1, 16, 256)) for m in (1, 2, 16, 17, 256, 10**6)] == [0, 1, 1, 2, 2, 2]


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


@pytest.mark.gpu
@pytest.mark.parametrize(("fan_in", "fan_out"), [(768, 3072), (1536, 768), (1536, 80)])
def test_gpu_direct_cusparselt_matches_dense_and_captures(fan_in: int, fan_out: int) -> None:
    if not _cuda_sm80() or not torch.backends.cusparselt.is_available():
        pytest.skip("needs sm80+ and cuSPARSELt")
    lin = _linear(fan_in, fan_out).to(device="cuda", dtype=torch.bfloat16)
    module = SemiStructuredLinear.from_linear(lin, name="proj", path="cusparselt", select="sparse")
    assert module.path == "cusparselt" and type(module.packed) is torch.Tensor
    for lead in ((1,), (7,), (3, 129), (4096,)):
        x = torch.randn(*lead, fan_in, device="cuda", dtype=torch.bfloat16)
        got, want = module(x).float(), lin(x).float()
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    x = torch.randn(64, fan_in, device="cuda", dtype=torch.bfloat16)
    module(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # the per-call plan set-up runs at capture only
        out = module(x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, module(x))
    timed = SemiStructuredLinear.from_linear(lin, name="proj", path="cusparselt")  # select="timed"
    assert len(timed.plan) == len(DEFAULT_M_BUCKETS)
    assert all(c.sparse == (c.sparse_ms < c.dense_ms) for c in timed.plan)
