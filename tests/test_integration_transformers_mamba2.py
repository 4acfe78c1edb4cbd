"""sparsessm_kernels.integrations.transformers on small random transformers Mamba2ForCausalLM models
(CPU): the patched model against Mamba2LM with the same masks (an independent implementation of the
same math), against the stock model when unmasked, and the patch's bookkeeping."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import Mamba2Config, Mamba2ForCausalLM  # noqa: E402
from transformers.models.mamba2 import modeling_mamba2  # noqa: E402

from sparsessm_kernels.integrations import transformers as hf  # noqa: E402
from sparsessm_kernels.models import Mamba2LM, a_log_name, ssm_state_name  # noqa: E402
from sparsessm_kernels.nn import SemiStructuredLinear, prune_2to4_  # noqa: E402
from sparsessm_kernels.ops import SSDStateLayout  # noqa: E402
from sparsessm_kernels.ops.dispatch import BackendUnavailableError  # noqa: E402

VOCAB, D_MODEL, N_LAYER, NHEADS, HEADDIM, N = 64, 32, 3, 8, 8, 8
#: transformers up to 5.17 normalises the gated RMSNorm over all channels, later releases per group
#: (as Mamba2LM and mamba_ssm do): with one group both agree, so the Mamba2LM comparisons use one
#: group there and two groups where transformers computes them the same way.
GROUPED_NORM = "group_size" in inspect.signature(modeling_mamba2.MambaRMSNormGated.__init__).parameters
NGROUPS = 2 if GROUPED_NORM else 1
TOL = {"rtol": 2e-5, "atol": 2e-5}
MODES = ("remove", "zero_transition")


def _config(**kw) -> Mamba2Config:
    args = {
        "vocab_size": VOCAB, "hidden_size": D_MODEL, "num_hidden_layers": N_LAYER, "num_heads": NHEADS,
        "head_dim": HEADDIM, "state_size": N, "n_groups": NGROUPS, "expand": 2, "conv_kernel": 4,
        "chunk_size": 4, "tie_word_embeddings": False, "eos_token_id": None, "pad_token_id": None,
        "bos_token_id": None,
    }  # fmt: skip
    args.update(kw)
    return Mamba2Config(**args)


def _random_model(seed: int = 0, **kw) -> Mamba2ForCausalLM:
    """Random weights with O(1) activations, time steps that keep memory and 2:4 projections."""
    torch.manual_seed(seed)
    model = Mamba2ForCausalLM(_config(**kw)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for blk in model.backbone.layers:
            m = blk.mixer
            m.A_log.copy_(torch.log(0.3 + 1.5 * torch.rand(NHEADS, generator=g)))
            m.dt_bias.uniform_(-1.0, 1.0, generator=g)
            m.D.copy_(0.5 * torch.randn(NHEADS, generator=g))
            m.norm.weight.copy_(1.0 + 0.1 * torch.randn(m.norm.weight.shape, generator=g))
            for lin in (m.in_proj, m.out_proj):
                prune_2to4_(lin)
        model.backbone.embeddings.weight.normal_(0.0, 0.5, generator=g)
        model.lm_head.weight.normal_(0.0, 0.5, generator=g)
    return model


def _state_mask(rows: int, counts: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, N, dtype=torch.bool)
    for r, k in enumerate(counts):
        mask[r, torch.randperm(N, generator=g)[:k]] = True
    return mask


def _masks() -> dict[str, torch.Tensor]:
    """Layer 0: per-group mask keeping 4 states (compact cache); layer 1: per-head mask keeping 2 to 7
    states (dense cache) and a head transition mask; layer 2: a head transition mask only."""
    heads = torch.tensor([True, False, True, True, False, True, True, False])
    return {
        ssm_state_name(0): _state_mask(NGROUPS, [4] * NGROUPS, seed=1),
        ssm_state_name(1): _state_mask(NHEADS, [2, 7, 4, 5, 3, 6, 4, 2], seed=2),
        a_log_name(1): heads,
        a_log_name(2): heads.roll(1),
    }


def _set_masks(ref: Mamba2LM, masks: dict[str, torch.Tensor], pruned_states: str = "remove") -> Mamba2LM:
    for i in range(N_LAYER):
        if ssm_state_name(i) in masks:
            ref.set_state_mask(i, masks[ssm_state_name(i)], pruned_states=pruned_states)
        if a_log_name(i) in masks:
            ref.set_head_transition_mask(i, masks[a_log_name(i)])
    return ref


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf_mamba2")
    _random_model().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pruned_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model saved by Mamba2LM with the masks (sparsity.safetensors, per-layer modes)."""
    ref = _set_masks(Mamba2LM.from_pretrained(model_dir), _masks())
    ref.set_state_mask(1, _masks()[ssm_state_name(1)], pruned_states="zero_transition")
    path = tmp_path_factory.mktemp("pruned_mamba2")
    ref.save_pretrained(path)
    return path


