"""sparsessm_kernels.integrations.transformers on small random transformers Mamba models (CPU)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import MambaConfig, MambaForCausalLM  # noqa: E402
from transformers.models.mamba import modeling_mamba  # noqa: E402

from sparsessm_kernels.integrations import ApplyReport  # noqa: E402
from sparsessm_kernels.integrations import transformers as hf  # noqa: E402
from sparsessm_kernels.models import MambaLM, a_log_name  # noqa: E402
from sparsessm_kernels.nn import SemiStructuredLinear, prune_2to4_  # noqa: E402
from sparsessm_kernels.sparsity import column_mask, nm_mask, unstructured_mask  # noqa: E402

VOCAB, D_MODEL, N_LAYER, N = 96, 32, 3, 16
D_INNER = 2 * D_MODEL


def _config(**kw) -> MambaConfig:
    return MambaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=N_LAYER, state_size=N, expand=2,
        conv_kernel=4, eos_token_id=None, pad_token_id=None, bos_token_id=None, **kw,
    )  # fmt: skip


def _masks(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        a_log_name(0): column_mask(torch.rand(N, generator=g), 0.5),
        a_log_name(1): nm_mask(torch.rand(D_INNER, N, generator=g), 2, 4),
        a_log_name(2): unstructured_mask(torch.rand(D_INNER, N, generator=g), 0.5),
    }


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random MambaForCausalLM whose in_proj / x_proj / out_proj are 2:4 sparse."""
    torch.manual_seed(0)
    model = MambaForCausalLM(_config()).eval()
    with torch.no_grad():
        for blk in model.backbone.layers:
            blk.mixer.dt_proj.bias.uniform_(-4, -2)
            for name in ("in_proj", "x_proj", "out_proj"):
                prune_2to4_(getattr(blk.mixer, name))
    path = tmp_path_factory.mktemp("hf_mamba")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pruned_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model saved by MambaLM with masks (sparsity.safetensors, per-layer modes)."""
    ref = MambaLM.from_pretrained(model_dir)
    for i, (name, mask) in enumerate(_masks().items()):
        assert name == a_log_name(i)
        ref.set_state_mask(i, mask, pruned_states="remove" if i == 1 else "zero_transition")
    path = tmp_path_factory.mktemp("pruned")
    ref.save_pretrained(path)
    return path


def _hf(path: Path) -> MambaForCausalLM:
    return MambaForCausalLM.from_pretrained(path).eval()


def _ids(b: int = 2, l: int = 10, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, l), generator=torch.Generator().manual_seed(seed))


#: The model-level cache keyword of the installed transformers (``cache`` from 5.24,
#: ``cache_params`` before; the old name is a deprecated alias until 5.40).
CACHE_KW = "cache" if "cache" in inspect.signature(MambaForCausalLM.forward).parameters else "cache_params"


def _cached(cache) -> dict:
    return {CACHE_KW: cache, "use_cache": True}


def _generate(model: MambaForCausalLM, ids: torch.Tensor, n: int = 8) -> torch.Tensor:
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)


# ------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
def test_apply_matches_masked_reference(model_dir: Path, pruned_states: str) -> None:
    model = _hf(model_dir)
    ref = MambaLM.from_pretrained(model_dir).eval()
    masks = _masks()
    for i, mask in enumerate(masks.values()):
        ref.set_state_mask(i, mask, pruned_states=pruned_states)
    ids = _ids()
    with torch.no_grad():
        stock = model(ids).logits
        report = hf.apply(model, masks, pruned_states=pruned_states)
        assert isinstance(report, ApplyReport) and report.sparse_layers == [0, 1, 2]
        assert report.projections is not None and len(report.projections.swapped) == 3 * N_LAYER
        assert all(isinstance(m, SemiStructuredLinear) for m in (model.backbone.layers[0].mixer.in_proj,))
        want = ref(ids)
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(stock, want, atol=1e-3)  # the masks matter
        assert torch.equal(_generate(model, ids), ref.generate(ids, max_new_tokens=8))

        assert hf.revert(model) == [0, 1, 2]
        assert type(model.backbone.layers[0].mixer.in_proj) is nn.Linear
        assert "forward" not in model.backbone.layers[0].mixer.__dict__
        assert torch.equal(model(ids).logits, stock)  # exactly the stock model again


def test_masks_from_name_or_path_directory_and_file(pruned_dir: Path) -> None:
    ref = MambaLM.from_pretrained(pruned_dir).eval()  # restores masks and per-layer modes
    assert ref.pruned_states_map()[a_log_name(1)] == "remove"
    ids = _ids(seed=4)
    want = ref(ids)
    for source in (None, pruned_dir, pruned_dir / "sparsity.safetensors"):
        model = _hf(pruned_dir)
        report = hf.apply(model, source)
        assert report.masks_source.endswith("sparsity.safetensors")
        assert "remove" in report.layers[1] and "zero_transition" in report.layers[0]
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-5)


def test_no_masks_runs_dense_and_says_so(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _hf(model_dir)
    ids = _ids(seed=5)
    with torch.no_grad():
        stock = model(ids).logits
        with caplog.at_level(logging.INFO, logger="sparsessm_kernels"):
            report = hf.apply(model)
        assert "has no sparsity.safetensors" in caplog.text
        assert report.sparse_layers == [] and set(report.layers.values()) == {"dense"}
        torch.testing.assert_close(model(ids).logits, stock, rtol=1e-4, atol=1e-4)
        assert torch.equal(_generate(model, ids, 4), _generate_stock(model_dir, ids, 4))

    fresh = MambaForCausalLM(_config())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparsessm_kernels"):
        hf.apply(fresh)
    assert "running every layer dense" in caplog.text


def _generate_stock(path: Path, ids: torch.Tensor, n: int) -> torch.Tensor:
    return _generate(_hf(path), ids, n)


def test_compact_cache_memory(model_dir: Path) -> None:
    model = _hf(model_dir)
    ids = _ids(b=3, l=7)
    with torch.no_grad():
        dense_cache = model(ids, use_cache=True).cache_params
        hf.apply(model, _masks())
        cache = model(ids, use_cache=True).cache_params
    dense = [layer.recurrent_states[0] for layer in dense_cache.layers]
    sparse = [layer.recurrent_states[0] for layer in cache.layers]
    assert [tuple(s.shape) for s in dense] == [(3, D_INNER, N)] * 3
    assert [tuple(s.shape) for s in sparse] == [(3, D_INNER, 8), (3, D_INNER, 8), (3, D_INNER, N)]
    nbytes = [s.numel() * s.element_size() for s in sparse]
    dense_nbytes = dense[0].numel() * dense[0].element_size()
    assert nbytes[0] * 2 == dense_nbytes and nbytes[1] * 2 == dense_nbytes  # column 50 %, 2:4: half
    assert nbytes[2] == dense_nbytes  # unstructured: dense state
    assert all(s.dtype == torch.float32 for s in sparse)


def test_cache_allocated_dense_before_apply_keeps_working(model_dir: Path) -> None:
    model = _hf(model_dir)
    ref = MambaLM.from_pretrained(model_dir).eval()
    masks = _masks()
    for i, mask in enumerate(masks.values()):
        ref.set_state_mask(i, mask)
    ids = _ids(l=8, seed=10)
    with torch.no_grad():
        cache = model(ids[:, :7], use_cache=True).cache_params  # stock: dense (b, d, n) states
        hf.apply(model, masks)
        cache.reset()
        model(ids[:, :7], **_cached(cache))  # patched prefill into the dense cache
        assert tuple(cache.layers[0].recurrent_states[0].shape) == (2, D_INNER, N)
        last = model(ids[:, 7:], **_cached(cache)).logits[:, -1]
        torch.testing.assert_close(last, ref(ids)[:, -1], rtol=1e-5, atol=1e-5)


def test_multi_token_continuation_uses_the_cached_state(model_dir: Path) -> None:
    model = _hf(model_dir)
    ref = MambaLM.from_pretrained(model_dir).eval()
    masks = _masks()
    for i, mask in enumerate(masks.values()):
        ref.set_state_mask(i, mask)
    hf.apply(model, masks)
    ids = _ids(l=9, seed=6)
    with torch.no_grad():
        first = model(ids[:, :6], use_cache=True)
        rest = model(ids[:, 6:], **_cached(first.cache_params)).logits
        torch.testing.assert_close(rest, ref(ids)[:, 6:], rtol=1e-5, atol=1e-5)


def test_decode_step_reads_the_cache_whatever_its_keyword(model_dir: Path) -> None:
    """The stock block passes the cache as ``cache=`` (5.24+) or ``cache_params=`` (before): a
    patched forward that dropped it would decode from an empty state (wrong logits)."""
    model = _hf(model_dir)
    ref = MambaLM.from_pretrained(model_dir).eval()
    masks = _masks()
    for i, mask in enumerate(masks.values()):
        ref.set_state_mask(i, mask)
    hf.apply(model, masks)
    ids = _ids(l=7, seed=12)
    with torch.no_grad():
        want = ref(ids)[:, -1]
        cache = model(ids[:, :6], use_cache=True).cache_params
        step = model(ids[:, 6:], **_cached(cache)).logits[:, -1]  # through the stock block
        torch.testing.assert_close(step, want, rtol=1e-5, atol=1e-5)
        mixer = model.backbone.layers[0].mixer
        hidden = torch.randn(2, 1, D_MODEL)
        outs = []
        for call in ("cache", "cache_params", "positional"):
            cache = model(ids[:, :6], use_cache=True).cache_params
            if call == "positional":
                outs.append(mixer(hidden, cache))
            else:
                outs.append(mixer(hidden, **{call: cache}))
        fresh = mixer(hidden)  # no cache: a one-token prefill from the zero state
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
        assert not torch.allclose(outs[0], fresh, atol=1e-4)
        with pytest.raises(TypeError, match=r"unsupported arguments \['seq_idx'\]"):
            mixer(hidden, seq_idx=torch.zeros(2, 1, dtype=torch.int32))
        with pytest.raises(TypeError, match="two different caches"):
            mixer(hidden, cache=cache, cache_params=model(ids[:, :6], use_cache=True).cache_params)


def test_padding_attention_mask_matches_stock(model_dir: Path) -> None:
    model = _hf(model_dir)
    ids = _ids(l=8, seed=7)
    attn = torch.ones_like(ids)
    attn[0, :3] = 0  # left padding in row 0
    with torch.no_grad():
        stock = model(ids, attention_mask=attn).logits
        hf.apply(model)
        torch.testing.assert_close(model(ids, attention_mask=attn).logits, stock, rtol=1e-4, atol=1e-4)


def test_module_globals_and_other_instances_untouched(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan, step, forward = (
        modeling_mamba.mamba_selective_scan,
        modeling_mamba.mamba_selective_state_update,
        modeling_mamba.MambaMixer.forward,
    )
    model, other = _hf(model_dir), _hf(model_dir)
    hf.apply(model, _masks())
    assert modeling_mamba.mamba_selective_scan is scan
    assert modeling_mamba.mamba_selective_state_update is step
    assert modeling_mamba.MambaMixer.forward is forward
    assert "forward" not in other.backbone.layers[0].mixer.__dict__

    def broken(*args, **kwargs):  # e.g. mamba_ssm bound by transformers but unusable here
        raise RuntimeError("mamba_ssm kernel called")

    for name in ("mamba_selective_scan", "mamba_selective_state_update", "mamba_inner_fn"):
        monkeypatch.setattr(modeling_mamba, name, broken)
    ids = _ids(seed=8)
    with torch.no_grad():
        _generate(model, ids, 3)  # the patched path never calls transformers' bound kernels
        with pytest.raises(RuntimeError, match="mamba_ssm kernel called"):
            other(ids)


def test_options_and_reapply(model_dir: Path) -> None:
    model = _hf(model_dir)
    report = hf.apply(model, _masks(), sparsify_projections=False, compact_cache=False)
    assert report.projections is None and type(model.backbone.layers[0].mixer.in_proj) is nn.Linear
    assert all("dense ssm cache" in report.layers[i] for i in range(2))
    report = hf.apply(model, {a_log_name(2): _masks()[a_log_name(2)]})  # replaces the previous patch
    assert report.sparse_layers == [2] and hf.is_applied(model)
    hf.revert(model)
    assert not hf.is_applied(model)

    unpruned = MambaForCausalLM(_config())
    report = hf.apply(unpruned)
    assert report.projections is not None and not report.projections.swapped
    assert "not 2:4" in report.projections.skipped["backbone.layers.0.mixer.in_proj"]


# ------------------------------------------------------------------------------ errors
def test_errors(model_dir: Path, tmp_path: Path) -> None:
    model = _hf(model_dir)
    with pytest.raises(ValueError, match=r"do not name the A_log of a layer"):
        hf.apply(model, {"backbone.layers.7.mixer.A_log": torch.ones(N, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"layer 0 needs \(16,\) or \(64, 16\)"):
        hf.apply(model, {a_log_name(0): torch.ones(8, dtype=torch.bool)})
    with pytest.raises(FileNotFoundError, match=r"directory without sparsity\.safetensors"):
        hf.apply(model, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf.apply(model, tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="pruned_states"):
        hf.apply(model, _masks(), pruned_states="drop")
    with pytest.raises(hf.UnsupportedModelError, match=r"backbone\.layers"):
        hf.apply(nn.Linear(2, 2))
    assert not hf.is_applied(model)

    class Mamba2Mixer(nn.Module):
        pass

    model.backbone.layers[1].mixer = Mamba2Mixer()
    with pytest.raises(hf.UnsupportedModelError, match="only Mamba2ForCausalLM"):
        hf.apply(model)
    if not torch.cuda.is_available():
        with pytest.raises((ValueError, RuntimeError), match="cuda"):
            hf.apply(_hf(model_dir), backend="cuda")  # not usable for CPU tensors
    with pytest.raises(ValueError, match="backend"):
        hf.apply(_hf(model_dir), backend="fast")


def test_pre_5_transformers_layouts_are_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.cache_utils import Cache

    class MambaMixer(modeling_mamba.MambaMixer):  # transformers 4.x signature
        def forward(self, hidden_states, cache_params=None, cache_position=None, attention_mask=None):
            raise AssertionError("not called")

    model = _hf(model_dir)
    model.backbone.layers[0].mixer.__class__ = MambaMixer
    old_layout = (
        rf"transformers {transformers.__version__}.*cache_position.*transformers < 5\.5.*"
        r"supports transformers >= 5\.15"
    )
    with pytest.raises(hf.UnsupportedModelError, match=old_layout):
        hf.apply(model)
    monkeypatch.delattr(Cache, "get_recurrent_state", raising=False)
    monkeypatch.delattr(Cache, "has_previous_state", raising=False)
    refused = (
        rf"transformers {transformers.__version__}: its Cache lacks \['has_previous_state'\].*"
        r"supports transformers >= 5\.15"
    )
    with pytest.raises(hf.UnsupportedModelError, match=refused):
        hf.apply(_hf(model_dir))
    monkeypatch.undo()


def test_releases_older_than_the_supported_range_are_refused(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf, "_transformers_version", lambda: "5.14.1")
    with pytest.raises(
        hf.UnsupportedModelError, match=r"transformers 5\.14\.1 is older.*\(transformers >= 5\.15\)"
    ):
        hf.apply(_hf(model_dir))
    monkeypatch.setattr(hf, "_transformers_version", lambda: "5.40.0.dev0")  # newer: checked by capability
    assert hf.apply(_hf(model_dir)).sparse_layers == []


def test_single_tensor_cache_layers_are_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 5.5-5.13: one conv / recurrent tensor per cache layer, no get_recurrent_state."""
    from transformers import cache_utils

    class OldLayerMixin:
        def __init__(self) -> None:
            self.conv_states = None

    monkeypatch.delattr(cache_utils.Cache, "get_recurrent_state", raising=False)
    monkeypatch.setattr(cache_utils, "LinearAttentionCacheLayerMixin", OldLayerMixin)
    with pytest.raises(hf.UnsupportedModelError, match=r"5\.5-5\.13\).*supports transformers >= 5\.15"):
        hf.apply(_hf(model_dir))


