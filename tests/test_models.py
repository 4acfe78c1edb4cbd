"""Tests of sparsessm_kernels.models: loading, forward vs transformers, masks, cache, export, generate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsessm_kernels.models import (
    PRUNED_A_LOG,
    CheckpointFormatError,
    ExportError,
    MambaLM,
    MambaLMConfig,
    OutputPathError,
)
from sparsessm_kernels.ops import StateLayout, selective_scan_ref

VOCAB = 50
D_MODEL = 16
N_STATE = 8
N_LAYER = 2
D_INNER = 2 * D_MODEL

MODES = ("zero_transition", "remove")


# ---------------------------------------------------------------------- helpers
def _hf_model(tie: bool = True, vocab: int = VOCAB, seed: int = 0, **kw):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(
        vocab_size=vocab,
        hidden_size=D_MODEL,
        state_size=N_STATE,
        num_hidden_layers=N_LAYER,
        expand=2,
        conv_kernel=4,
        tie_word_embeddings=tie,
        **kw,
    )
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():  # make every parameter non-trivial (norm weights, biases, D)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("mixer.D") or (name.endswith("bias") and "dt_proj" not in name):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def _save_hf(model, directory: Path, safe: bool) -> None:
    """An HF checkpoint directory; ``safe=False`` gives config.json + pytorch_model.bin."""
    model.save_pretrained(directory)
    if not safe:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        (directory / "model.safetensors").unlink()
        torch.save(state, directory / "pytorch_model.bin")


def _model(seed: int = 0, norm_type: str = "rms_norm", layer_d_states=None, **kw) -> MambaLM:
    cfg = MambaLMConfig(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        n_layer=N_LAYER,
        d_state=N_STATE,
        norm_type=norm_type,
        layer_d_states=layer_d_states,
        **kw,
    )
    model = MambaLM.from_config(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            if name.endswith("mixer.D"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            if name.endswith("A_log"):  # distinct per channel and state
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            if name.endswith("embeddings.weight") or name == "lm_head.weight":  # O(1) activations
                p.normal_(0.0, 0.5, generator=g)
            if name.endswith("dt_proj.bias"):  # delta = softplus(.) of order 1: the states matter
                p.uniform_(-1.0, 1.0, generator=g)
            if name.endswith(("x_proj.weight", "out_proj.weight")):
                p.mul_(3.0)
    return model


def _ids(b: int = 2, length: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, length), generator=torch.Generator().manual_seed(seed))


def _mask(kind: str, d: int = D_INNER, n: int = N_STATE, seed: int = 0) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    if kind == "dense":
        return None
    if kind == "column":
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=g)[: n // 2]] = True
        return mask
    if kind == "2:4":
        scores = torch.rand(d, n // 4, 4, generator=g)
        top = scores.topk(2, dim=-1).indices
        return torch.zeros(d, n // 4, 4, dtype=torch.bool).scatter(-1, top, True).reshape(d, n)
    if kind == "unstructured":
        mask = torch.rand(d, n, generator=g) < 0.5
        mask[0] = False  # a channel keeping nothing
        mask[1] = True  # a channel keeping everything
        return mask
    raise AssertionError(kind)


def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    xf = x.float()
    if bias is None:
        return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))
    return F.layer_norm(xf, (xf.shape[-1],), weight, bias, eps)


@torch.no_grad()
def _reference_logits(model: MambaLM, ids: torch.Tensor) -> torch.Tensor:
    """Independent float32 forward from the raw parameters, scan = ops.selective_scan_ref."""
    cfg = model.config
    p = dict(model.named_parameters())
    p["lm_head.weight"] = model.lm_head.weight
    h = p["backbone.embeddings.weight"][ids]
    for i in range(cfg.n_layer):
        pre = f"backbone.layers.{i}."
        mixer = model.backbone.layers[i].mixer
        n, r, k = mixer.d_state, mixer.dt_rank, cfg.d_conv
        x = _norm(h, p[pre + "norm.weight"], p.get(pre + "norm.bias"), cfg.norm_eps)
        xz = x @ p[pre + "mixer.in_proj.weight"].T
        if cfg.bias:
            xz = xz + p[pre + "mixer.in_proj.bias"]
        u, z = xz[..., : cfg.d_inner].transpose(1, 2), xz[..., cfg.d_inner :].transpose(1, 2)
        w = p[pre + "mixer.conv1d.weight"][:, 0, :]  # (d, k)
        up = F.pad(u, (k - 1, 0))
        conv = sum(w[None, :, j, None] * up[:, :, j : j + u.shape[-1]] for j in range(k))
        u = F.silu(conv + p[pre + "mixer.conv1d.bias"][None, :, None])
        x_dbl = u.transpose(1, 2) @ p[pre + "mixer.x_proj.weight"].T
        dt, B, C = x_dbl[..., :r], x_dbl[..., r : r + n], x_dbl[..., r + n :]
        delta = (dt @ p[pre + "mixer.dt_proj.weight"].T).transpose(1, 2)
        y = selective_scan_ref(
            u,
            delta,
            -torch.exp(p[pre + "mixer.A_log"].float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=p[pre + "mixer.D"],
            z=z,
            delta_bias=p[pre + "mixer.dt_proj.bias"],
            delta_softplus=True,
            state_mask=None if mixer.layout is None else mixer.layout.mask,
            pruned_states=mixer.pruned_states,
        )
        out = y.transpose(1, 2) @ p[pre + "mixer.out_proj.weight"].T
        if cfg.bias:
            out = out + p[pre + "mixer.out_proj.bias"]
        h = h + out
    h = _norm(h, p["backbone.norm_f.weight"], p.get("backbone.norm_f.bias"), cfg.norm_eps)
    return h @ p["lm_head.weight"].T


def _write_mamba_ssm_dir(directory: Path, state: dict[str, torch.Tensor], cfg: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    torch.save(state, directory / "pytorch_model.bin")


def _mamba_ssm_cfg(vocab: int = VOCAB, **kw) -> dict:
    cfg = {
        "d_model": D_MODEL,
        "d_intermediate": 0,
        "n_layer": N_LAYER,
        "vocab_size": vocab,
        "ssm_cfg": {"layer": "Mamba1", "d_state": N_STATE},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
    }
    cfg.update(kw)
    return cfg


def _hf_dir(tmp_path: Path, tie: bool = True) -> Path:
    d = tmp_path / "hf"
    _save_hf(_hf_model(tie=tie), d, safe=True)
    return d


# ---------------------------------------------------------------------- vs transformers
@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_transformers(tmp_path: Path, safe: bool, tie: bool) -> None:
    hf = _hf_model(tie=tie, use_bias=True)
    _save_hf(hf, tmp_path, safe)
    model = MambaLM.from_pretrained(tmp_path)
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids)
    assert got.dtype == torch.float32 and got.shape == (2, 9, VOCAB)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert model.config.tie_embeddings == tie
    assert (model.lm_head.weight is model.backbone.embeddings.weight) == tie


def test_sharded_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    state = {k: v.contiguous().clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(tmp_path / name))
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "model.safetensors").unlink()
    model = MambaLM.from_pretrained(tmp_path)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_mamba_ssm_format_matches_transformers(tmp_path: Path) -> None:
    padded = math.ceil(VOCAB / 8) * 8  # mamba_ssm pads the vocabulary to a multiple of 8
    hf = _hf_model(tie=True, vocab=padded)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["backbone.embedding.weight"] = state.pop("backbone.embeddings.weight")
    state["lm_head.weight"] = state["backbone.embedding.weight"].clone()  # mamba_ssm saves both
    _write_mamba_ssm_dir(tmp_path, state, _mamba_ssm_cfg())
    model = MambaLM.from_pretrained(tmp_path)
    assert model.config.vocab_size == padded
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_mamba_ssm_layer_norm_matches_reference(tmp_path: Path) -> None:
    ref = _model(norm_type="layer_norm", tie_embeddings=False)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    assert "backbone.layers.0.norm.bias" in state and "backbone.norm_f.bias" in state
    state["backbone.embedding.weight"] = state.pop("backbone.embeddings.weight")
    cfg = _mamba_ssm_cfg(rms_norm=False, tie_embeddings=False, pad_vocab_size_multiple=1)
    _write_mamba_ssm_dir(tmp_path, state, cfg)
    model = MambaLM.from_pretrained(tmp_path)
    assert model.config.norm_type == "layer_norm"
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), _reference_logits(ref, ids), atol=1e-4, rtol=1e-4)
    # LayerNorm models export only in mamba_ssm format
    with pytest.raises(ExportError, match="LayerNorm"):
        model.export_for_stock_kernels(tmp_path / "export_hf")
    model.export_for_stock_kernels(tmp_path / "export_ssm", format="mamba_ssm")
    again = MambaLM.from_pretrained(tmp_path / "export_ssm")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- masks
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["column", "2:4", "unstructured"])
def test_masked_model_matches_reference(kind: str, mode: str) -> None:
    model = _model()
    model.set_state_mask(0, _mask(kind, seed=1), pruned_states=mode)
    model.set_state_mask(1, StateLayout(_mask(kind, seed=2)), pruned_states=mode)
    ids = _ids()
    with torch.no_grad():
        got = model(ids)
        torch.testing.assert_close(got, _reference_logits(model, ids), atol=1e-4, rtol=1e-4)
        dense = _model()(ids)
    assert (got - dense).abs().max() > 1e-2  # the mask changes the output


def test_set_state_mask_api() -> None:
    model = _model()
    mask = _mask("unstructured")
    model.set_state_mask(1, mask, pruned_states="remove")
    layout, mode = model.state_layout(1)
    assert isinstance(layout, StateLayout) and mode == "remove"
    assert set(model.state_masks()) == {"backbone.layers.1.mixer.A_log"}
    assert torch.equal(model.state_masks()["backbone.layers.1.mixer.A_log"], mask)
    assert model.pruned_states_map() == {"backbone.layers.1.mixer.A_log": "remove"}
    model.set_state_mask(1, None)
    assert model.state_masks() == {}
    with pytest.raises(ValueError, match="d_state=8"):
        model.set_state_mask(0, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="d_inner=32"):
        model.set_state_mask(0, torch.ones(5, N_STATE, dtype=torch.bool))
    with pytest.raises(ValueError, match="pruned_states"):
        model.set_state_mask(0, mask, pruned_states="drop")
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        model.set_state_mask(2, mask)


# ---------------------------------------------------------------------- cache / decode
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("kind", "compact_k"), [("dense", None), ("column", 4), ("2:4", 4), ("unstructured", None)]
)
def test_decode_matches_full_sequence(kind: str, compact_k: int | None, mode: str) -> None:
    model = _model()
    for i in range(N_LAYER):
        model.set_state_mask(i, _mask(kind, seed=10 + i), pruned_states=mode)
    ids = _ids(length=10)
    prompt = 4
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        for lc in cache.layers:
            assert lc.conv_state.shape == (2, D_INNER, 4)
            assert lc.ssm_state.dtype == torch.float32
            assert lc.ssm_state.shape == (2, D_INNER, compact_k or N_STATE)
            assert lc.compact == (compact_k is not None)
        steps = [model(ids[:, :prompt], cache=cache)]
        assert cache.seqlen_offset == prompt
        for t in range(prompt, ids.shape[1]):
            steps.append(model(ids[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    if compact_k is not None:
        dense_cache = model.allocate_cache(2, compact=False)
        assert cache.ssm_state_nbytes() * N_STATE == dense_cache.ssm_state_nbytes() * compact_k


def test_multi_token_continuation_and_stale_cache() -> None:
    model = _model()
    model.set_state_mask(0, _mask("column"), pruned_states="remove")
    ids = _ids(length=8)
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        first = model(ids[:, :3], cache=cache)
        rest = model(ids[:, 3:], cache=cache)  # several tokens continuing a cached sequence
        torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-4, rtol=1e-4)
        model.set_state_mask(1, _mask("column"))
        with pytest.raises(RuntimeError, match="allocate a new cache"):
            model(ids[:, :1], cache=cache)
        cache = model.allocate_cache(2)
        with pytest.raises(ValueError, match="batch size 2"):
            model(ids[:1], cache=cache)


def test_prefill_shorter_than_conv_kernel() -> None:
    model = _model()
    ids = _ids(length=6)
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        out = [model(ids[:, :1], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(1, 6)]
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- generate
def test_generate_greedy_equals_argmax_loop() -> None:
    model = _model()
    model.set_state_mask(0, _mask("2:4"), pruned_states="zero_transition")
    ids = _ids(length=5)
    out = model.generate(ids, max_new_tokens=6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], ids)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_generate_sampling_and_eos() -> None:
    model = _model()
    ids = _ids(length=3)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = model.generate(ids, 5, do_sample=True, temperature=0.8, top_k=10, top_p=0.9, generator=g1)
    b = model.generate(ids, 5, do_sample=True, temperature=0.8, top_k=10, top_p=0.9, generator=g2)
    assert torch.equal(a, b) and a.shape == (2, 8)
    greedy = model.generate(ids, 5)
    eos = int(greedy[0, 3])  # the first generated token of row 0
    stopped = model.generate(ids, 5, eos_token_id=eos)
    assert stopped[0, 3] == eos and (stopped[0, 3:] == eos).all()
    top1 = model.generate(ids, 4, do_sample=True, top_k=1, generator=g1)
    assert torch.equal(top1, greedy[:, :7])
    assert torch.equal(model.generate(ids, 0), ids)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, 2, do_sample=True, temperature=0.0)


# ---------------------------------------------------------------------- save / load
def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    model = _model(tie_embeddings=False)
    model.set_state_mask(0, _mask("unstructured"), pruned_states="remove")
    model.set_state_mask(1, _mask("column"), pruned_states="zero_transition")
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "model.safetensors",
        "sparsity.safetensors",
    }
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (
        cfg["model_type"] == "mamba" and cfg["tie_word_embeddings"] is False and cfg["state_size"] == N_STATE
    )
    loaded = MambaLM.from_pretrained(tmp_path)
    ref_state, got_state = model.state_dict(), loaded.state_dict()
    assert ref_state.keys() == got_state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], got_state[k]), k
    assert loaded.pruned_states_map() == model.pruned_states_map()
    for k, mask in model.state_masks().items():
        assert torch.equal(loaded.state_masks()[k], mask)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    # a non-empty directory is replaced only with overwrite=True, and then as a whole: saving the
    # dense model removes the stale masks file
    loaded.clear_state_masks()
    with pytest.raises(OutputPathError, match=r"not empty.*overwrite=True"):
        loaded.save_pretrained(tmp_path)
    assert MambaLM.from_pretrained(tmp_path).pruned_states_map() == model.pruned_states_map()
    loaded.save_pretrained(tmp_path, overwrite=True)
    assert not (tmp_path / "sparsity.safetensors").exists()
    assert MambaLM.from_pretrained(tmp_path).state_masks() == {}


def test_tied_hf_layout_loads_in_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = _model()
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_per_layer_d_state(tmp_path: Path) -> None:
    model = _model(layer_d_states=[N_STATE, 4])
    assert model.backbone.layers[1].mixer.x_proj.weight.shape[0] == model.config.dt_rank + 8
    model.save_pretrained(tmp_path)
    loaded = MambaLM.from_pretrained(tmp_path)
    assert [blk.mixer.d_state for blk in loaded.backbone.layers] == [N_STATE, 4]
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), _reference_logits(model, ids), atol=1e-4, rtol=1e-4)
    with pytest.raises(ExportError, match="layer 1: d_state=4"):
        loaded.export_for_stock_kernels(tmp_path / "export")


# ---------------------------------------------------------------------- export
@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("unstructured", "zero_transition"),
        ("column", "zero_transition"),
        ("column", "remove"),
        ("2:4", "zero_transition"),
    ],
)
def test_export_for_transformers(tmp_path: Path, kind: str, mode: str) -> None:
    transformers = pytest.importorskip("transformers")
    model = _model()
    for i in range(N_LAYER):  # same column mask in both layers so 'remove' keeps one state size
        model.set_state_mask(i, _mask(kind, seed=3 if kind == "column" else 3 + i), pruned_states=mode)
    model.export_for_stock_kernels(tmp_path)
    assert not (tmp_path / "sparsity.safetensors").exists()
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    expected_n = N_STATE // 2 if mode == "remove" else N_STATE
    assert hf.config.state_size == expected_n
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)
    if mode == "zero_transition":
        a_log = hf.backbone.layers[0].mixer.A_log
        assert (a_log == PRUNED_A_LOG).sum() == (
            ~model.backbone.layers[0].mixer.layout.channel_mask(D_INNER)
        ).sum()


def test_export_errors(tmp_path: Path) -> None:
    model = _model()
    model.set_state_mask(0, _mask("unstructured"), pruned_states="remove")
    with pytest.raises(ExportError, match="per-channel mask with pruned_states='remove'"):
        model.export_for_stock_kernels(tmp_path / "a")
    model.set_state_mask(0, _mask("column"), pruned_states="remove")
    with pytest.raises(ExportError, match=r"layer 0: d_state=4, layer 1: d_state=8"):
        model.export_for_stock_kernels(tmp_path / "b")
    model.set_state_mask(0, torch.zeros(N_STATE, dtype=torch.bool), pruned_states="remove")
    with pytest.raises(ExportError, match="prunes every state"):
        model.export_for_stock_kernels(tmp_path / "c")
    with pytest.raises(ValueError, match="format"):
        model.export_for_stock_kernels(tmp_path / "d", format="onnx")
    assert not any((tmp_path / x).exists() for x in "abc")


def test_export_mamba_ssm_format_round_trip(tmp_path: Path) -> None:
    model = _model()
    model.set_state_mask(0, _mask("unstructured"), pruned_states="zero_transition")
    model.export_for_stock_kernels(tmp_path, format="mamba_ssm")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["ssm_cfg"]["layer"] == "Mamba1" and "d_model" in cfg
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert "backbone.embedding.weight" in state and "lm_head.weight" in state
    loaded = MambaLM.from_pretrained(tmp_path)
    assert loaded.state_masks() == {}
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- bad input
def _edit_safetensors(directory: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_missing_key(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    _edit_safetensors(d, lambda s: s.pop("backbone.layers.1.mixer.D"))
    with pytest.raises(CheckpointFormatError, match=r"missing keys: backbone\.layers\.1\.mixer\.D") as exc:
        MambaLM.from_pretrained(d)
    assert "model.safetensors" in str(exc.value)


def test_unexpected_key(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    _edit_safetensors(d, lambda s: s.update({"backbone.layers.0.mixer.extra": torch.zeros(3)}))
    with pytest.raises(CheckpointFormatError, match=r"unexpected keys: backbone\.layers\.0\.mixer\.extra"):
        MambaLM.from_pretrained(d)


def test_wrong_shape(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    _edit_safetensors(
        d, lambda s: s.update({"backbone.layers.0.mixer.x_proj.weight": torch.zeros(10, D_INNER)})
    )
    with pytest.raises(
        CheckpointFormatError, match=r"shape mismatch: backbone\.layers\.0\.mixer\.x_proj\.weight"
    ):
        MambaLM.from_pretrained(d)


def test_tied_lm_head_conflict(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    _edit_safetensors(d, lambda s: s.update({"lm_head.weight": torch.zeros(VOCAB, D_MODEL)}))
    with pytest.raises(CheckpointFormatError, match=r"lm_head\.weight differs"):
        MambaLM.from_pretrained(d)


def test_untied_missing_lm_head(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path, tie=False)
    _edit_safetensors(d, lambda s: s.pop("lm_head.weight"))
    with pytest.raises(CheckpointFormatError, match=r"missing keys: lm_head\.weight"):
        MambaLM.from_pretrained(d)


def test_corrupt_weights(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    (d / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors: could not read safetensors"):
        MambaLM.from_pretrained(d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin: could not read PyTorch weights"):
        MambaLM.from_pretrained(d)
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointFormatError, match="no weights file found"):
        MambaLM.from_pretrained(d)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        MambaLM.from_pretrained(tmp_path / "nope")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        MambaLM.from_pretrained(tmp_path / "empty")
    d = _hf_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())

    def check(new_cfg, match: str) -> None:
        (d / "config.json").write_text(json.dumps(new_cfg) if isinstance(new_cfg, dict) else new_cfg)
        with pytest.raises(CheckpointFormatError, match=match):
            MambaLM.from_pretrained(d)

    check("{not json", "not valid JSON")
    check({"foo": 1}, "unknown config format")
    check(
        {k: v for k, v in cfg.items() if k != "num_hidden_layers"},
        "missing required field 'num_hidden_layers'",
    )
    check({**cfg, "model_type": "mamba2"}, "model_type 'mamba2' is not supported")
    check({**cfg, "num_hidden_layers": 3}, r"missing keys: backbone\.layers\.2\.")


def test_mamba_ssm_config_errors(tmp_path: Path) -> None:
    model = _model()
    state = {k: v for k, v in model.state_dict().items()}
    _write_mamba_ssm_dir(tmp_path, state, _mamba_ssm_cfg(ssm_cfg={"layer": "Mamba2", "d_state": N_STATE}))
    with pytest.raises(CheckpointFormatError, match="Mamba2"):
        MambaLM.from_pretrained(tmp_path)
    _write_mamba_ssm_dir(tmp_path, state, _mamba_ssm_cfg(attn_layer_idx=[1]))
    with pytest.raises(CheckpointFormatError, match="attention layers"):
        MambaLM.from_pretrained(tmp_path)
    _write_mamba_ssm_dir(tmp_path, state, _mamba_ssm_cfg(d_intermediate=64))
    with pytest.raises(CheckpointFormatError, match="d_intermediate=64"):
        MambaLM.from_pretrained(tmp_path)
    # unpadded vocabulary with the default multiple of 8: the embedding has 50 rows, 56 expected
    _write_mamba_ssm_dir(tmp_path, state, _mamba_ssm_cfg())
    with pytest.raises(
        CheckpointFormatError, match=r"backbone\.embeddings\.weight: expected shape \(56, 16\)"
    ):
        MambaLM.from_pretrained(tmp_path)


def test_bad_masks_file(tmp_path: Path) -> None:
    from sparsessm_kernels.sparsity import save_masks

    model = _model()
    model.save_pretrained(tmp_path)
    save_masks(tmp_path / "sparsity.safetensors", {"backbone.layers.5.mixer.A_log": _mask("column")})
    with pytest.raises(CheckpointFormatError, match=r"backbone\.layers\.5\.mixer\.A_log"):
        MambaLM.from_pretrained(tmp_path)
    save_masks(
        tmp_path / "sparsity.safetensors",
        {"backbone.layers.0.mixer.A_log": _mask("column")},
        metadata={"pruned_states": "remove"},
    )
    loaded = MambaLM.from_pretrained(tmp_path)
    assert loaded.pruned_states_map() == {"backbone.layers.0.mixer.A_log": "remove"}


def test_bad_forward_input() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"\(b, l\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer dtype"):
        model(torch.zeros(1, 3))


def test_invalid_config_value_names_file(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "vocab_size": 0}))
    with pytest.raises(
        CheckpointFormatError, match=r"config\.json: config: vocab_size must be a positive integer"
    ):
        MambaLM.from_pretrained(d)