def _hf(path: Path) -> Mamba2ForCausalLM:
    return Mamba2ForCausalLM.from_pretrained(path).eval()


def _ref(path: Path, pruned_states: str = "remove") -> Mamba2LM:
    return _set_masks(Mamba2LM.from_pretrained(path).eval(), _masks(), pruned_states)


def _ids(b: int = 2, l: int = 11, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, l), generator=torch.Generator().manual_seed(seed))


#: The model-level cache keyword of the installed transformers (``cache`` from 5.24, ``cache_params``
#: before; the old name is a deprecated alias until 5.40).
CACHE_KW = "cache" if "cache" in inspect.signature(Mamba2ForCausalLM.forward).parameters else "cache_params"


def _prefill(model: Mamba2ForCausalLM, ids: torch.Tensor):
    return getattr(model(ids, use_cache=True), CACHE_KW)


def _cached(cache) -> dict:
    return {CACHE_KW: cache, "use_cache": True}


def _generate(model: Mamba2ForCausalLM, ids: torch.Tensor, n: int = 6) -> torch.Tensor:
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)


# ------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("pruned_states", MODES)
def test_apply_matches_mamba2lm(model_dir: Path, pruned_states: str) -> None:
    model, ref = _hf(model_dir), _ref(model_dir, pruned_states)
    ids = _ids()
    with torch.no_grad():
        stock = model(ids).logits
        report = hf.apply(model, _masks(), pruned_states=pruned_states)
        assert report.sparse_layers == [0, 1, 2]
        assert "per-group state mask" in report.layers[0] and "compact ssm cache (4/8" in report.layers[0]
        assert "per-head state mask" in report.layers[1] and "head transition mask (5/8" in report.layers[1]
        assert report.layers[2] == "head transition mask (5/8 heads keep it)"
        assert report.projections is not None and len(report.projections.swapped) == 2 * N_LAYER
        assert isinstance(model.backbone.layers[0].mixer.in_proj, SemiStructuredLinear)
        want = ref(ids)
        torch.testing.assert_close(model(ids).logits, want, **TOL)
        assert not torch.allclose(stock, want, atol=1e-3)  # the masks matter
        assert torch.equal(_generate(model, ids), ref.generate(ids, max_new_tokens=6))

        assert hf.revert(model) == [0, 1, 2]
        assert type(model.backbone.layers[0].mixer.in_proj) is nn.Linear
        assert all("forward" not in blk.mixer.__dict__ for blk in model.backbone.layers)
        assert torch.equal(model(ids).logits, stock)  # the stock model, bit for bit
        assert not hf.is_applied(model)


def test_head_transition_mask_alone_and_per_head_uniform(model_dir: Path) -> None:
    """A per-head mask keeping the same count in every head gets a compact cache; a head mask alone
    changes the output."""
    masks = {
        ssm_state_name(0): _state_mask(NHEADS, [3] * NHEADS, seed=4),
        a_log_name(2): _masks()[a_log_name(1)],
    }
    model = _hf(model_dir)
    ref = _set_masks(Mamba2LM.from_pretrained(model_dir).eval(), masks, "zero_transition")
    report = hf.apply(model, masks, pruned_states="zero_transition")
    assert "compact ssm cache (3/8" in report.layers[0] and report.layers[1] == "dense"
    ids = _ids(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids), **TOL)
        cache = _prefill(model, ids)
    assert tuple(cache.layers[0].recurrent_states[0].shape) == (2, NHEADS, HEADDIM, 3)


def test_masks_from_name_or_path_directory_and_file(pruned_dir: Path) -> None:
    ref = Mamba2LM.from_pretrained(pruned_dir).eval()  # per-layer modes from the masks file
    ids = _ids(seed=4)
    with torch.no_grad():
        want = ref(ids)
        for source in (None, pruned_dir, pruned_dir / "sparsity.safetensors"):
            model = _hf(pruned_dir)
            report = hf.apply(model, source)
            assert report.masks_source == str(pruned_dir / "sparsity.safetensors")
            assert "remove" in report.layers[0] and "zero_transition" in report.layers[1]
            torch.testing.assert_close(model(ids).logits, want, **TOL)