# ------------------------------------------------------------------------------ FalconMamba
def test_falcon_mamba() -> None:
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    torch.manual_seed(0)
    config = FalconMambaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=2, state_size=N, expand=2,
        eos_token_id=None, pad_token_id=None, bos_token_id=None,
    )  # fmt: skip
    model = FalconMambaForCausalLM(config).eval()
    ids = _ids(seed=9)
    mask = column_mask(torch.rand(N, generator=torch.Generator().manual_seed(2)), 0.5)
    with torch.no_grad():
        stock = model(ids).logits
        # zero_transition on a column mask == stock kernels with A_log = 60 on the pruned states
        stock_masked = FalconMambaForCausalLM(config).eval()
        stock_masked.load_state_dict(model.state_dict())
        for blk in stock_masked.backbone.layers:
            blk.mixer.A_log[:, ~mask] = 60.0
        want = stock_masked(ids).logits
        report = hf.apply(model, {a_log_name(0): mask, a_log_name(1): mask})
        assert report.sparse_layers == [0, 1]
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-4, atol=1e-4)
        assert torch.equal(_generate(model, ids, 4), _generate(stock_masked, ids, 4))
        hf.revert(model)
        assert torch.equal(model(ids).logits, stock)


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_apply_matches_masked_reference(model_dir: Path, dtype: torch.dtype) -> None:
    model = MambaForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()
    ref = MambaLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()
    masks = _masks()
    for i, mask in enumerate(masks.values()):
        ref.set_state_mask(i, mask)
    report = hf.apply(model, masks)
    ids = _ids().cuda()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
        if dtype == torch.float32:
            assert torch.equal(_generate(model, ids), ref.generate(ids, max_new_tokens=8))
        else:
            paths = set(report.projections.swapped.values())
            assert paths <= {"cusparselt", "cutlass", "masked_dense"}
            assert _generate(model, ids).shape == (2, 18)
        cache = model(ids, use_cache=True).cache_params
        assert tuple(cache.layers[0].recurrent_states[0].shape) == (2, D_INNER, 8)
    hf.revert(model)
    assert type(model.backbone.layers[0].mixer.in_proj) is nn.Linear
