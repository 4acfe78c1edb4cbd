"""Static decoding (``generate(cg=True)``): one compiled graph, no host sync, fixed cache addresses,
tokens equal to eager generation, invalidation; CUDA graph capture on a GPU."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sparsessm_kernels.models import Mamba2LM, Mamba2LMConfig, MambaLM, MambaLMConfig
from sparsessm_kernels.models.decode import StaticDecoder, generate_tokens, model_signature

VOCAB, D_MODEL, N_STATE, N_LAYER = 48, 16, 8, 2
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """O(1) activations so that greedy tokens depend on the states (not one repeated token)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embeddings.weight") or name == "lm_head.weight":
                p.normal_(0.0, 0.5, generator=g)
            elif name.endswith(("dt_proj.bias", "dt_bias")):
                p.uniform_(-1.0, 1.0, generator=g)
            elif name.endswith(("x_proj.weight", "out_proj.weight")):
                p.mul_(3.0)


def _mamba(seed: int = 0, masks: bool = True) -> MambaLM:
    cfg = MambaLMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layer=N_LAYER, d_state=N_STATE)
    model = MambaLM.from_config(cfg, seed=seed).eval()
    _perturb(model, seed + 1)
    if masks:
        model.set_state_mask(0, torch.tensor([True, False] * (N_STATE // 2)))  # uniform: compact cache
        g = torch.Generator().manual_seed(seed + 2)
        model.set_state_mask(1, torch.rand(2 * D_MODEL, N_STATE, generator=g) > 0.5)  # per channel
    return model


def _mamba2(seed: int = 0) -> Mamba2LM:
    cfg = Mamba2LMConfig(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        n_layer=N_LAYER,
        d_state=N_STATE,
        headdim=8,
        ngroups=1,
        chunk_size=4,
    )
    model = Mamba2LM.from_config(cfg, seed=seed).eval()
    _perturb(model, seed + 1)
    return model


def _ids(b: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, length), generator=torch.Generator().manual_seed(seed))


def _eos_of(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> int:
    """A token eager greedy generation emits in row 0 after a few steps (so EOS really triggers)."""
    out = model.generate(ids, steps)
    return int(out[0, ids.shape[1] + 2])


# ---------------------------------------------------------------------- equality with eager
@pytest.mark.parametrize("make", [_mamba, _mamba2], ids=["mamba1", "mamba2"])
@pytest.mark.parametrize("compact", [True, False])
def test_static_generate_equals_eager(make, compact: bool) -> None:
    model = make()
    for b, length in ((2, 7), (3, 4), (2, 5)):
        ids = _ids(b, length, seed=b + length)
        want = model.generate(ids, 6, compact_cache=compact)
        got = model.generate(ids, 6, compact_cache=compact, cg=True)
        assert torch.equal(got, want), (b, length)
    decoder = model.static_decoder()
    assert decoder.capacity == 3 and decoder.cache is not None


@pytest.mark.parametrize("interval", [1, 4])
def test_static_generate_eos_equals_eager(interval: int) -> None:
    model = _mamba()
    ids = _ids(2, 5)
    eos = _eos_of(model, ids, 8)
    want = model.generate(ids, 12, eos_token_id=eos, eos_check_interval=1)
    for cg in (False, True):
        got = model.generate(ids, 12, eos_token_id=[eos, VOCAB - 1], eos_check_interval=interval, cg=cg)
        assert torch.equal(got, model.generate(ids, 12, eos_token_id=[eos, VOCAB - 1]))
    assert torch.equal(model.generate(ids, 12, eos_token_id=eos, eos_check_interval=interval, cg=True), want)


def test_static_generate_sampling_equals_eager() -> None:
    model = _mamba()
    ids = _ids(2, 6)
    kw = {"do_sample": True, "top_k": 10, "top_p": 0.9, "temperature": 0.8}
    want = model.generate(ids, 8, generator=torch.Generator().manual_seed(3), **kw)
    got = model.generate(ids, 8, generator=torch.Generator().manual_seed(3), cg=True, **kw)
    assert torch.equal(got, want)


def test_generate_tokens_cuts_after_everyone_finished() -> None:
    logits = torch.zeros(2, 5)
    script = iter([torch.tensor([1, 3]), torch.tensor([4, 2]), torch.tensor([0, 4]), torch.tensor([0, 0])])

    def pick(_logits: torch.Tensor) -> torch.Tensor:
        return next(script)

    out = generate_tokens(logits, lambda nxt: logits, pick, 4, [4], eos_check_interval=100)
    assert out.tolist() == [[1, 4, 4], [3, 2, 4]]  # finished at the third token; padded with eos


def test_generate_rejects_bad_eos_check_interval() -> None:
    with pytest.raises(ValueError, match="eos_check_interval: expected None or an integer >= 1, got 0"):
        _mamba(masks=False).generate(_ids(), 2, eos_check_interval=0)


# ---------------------------------------------------------------------- static cache
def test_static_cache_addresses_stay_fixed() -> None:
    model = _mamba()
    decoder = model.prepare_static_decode(4)
    ptrs = [(lc.conv_state.data_ptr(), lc.ssm_state.data_ptr()) for lc in decoder.cache.layers]
    seen: list[list[tuple[int, int]]] = []
    original = decoder.step

    def recording_step(m, token, cache):
        seen.append([(lc.conv_state.data_ptr(), lc.ssm_state.data_ptr()) for lc in cache.layers])
        return original(m, token, cache)

    decoder.step = recording_step
    for b in (4, 2, 4):
        model.generate(_ids(b, 5, seed=b), 5, cg=True)
        view = decoder.view(b)
        assert [(lc.conv_state.data_ptr(), lc.ssm_state.data_ptr()) for lc in view.layers] == ptrs
    assert len(seen) == 3 * 4 and all(s == ptrs for s in seen)  # every step, after the prefill
    assert [(lc.conv_state.data_ptr(), lc.ssm_state.data_ptr()) for lc in decoder.cache.layers] == ptrs
    assert decoder.cache.layers[0].ssm_state.shape == (4, 2 * D_MODEL, N_STATE // 2)  # compact


def test_static_cache_grows_to_the_largest_batch() -> None:
    model = _mamba()
    model.generate(_ids(2, 4), 2, cg=True)
    decoder = model.static_decoder()
    first = decoder.cache
    model.generate(_ids(1, 4), 2, cg=True)
    assert decoder.cache is first and decoder.capacity == 2
    model.generate(_ids(5, 4), 2, cg=True)
    assert decoder.cache is not first and decoder.capacity == 5
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        decoder.prepare(model, 0)


# ---------------------------------------------------------------------- invalidation
def test_decoder_rebuilds_after_mask_weight_and_dtype_changes() -> None:
    model = _mamba()
    ids = _ids(2, 5)
    model.generate(ids, 3, cg=True)
    decoder = model.static_decoder()
    sig, cache = model_signature(model, True), decoder.cache

    model.set_state_mask(0, None)  # mask change: new cache (layouts differ) and constants
    assert model_signature(model, True) != sig
    assert torch.equal(model.generate(ids, 5, cg=True), model.generate(ids, 5))
    assert decoder.cache is not cache

    with torch.no_grad():  # in-place weight edit: constants recomputed
        model.backbone.layers[1].mixer.A_log.add_(0.5)
        model.backbone.layers[1].mixer.D.mul_(-1.0)
    assert torch.equal(model.generate(ids, 5, cg=True), model.generate(ids, 5))

    model.double()  # dtype change: the cache is reallocated in the new dtype
    assert torch.equal(model.generate(ids, 5, cg=True), model.generate(ids, 5))
    assert decoder.cache.layers[0].conv_state.dtype == torch.float64
    assert all(blk.mixer.frozen_constants is None for blk in model.backbone.layers)  # cleared after use


@pytest.mark.parametrize("make", [_mamba, _mamba2], ids=["mamba1", "mamba2"])
def test_constants_are_precomputed_once(monkeypatch, make) -> None:
    from sparsessm_kernels.ops import MixerConstants

    model = make()
    builds = Counter()
    original = MixerConstants.get

    def counting(self, *args):
        before = self._cached
        values = original(self, *args)
        builds["A"] += self._cached is not before
        return values

    monkeypatch.setattr(MixerConstants, "get", counting)
    model.generate(_ids(2, 4), 6, cg=True)
    assert builds["A"] == N_LAYER  # once per layer; none per prefill or decode step
    model.generate(_ids(2, 4), 6)
    assert builds["A"] == N_LAYER  # eager reuses the per-layer constants too
    with torch.no_grad():
        model.backbone.layers[0].mixer.A_log.add_(0.0)  # an in-place write rebuilds that layer's
    model.generate(_ids(2, 4), 2)
    assert builds["A"] == N_LAYER + 1


def test_mamba2_constants_match_the_parameters() -> None:
    """Mamba-2's cached constants are ``-exp(A_log)``, ``D`` (viewed per head with ``D_has_hdim``) and
    ``dt_bias``, float32 (float64 ``D`` / ``dt_bias`` stay float64), and follow in-place writes."""
    cfg = Mamba2LMConfig(
        vocab_size=VOCAB, d_model=D_MODEL, n_layer=1, d_state=N_STATE, headdim=8, D_has_hdim=True
    )
    mixer = Mamba2LM.from_config(cfg, seed=0).eval().backbone.layers[0].mixer
    for dtype in (torch.bfloat16, torch.float64):
        mixer.to(dtype).requires_grad_(False)  # cached only when autograd does not record them
        A, D, dt_bias = mixer.fp32_constants()
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        assert A.dtype == torch.float32 and D.dtype == wide and dt_bias.dtype == wide
        assert torch.equal(A, -torch.exp(mixer.A_log.float()))
        assert torch.equal(D, mixer.D.to(wide).view(mixer.nheads, mixer.headdim))
        assert torch.equal(dt_bias, mixer.dt_bias.to(wide))
        assert mixer.fp32_constants()[0] is A  # cached
        with torch.no_grad():
            mixer.dt_bias.add_(1.0)
        assert torch.equal(mixer.fp32_constants()[2], mixer.dt_bias.to(wide))


# ---------------------------------------------------------------------- no host sync
def _census(fn) -> Counter:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return Counter(e.name for e in prof.events())


@pytest.mark.parametrize("make", [_mamba, _mamba2], ids=["mamba1", "mamba2"])
def test_decode_step_does_not_sync(make) -> None:
    model = make()
    decoder = model.prepare_static_decode(2)
    cache = decoder.view(2)
    with torch.no_grad(), decoder.constants_frozen(model):
        model(_ids(2, 5), cache=cache)
        token = torch.tensor([3, 4])
        decoder.step(model, token, cache)
        census = _census(lambda: decoder.step(model, token, cache))
    assert census["aten::embedding"] == 1  # the census saw the step
    assert not {op: census[op] for op in SYNC_OPS if census[op]}


def test_generation_loop_syncs_only_at_eos_checks() -> None:
    model = _mamba()
    ids = _ids(2, 5)
    model.generate(ids, 2, cg=True)  # build the decoder outside the census
    with torch.no_grad():  # the eager prefill may synchronise (the scan's mask set-up); counted apart
        prefill = _census(lambda: model(ids, cache=model.allocate_cache(2)))
    syncs = {op: prefill[op] for op in SYNC_OPS}
    census = _census(lambda: model.generate(ids, 9, cg=True))
    assert {op: census[op] for op in SYNC_OPS} == syncs
    census = _census(lambda: model.generate(ids, 9, eos_token_id=VOCAB + 1, eos_check_interval=4, cg=True))
    # two checks in the loop (after tokens 4 and 8), one to cut the result at the end
    assert census["aten::_local_scalar_dense"] == syncs["aten::_local_scalar_dense"] + 3


# ---------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("make", [_mamba, _mamba2], ids=["mamba1", "mamba2"])
def test_compiled_decode_body_is_one_graph_without_recompiles(make) -> None:
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    model = make()
    ids = _ids(2, 5)
    want = [model.generate(ids, 6), model.generate(_ids(2, 3, seed=9), 6)]
    dynamo.reset()
    counters.clear()
    decoder = model.static_decoder()
    decoder.body = torch.compile(type(model).decode_body, fullgraph=True, backend="aot_eager")
    try:
        with dynamo.config.patch(error_on_recompile=True):
            got = [model.generate(ids, 6, cg=True), model.generate(_ids(2, 3, seed=9), 6, cg=True)]
    finally:
        decoder.body = None
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert counters["stats"]["unique_graphs"] == 1  # one graph over 2 x 5 steps
    assert sum(counters["graph_break"].values()) == 0


# ---------------------------------------------------------------------- CUDA graphs
@pytest.mark.gpu
@pytest.mark.parametrize("make", [_mamba, _mamba2], ids=["mamba1", "mamba2"])
def test_gpu_graph_decode_equals_eager_without_sync(make) -> None:
    model = make().cuda()
    for b in (2, 3, 2):
        ids = _ids(b, 6, seed=b).cuda()
        want = model.generate(ids, 8)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            decoder = model.static_decoder()
            cache = decoder.prepare(model, b)
            with torch.no_grad(), decoder.constants_frozen(model):
                model(ids, cache=cache)
                for _ in range(3):
                    decoder.step(model, ids[:, 0], cache)  # replays may not sync
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.equal(model.generate(ids, 8, cg=True), want)
    decoder = model.static_decoder()
    assert decoder.graph_batch_sizes() == [2, 3] and decoder.captures == 2


@pytest.mark.gpu
def test_gpu_graphs_are_dropped_on_weight_change() -> None:
    model = _mamba().cuda()
    ids = _ids(2, 5).cuda()
    model.generate(ids, 4, cg=True)
    with torch.no_grad():
        model.backbone.layers[0].mixer.out_proj.weight.mul_(0.5)
    assert torch.equal(model.generate(ids, 6, cg=True), model.generate(ids, 6))
    assert model.static_decoder().captures == 2


@pytest.mark.gpu
def test_gpu_graph_decode_with_2to4_projections() -> None:
    from sparsessm_kernels.nn import prune_2to4_, sparsify_

    model = _mamba().to(device="cuda", dtype=torch.bfloat16)
    for blk in model.backbone.layers:
        for name in ("in_proj", "out_proj"):
            prune_2to4_(getattr(blk.mixer, name))
    report = sparsify_(model, lambda name, _m: name.endswith(("in_proj", "out_proj")), select="sparse")
    ids = _ids(2, 6).cuda()
    want = model.generate(ids, 8)
    assert torch.equal(model.generate(ids, 8, cg=True), want), report


def test_static_decoder_is_not_part_of_the_model() -> None:
    import copy

    model = _mamba()
    model.generate(_ids(2, 4), 2, cg=True)
    assert isinstance(model.static_decoder(), StaticDecoder)
    clone = copy.deepcopy(model)
    assert clone.static_decoder() is not model.static_decoder() and clone.static_decoder().cache is None
    assert set(model.state_dict()) == set(clone.state_dict())