def test_compact_cache_and_decode_through_it(model_dir: Path) -> None:
    model, ref = _hf(model_dir), _ref(model_dir)
    ids = _ids(b=3, l=9, seed=6)
    with torch.no_grad():
        dense = _prefill(model, ids[:, :7])
        hf.apply(model, _masks())
        cache = _prefill(model, ids[:, :7])
        shapes = [tuple(layer.recurrent_states[0].shape) for layer in cache.layers]
        assert [tuple(layer.recurrent_states[0].shape) for layer in dense.layers] == [
            (3, NHEADS, HEADDIM, N)
        ] * 3
        assert shapes == [(3, NHEADS, HEADDIM, 4), (3, NHEADS, HEADDIM, N), (3, NHEADS, HEADDIM, N)]
        assert cache.layers[0].recurrent_states[0].dtype == torch.float32
        want = ref(ids)
        for t in (7, 8):  # one-token steps through the stock blocks and the compact cache
            step = model(ids[:, t : t + 1], **_cached(cache)).logits[:, -1]
            torch.testing.assert_close(step, want[:, t], **TOL)


def test_multi_token_continuation_and_dense_cache_from_before_apply(model_dir: Path) -> None:
    model, ref = _hf(model_dir), _ref(model_dir)
    ids = _ids(l=10, seed=7)
    with torch.no_grad():
        want = ref(ids)
        dense = _prefill(model, ids[:, :6])  # stock: dense states
        hf.apply(model, _masks())
        cache = _prefill(model, ids[:, :6])
        rest = model(ids[:, 6:], **_cached(cache)).logits  # chunked scan from the compact cached state
        torch.testing.assert_close(rest, want[:, 6:], **TOL)
        dense.reset()
        model(ids[:, :6], **_cached(dense))  # patched prefill into a dense cache keeps it dense
        assert tuple(dense.layers[0].recurrent_states[0].shape) == (2, NHEADS, HEADDIM, N)
        step = model(ids[:, 6:7], **_cached(dense)).logits[:, -1]
        torch.testing.assert_close(step, want[:, 6], **TOL)


def test_decode_step_reads_the_cache_whatever_its_keyword(model_dir: Path) -> None:
    """The stock block passes the cache as ``cache=`` (5.24+) or ``cache_params=`` (before): a
    patched forward that dropped it would decode from an empty state (wrong logits)."""
    model, ref = _hf(model_dir), _ref(model_dir)
    hf.apply(model, _masks())
    ids = _ids(l=7, seed=8)
    with torch.no_grad():
        step = model(ids[:, 6:], **_cached(_prefill(model, ids[:, :6]))).logits[:, -1]
        torch.testing.assert_close(step, ref(ids)[:, -1], **TOL)
        mixer = model.backbone.layers[0].mixer
        hidden = torch.randn(2, 1, D_MODEL)
        outs = []
        for call in ("cache", "cache_params", "positional"):
            cache = _prefill(model, ids[:, :6])
            outs.append(mixer(hidden, cache) if call == "positional" else mixer(hidden, **{call: cache}))
        fresh = mixer(hidden)  # no cache: a one-token prefill from the zero state
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
        assert not torch.allclose(outs[0], fresh, atol=1e-4)
        with pytest.raises(TypeError, match=r"Mamba2Mixer.forward got unsupported arguments \['seq_idx'\]"):
            mixer(hidden, seq_idx=torch.zeros(2, 1, dtype=torch.int32))
        with pytest.raises(TypeError, match="two different caches"):
            mixer(hidden, cache=cache, cache_params=_prefill(model, ids[:, :6]))


def test_unmasked_matches_stock_with_padding_and_time_step_limit() -> None:
    """No masks: the patched model is the stock one, including left padding and a ``time_step_limit``
    (which transformers applies in the scan but not in the decode step)."""
    for kw in ({}, {"time_step_limit": (0.0, 0.4)}):
        model = _random_model(seed=9, **kw)
        ids = _ids(l=9, seed=10)
        attn = torch.ones_like(ids)
        attn[0, :3] = 0  # left padding in row 0
        with torch.no_grad():
            runs = []
            for patched in (False, True):
                if patched:
                    hf.apply(model)
                step = model(ids[:, 8:], **_cached(_prefill(model, ids[:, :8]))).logits
                runs.append((model(ids, attention_mask=attn).logits, step, _generate(model, ids, 5)))
        (stock, stock_step, stock_gen), (logits, step, gen) = runs
        torch.testing.assert_close(logits, stock, **TOL)
        torch.testing.assert_close(step, stock_step, **TOL)
        assert torch.equal(gen, stock_gen)


def test_module_globals_and_other_instances_untouched(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [n for n in ("mamba2_chunk_scan", "mamba2_selective_state_update") if hasattr(modeling_mamba2, n)]
    before = {n: getattr(modeling_mamba2, n) for n in names}
    forward = modeling_mamba2.Mamba2Mixer.forward
    model, other = _hf(model_dir), _hf(model_dir)
    hf.apply(model, _masks())
    assert all(getattr(modeling_mamba2, n) is f for n, f in before.items())
    assert modeling_mamba2.Mamba2Mixer.forward is forward
    assert "forward" not in other.backbone.layers[0].mixer.__dict__
    assert "forward" in model.backbone.layers[0].mixer.__dict__

    def broken(*args, **kwargs):  # e.g. mamba_ssm bound by transformers but unusable here
        raise RuntimeError("mamba_ssm kernel called")

    monkeypatch.setattr(modeling_mamba2.Mamba2Mixer, "torch_forward", broken, raising=False)
    for name in names:
        monkeypatch.setattr(modeling_mamba2, name, broken)
    ids = _ids(seed=11)
    with torch.no_grad():
        _generate(model, ids, 3)  # the patched path never calls transformers' scan or step
        with pytest.raises(RuntimeError, match="mamba_ssm kernel called"):
            other(ids)


def test_options_and_reapply(model_dir: Path) -> None:
    model = _hf(model_dir)
    report = hf.apply(model, _masks(), sparsify_projections=False, compact_cache=False)
    assert report.projections is None and type(model.backbone.layers[0].mixer.in_proj) is nn.Linear
    assert "dense ssm cache" in report.layers[0]
    layout = SSDStateLayout(_masks()[ssm_state_name(0)], nheads=NHEADS, ngroups=NGROUPS)
    report = hf.apply(model, {ssm_state_name(0): layout})  # replaces the previous patch
    assert report.sparse_layers == [0] and "remove" in report.layers[0] and hf.is_applied(model)
    assert hf.revert(model) == [0, 1, 2] and not hf.is_applied(model)


# ------------------------------------------------------------------------------ errors
def test_errors(model_dir: Path, pruned_dir: Path, tmp_path: Path) -> None:
    from sparsessm_kernels.sparsity import save_masks

    model = _hf(model_dir)
    bool_n = torch.ones(N, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"name no layer of this Mamba-2 model"):
        hf.apply(model, {"backbone.layers.7.mixer.ssm_state": torch.ones(NGROUPS, N, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"name no layer of this Mamba-2 model"):
        hf.apply(model, {"backbone.layers.0.mixer.x_proj": bool_n})
    with pytest.raises(ValueError, match=r"ssm_state' \(layer 0\)"):
        hf.apply(model, {ssm_state_name(0): torch.ones(3, N, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"head transition mask of layer 1 must be a bool tensor of shape"):
        hf.apply(model, {a_log_name(1): bool_n[:5]})
    with pytest.raises(ValueError, match=r"layout built for"):
        hf.apply(
            model,
            {ssm_state_name(0): SSDStateLayout(torch.ones(1, 4, dtype=torch.bool), nheads=2, ngroups=1)},
        )
    with pytest.raises(ValueError, match="pruned_states"):
        hf.apply(model, _masks(), pruned_states="drop")
    with pytest.raises(ValueError, match="layer 1 has more than one head transition mask"):
        hf.apply(model, {a_log_name(1): bool_n, "model.layers.1.mixer.A_log": bool_n})
    mamba1_file = tmp_path / "sparsity.safetensors"
    save_masks(mamba1_file, {a_log_name(0): bool_n})  # a Mamba-1 masks file (state mask under A_log)
    with pytest.raises(ValueError, match=r"backbone\.layers\.\{i\}\.mixer\.ssm_state"):
        hf.apply(model, mamba1_file)
    with pytest.raises(BackendUnavailableError, match=r"the CUDA extension has no Mamba-2 \(SSD\) kernel"):
        hf.apply(model, backend="cuda")
    assert not hf.is_applied(model)

    class MambaMixer(nn.Module):  # a Mamba-1 mixer among Mamba-2 ones
        pass

    model.backbone.layers[2].mixer = MambaMixer()
    with pytest.raises(hf.UnsupportedModelError, match=r"layer 2: .* needs transformers' Mamba2Mixer"):
        hf.apply(model)
    assert not hf.is_applied(model)


def test_mixer_without_a_cache_argument_is_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Mamba2Mixer.forward with another signature (an unsupported release) is refused, naming it."""

    def forward(self, hidden_states, cache_position=None, attention_mask=None):  # pragma: no cover
        raise AssertionError

    monkeypatch.setattr(modeling_mamba2.Mamba2Mixer, "forward", forward)
    with pytest.raises(hf.UnsupportedModelError, match=r"transformers .*: its Mamba2Mixer\.forward takes"):
        hf.apply(_hf(model_dir))
