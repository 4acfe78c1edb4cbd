"""Tests of the Mamba-2 model (sparsessm_kernels.models.Mamba2LM): loading HF and mamba_ssm
checkpoints, forward and generation against transformers' Mamba2ForCausalLM, masks against an
independent float64 reference built on the SSD oracle, decode cache, save / load, stock export,
bad input, and the CLI on Mamba-2 checkpoints."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsessm_kernels import cli
from sparsessm_kernels.models import (
    PRUNED_A_LOG,
    CheckpointFormatError,
    ExportError,
    Mamba2LM,
    Mamba2LMConfig,
    MambaLM,
    MambaLMConfig,
    OutputPathError,
    load_model,
    read_model_config,
)
from sparsessm_kernels.ops import SSDStateLayout, ssd_scan_ref

VOCAB = 56  # a multiple of 8: mamba_ssm's default vocabulary padding keeps it
D_MODEL = 32
N_LAYER = 2
NHEADS = 8
HEADDIM = 8
N_STATE = 8
NGROUPS = 2
CHUNK = 4  # the test sequences cross chunk boundaries
D_INNER = NHEADS * HEADDIM
CONV_DIM = D_INNER + 2 * NGROUPS * N_STATE
TOL = {"atol": 2e-5, "rtol": 2e-5}

MODES = ("remove", "zero_transition")


# ---------------------------------------------------------------------- helpers
def _perturb(named_parameters, seed: int) -> None:
    """Make every parameter non-trivial, with O(1) activations and time steps that keep memory."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named_parameters:
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                continue
            if name.endswith("mixer.D"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("A_log"):  # A in [-1.8, -0.3]: decays that keep some memory
                p.copy_(torch.log(0.3 + 1.5 * torch.rand(p.shape, generator=g)))
            elif name.endswith("dt_bias"):  # dt = softplus(.) of order 1
                p.uniform_(-1.0, 1.0, generator=g)
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(("embeddings.weight", "embedding.weight")) or name == "lm_head.weight":
                p.normal_(0.0, 0.5, generator=g)


def _hf_config(**kw):
    transformers = pytest.importorskip("transformers")
    args = {
        "vocab_size": VOCAB,
        "hidden_size": D_MODEL,
        "num_hidden_layers": N_LAYER,
        "num_heads": NHEADS,
        "head_dim": HEADDIM,
        "state_size": N_STATE,
        "n_groups": NGROUPS,
        "expand": 2,
        "conv_kernel": 4,
        "chunk_size": CHUNK,
        "tie_word_embeddings": False,
    }
    args.update(kw)
    return transformers.Mamba2Config(**args)


def _hf_model(seed: int = 0, **kw):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model = transformers.Mamba2ForCausalLM(_hf_config(**kw)).eval()
    _perturb(model.named_parameters(), seed + 1)
    return model


def _save_hf(model, directory: Path, safe: bool = True) -> Path:
    """An HF checkpoint directory; ``safe=False`` gives config.json + pytorch_model.bin."""
    model.save_pretrained(directory)
    if not safe:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        (directory / "model.safetensors").unlink()
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def _model(seed: int = 0, **kw) -> Mamba2LM:
    args = {
        "vocab_size": VOCAB,
        "d_model": D_MODEL,
        "n_layer": N_LAYER,
        "d_state": N_STATE,
        "headdim": HEADDIM,
        "ngroups": NGROUPS,
        "chunk_size": CHUNK,
    }
    args.update(kw)
    model = Mamba2LM.from_config(Mamba2LMConfig(**args), seed=seed).eval()
    _perturb(model.named_parameters(), seed + 1)
    return model


def _ids(b: int = 2, length: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, length), generator=torch.Generator().manual_seed(seed))


def _state_mask(kind: str, seed: int = 0) -> torch.Tensor | None:
    """Named state masks over the B / C columns, True = kept."""
    g = torch.Generator().manual_seed(seed)

    def keep(rows: int, counts: list[int]) -> torch.Tensor:
        mask = torch.zeros(rows, N_STATE, dtype=torch.bool)
        for r, k in zip(range(rows), counts):
            mask[r, torch.randperm(N_STATE, generator=g)[:k]] = True
        return mask

    if kind == "dense":
        return None
    if kind == "group_uniform":  # every group keeps 4 (its own columns)
        return keep(NGROUPS, [4] * NGROUPS)
    if kind == "group_nonuniform":  # 5 and 2 kept: dense cache, export keeps 5 per group
        return keep(NGROUPS, [5, 2])
    if kind == "group_empty":  # a group keeping nothing
        return keep(NGROUPS, [3, 0])
    if kind == "head_uniform":  # every head keeps 4 of its own: heads differ inside a group
        return keep(NHEADS, [4] * NHEADS)
    if kind == "head_grouped":  # per-head spelling of a per-group mask
        return keep(NGROUPS, [3] * NGROUPS).repeat_interleave(NHEADS // NGROUPS, dim=0)
    raise AssertionError(kind)


def _head_mask(seed: int = 0) -> torch.Tensor:
    mask = torch.ones(NHEADS, dtype=torch.bool)
    mask[torch.randperm(NHEADS, generator=torch.Generator().manual_seed(seed))[:3]] = False
    return mask


def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    if bias is None:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


@torch.no_grad()
def _reference_logits(model: Mamba2LM, ids: torch.Tensor) -> torch.Tensor:
    """Independent float64 forward from the raw parameters; the scan is the SSD oracle
    ``ops.ssd_scan_ref`` with the model's masks (the convolution and norms written out here)."""
    cfg = model.config
    p = {k: v.double() for k, v in model.state_dict().items()}
    b, seqlen = ids.shape
    gn, eps = cfg.ngroups * cfg.d_state, cfg.norm_eps
    h = p["backbone.embeddings.weight"][ids]
    for i in range(cfg.n_layer):
        pre = f"backbone.layers.{i}."
        mixer = model.mixer(i)
        u = _norm(h, p[pre + "norm.weight"], p.get(pre + "norm.bias"), eps)
        zxbcdt = u @ p[pre + "mixer.in_proj.weight"].T
        if cfg.bias:
            zxbcdt = zxbcdt + p[pre + "mixer.in_proj.bias"]
        z, xbc, dt = zxbcdt.split([cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        w = p[pre + "mixer.conv1d.weight"][:, 0, :]  # (conv_dim, d_conv)
        padded = F.pad(xbc.transpose(1, 2), (cfg.d_conv - 1, 0))
        conv = sum(w[None, :, j, None] * padded[:, :, j : j + seqlen] for j in range(cfg.d_conv))
        if cfg.conv_bias:
            conv = conv + p[pre + "mixer.conv1d.bias"][None, :, None]
        x, B, C = F.silu(conv).transpose(1, 2).split([cfg.d_inner, gn, gn], dim=-1)
        heads = (b, seqlen, cfg.nheads, cfg.headdim)
        D = p[pre + "mixer.D"]
        y = ssd_scan_ref(
            x.reshape(heads),
            dt,
            -torch.exp(p[pre + "mixer.A_log"]),
            B.reshape(b, seqlen, cfg.ngroups, cfg.d_state),
            C.reshape(b, seqlen, cfg.ngroups, cfg.d_state),
            D=D.view(cfg.nheads, cfg.headdim) if cfg.D_has_hdim else D,
            z=None if cfg.rmsnorm else z.reshape(heads),
            dt_bias=p[pre + "mixer.dt_bias"],
            dt_softplus=True,
            dt_limit=cfg.dt_limit,
            state_mask=None if mixer.layout is None else mixer.layout.mask,
            pruned_states=mixer.pruned_states,
            head_transition_mask=mixer.head_transition_mask,
        ).reshape(b, seqlen, cfg.d_inner)
        if cfg.rmsnorm:
            gate = F.silu(z)
            yg = y if cfg.norm_before_gate else y * gate
            grouped = yg.view(b, seqlen, cfg.ngroups, -1)
            yg = (grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)).view(y.shape)
            y = p[pre + "mixer.norm.weight"] * (yg * gate if cfg.norm_before_gate else yg)
        out = y @ p[pre + "mixer.out_proj.weight"].T
        if cfg.bias:
            out = out + p[pre + "mixer.out_proj.bias"]
        h = h + out
    h = _norm(h, p["backbone.norm_f.weight"], p.get("backbone.norm_f.bias"), eps)
    return (h @ p["lm_head.weight"].T).float()


def _mamba_ssm_state(state: dict[str, torch.Tensor], tie: bool) -> dict[str, torch.Tensor]:
    """``state`` (HF keys) with the keys ``MambaLMHeadModel.state_dict()`` has: the embedding is
    ``backbone.embedding.weight`` and ``lm_head.weight`` is always there (tied or not)."""
    out = {k: v.clone() for k, v in state.items()}
    out["backbone.embedding.weight"] = out.pop("backbone.embeddings.weight")
    if tie:
        out["lm_head.weight"] = out["backbone.embedding.weight"].clone()
    return out


def _mamba_ssm_cfg(**ssm_kw) -> dict:
    """A ``config.json`` as mamba_ssm's ``MambaLMHeadModel.save_pretrained`` writes it (the
    ``MambaConfig`` dataclass's fields) for Mamba2 layers of the test sizes."""
    top = {
        k: ssm_kw.pop(k)
        for k in list(ssm_kw)
        if k in ("rms_norm", "tie_embeddings", "pad_vocab_size_multiple")
    }
    cfg = {
        "d_model": D_MODEL,
        "d_intermediate": 0,
        "n_layer": N_LAYER,
        "vocab_size": VOCAB,
        "ssm_cfg": {
            "layer": "Mamba2",
            "d_state": N_STATE,
            "headdim": HEADDIM,
            "ngroups": NGROUPS,
            "chunk_size": CHUNK,
            **ssm_kw,
        },
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
    }
    cfg.update(top)
    return cfg


def _hf_greedy(hf, ids: torch.Tensor, new: int) -> torch.Tensor:
    """transformers' greedy generation of ``new`` tokens (no eos; every prompt token attended)."""
    with torch.no_grad():
        return hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )


def _write_mamba_ssm_dir(directory: Path, state: dict[str, torch.Tensor], cfg: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=4))
    torch.save(state, directory / "pytorch_model.bin")
    return directory


# ---------------------------------------------------------------------- vs transformers
@pytest.mark.parametrize(
    ("tie", "safe", "ngroups", "bias"),
    [(False, True, 2, True), (True, False, 1, False), (True, True, 2, False)],
)
def test_logits_match_transformers(tmp_path: Path, tie: bool, safe: bool, ngroups: int, bias: bool) -> None:
    hf = _hf_model(tie_word_embeddings=tie, n_groups=ngroups, use_bias=bias)
    _save_hf(hf, tmp_path, safe)
    model = Mamba2LM.from_pretrained(tmp_path)
    assert model.config.ngroups == ngroups and model.config.tie_embeddings == tie
    assert (model.lm_head.weight is model.backbone.embeddings.weight) == tie
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids)
    assert got.dtype == torch.float32 and got.shape == (2, 11, VOCAB)
    torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(got, _reference_logits(model, ids), **TOL)


def test_greedy_generation_matches_transformers(tmp_path: Path) -> None:
    hf = _hf_model(seed=3)
    _save_hf(hf, tmp_path)
    model = Mamba2LM.from_pretrained(tmp_path)
    ids = _ids(length=6, seed=3)
    assert torch.equal(model.generate(ids, 10), _hf_greedy(hf, ids, 10))


def test_time_step_limit_matches_transformers(tmp_path: Path) -> None:
    hf = _hf_model(time_step_limit=(0.0, 0.4))
    _save_hf(hf, tmp_path)
    model = Mamba2LM.from_pretrained(tmp_path)
    assert model.config.dt_limit == (0.0, 0.4)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, **TOL)
        assert (model(ids) - _model()(ids)).abs().max() > 0  # the limit matters here
    # the limit round-trips; the default is not written, and the default's spellings all parse
    model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["time_step_limit"] == [0.0, 0.4]
    cfg = json.loads((tmp_path / "config.json").read_text())
    for spelling in ([0.0, {"__float__": "Infinity"}], [0.0, "Infinity"], [0.0, math.inf]):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, "time_step_limit": spelling}))
        assert read_model_config(tmp_path).dt_limit == (0.0, math.inf)
    model.config.dt_limit = (0.0, math.inf)
    model.save_pretrained(tmp_path / "default")
    assert "time_step_limit" not in json.loads((tmp_path / "default" / "config.json").read_text())


def test_dense_save_loads_in_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    for tie in (True, False):
        model = _model(tie_embeddings=tie)
        out = tmp_path / str(tie)
        model.save_pretrained(out)
        hf = transformers.Mamba2ForCausalLM.from_pretrained(out).eval()
        ids = _ids()
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, model(ids), **TOL)


# ---------------------------------------------------------------------- mamba_ssm format
@pytest.mark.parametrize("tie", [True, False])
def test_mamba_ssm_format_matches_transformers(tmp_path: Path, tie: bool) -> None:
    """A checkpoint written as mamba_ssm's MambaLMHeadModel saves it loads to the logits of the
    same weights loaded from transformers' layout."""
    hf = _hf_model(tie_word_embeddings=tie)
    state = _mamba_ssm_state(hf.state_dict(), tie)
    _write_mamba_ssm_dir(tmp_path / "ssm", state, _mamba_ssm_cfg(tie_embeddings=tie))
    model = Mamba2LM.from_pretrained(tmp_path / "ssm")
    hf_loaded = Mamba2LM.from_pretrained(_save_hf(hf, tmp_path / "hf"))
    assert model.config.norm_eps == 1e-5 and model.config.tie_embeddings == tie
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_loaded(ids), atol=0, rtol=0)
        torch.testing.assert_close(model(ids), hf(ids).logits, **TOL)
    assert type(load_model(tmp_path / "ssm")) is Mamba2LM


def test_mamba_ssm_vocab_padding(tmp_path: Path) -> None:
    model = _model()
    state = _mamba_ssm_state(model.state_dict(), tie=True)
    _write_mamba_ssm_dir(tmp_path, state, {**_mamba_ssm_cfg(), "vocab_size": VOCAB - 5})
    loaded = Mamba2LM.from_pretrained(tmp_path)  # 51 padded up to 56
    assert loaded.config.vocab_size == VOCAB and loaded.config.extra["unpadded_vocab_size"] == VOCAB - 5
    _write_mamba_ssm_dir(tmp_path, state, {**_mamba_ssm_cfg(), "pad_vocab_size_multiple": 16})
    with pytest.raises(
        CheckpointFormatError, match=r"backbone\.embeddings\.weight: expected shape \(64, 32\)"
    ):
        Mamba2LM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "variant",
    [
        {"rmsnorm": False},
        {"norm_before_gate": True},
        {"D_has_hdim": True},
        {"rms_norm": False},
        {"dt_limit": [0.05, 0.6], "bias": True, "conv_bias": False},
    ],
    ids=["no-gated-norm", "norm-before-gate", "D-has-hdim", "layer-norm", "dt-limit-biases"],
)
def test_mamba_ssm_variants_match_reference(tmp_path: Path, variant: dict) -> None:
    """mamba_ssm's Mamba2 options (most of which transformers cannot express), written as mamba_ssm
    would (keys and shapes of its Mamba2 module: no ``mixer.norm`` without the gated norm, ``D``
    ``(nheads * headdim,)`` with ``D_has_hdim``, norm biases for LayerNorm), against the independent
    reference."""
    ssm_cfg = _mamba_ssm_cfg(**variant)
    own = {
        "rmsnorm": "rmsnorm",
        "norm_before_gate": "norm_before_gate",
        "D_has_hdim": "D_has_hdim",
        "dt_limit": "dt_limit",
        "bias": "bias",
        "conv_bias": "conv_bias",
    }
    kw = {own[k]: (tuple(v) if k == "dt_limit" else v) for k, v in variant.items() if k in own}
    if variant.get("rms_norm") is False:
        kw["norm_type"] = "layer_norm"
    ref = _model(**kw)
    state = _mamba_ssm_state(ref.state_dict(), tie=True)
    keys = set(state)
    assert ("backbone.layers.0.mixer.norm.weight" in keys) == variant.get("rmsnorm", True)
    assert state["backbone.layers.0.mixer.D"].shape == (
        (D_INNER,) if variant.get("D_has_hdim") else (NHEADS,)
    )
    assert ("backbone.layers.0.norm.bias" in keys) == (variant.get("rms_norm") is False)
    assert ("backbone.layers.0.mixer.conv1d.bias" in keys) == variant.get("conv_bias", True)
    _write_mamba_ssm_dir(tmp_path / "ssm", state, ssm_cfg)
    model = Mamba2LM.from_pretrained(tmp_path / "ssm")
    ids = _ids()
    with torch.no_grad():
        got = model(ids)
        torch.testing.assert_close(got, _reference_logits(ref, ids), **TOL)
        assert (got - _model()(ids)).abs().max() > 1e-3  # the variant changes the model
    # transformers runs only the last variant; the mamba_ssm export round-trips, and save_pretrained too
    if model.config.hf_unsupported:
        with pytest.raises(ExportError, match="format='mamba_ssm'"):
            model.export_for_stock_kernels(tmp_path / "hf")
    else:
        transformers = pytest.importorskip("transformers")
        model.export_for_stock_kernels(tmp_path / "hf")
        hf = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, got, **TOL)
    model.export_for_stock_kernels(tmp_path / "export", format="mamba_ssm")
    with torch.no_grad():
        torch.testing.assert_close(Mamba2LM.from_pretrained(tmp_path / "export")(ids), got, atol=0, rtol=0)
    # save_pretrained writes what transformers cannot run in mamba_ssm's layout, masks included
    model.set_state_mask(0, _state_mask("group_uniform"))
    model.set_head_transition_mask(1, _head_mask())
    model.save_pretrained(tmp_path / "saved")
    names = {p.name for p in (tmp_path / "saved").iterdir()}
    weights = "pytorch_model.bin" if model.config.hf_unsupported else "model.safetensors"
    assert names == {"config.json", weights, "sparsity.safetensors"}
    loaded = Mamba2LM.from_pretrained(tmp_path / "saved")
    assert replace(loaded.config, extra={}) == replace(model.config, extra={})
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


# ---------------------------------------------------------------------- masks
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind", ["group_uniform", "group_nonuniform", "group_empty", "head_uniform", "head_grouped"]
)
@pytest.mark.parametrize("heads", [False, True], ids=["states", "states+heads"])
def test_masked_model_matches_reference(kind: str, mode: str, heads: bool) -> None:
    model = _model()
    for i in range(N_LAYER):
        model.set_state_mask(i, _state_mask(kind, seed=i), pruned_states=mode)
        if heads:
            model.set_head_transition_mask(i, _head_mask(seed=i))
    ids = _ids()
    with torch.no_grad():
        got = model(ids)
        torch.testing.assert_close(got, _reference_logits(model, ids), **TOL)
        assert (got - _model()(ids)).abs().max() > 1e-3  # the masks change the output


def test_head_transition_mask_alone_matches_reference() -> None:
    model = _model()
    model.set_head_transition_mask(1, _head_mask())
    ids = _ids()
    with torch.no_grad():
        got = model(ids)
        torch.testing.assert_close(got, _reference_logits(model, ids), **TOL)
        assert (got - _model()(ids)).abs().max() > 1e-3


def test_mask_api() -> None:
    model = _model()
    mask = _state_mask("group_uniform")
    model.set_state_mask(1, mask)
    layout, mode = model.state_layout(1)
    assert isinstance(layout, SSDStateLayout) and mode == "remove"  # the Mamba-2 default
    assert set(model.state_masks()) == {"backbone.layers.1.mixer.ssm_state"}
    assert torch.equal(model.state_masks()["backbone.layers.1.mixer.ssm_state"], mask)
    assert model.pruned_states_map() == {"backbone.layers.1.mixer.ssm_state": "remove"}
    heads = _head_mask()
    model.set_head_transition_mask(0, heads)
    heads[0] = not heads[0]  # the model keeps its own copy
    assert torch.equal(model.head_transition_mask(0), _head_mask())
    assert set(model.head_transition_masks()) == {"backbone.layers.0.mixer.A_log"}
    # a prebuilt layout is used as is
    prebuilt = SSDStateLayout(_state_mask("head_uniform"), nheads=NHEADS, ngroups=NGROUPS)
    model.set_state_mask(0, prebuilt, pruned_states="zero_transition")
    assert model.state_layout(0) == (prebuilt, "zero_transition")
    model.clear_state_masks()
    assert model.state_masks() == {} and set(model.head_transition_masks()) == {
        "backbone.layers.0.mixer.A_log"
    }
    model.clear_head_transition_masks()
    assert model.head_transition_masks() == {}

    with pytest.raises(
        ValueError, match=r"expected shape \(ngroups, n\) = \(2, 8\) or \(nheads, n\) = \(8, 8\)"
    ):
        model.set_state_mask(0, torch.ones(3, N_STATE, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(nheads, n\) = \(8, 8\), got \(8,\)"):
        model.set_state_mask(0, torch.ones(N_STATE, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"dtype torch\.bool"):
        model.set_state_mask(0, torch.ones(NGROUPS, N_STATE))
    with pytest.raises(ValueError, match="layer 0: state_mask: a layout built for nheads=4"):
        model.set_state_mask(0, SSDStateLayout(torch.ones(2, N_STATE, dtype=torch.bool), nheads=4, ngroups=2))
    with pytest.raises(TypeError, match="SSDStateLayout"):
        model.set_state_mask(0, [[True]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pruned_states"):
        model.set_state_mask(0, mask, pruned_states="drop")
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        model.set_state_mask(2, mask)
    with pytest.raises(
        ValueError, match=r"head transition mask: expected shape \(nheads,\) = \(8,\), got \(4,\)"
    ):
        model.set_head_transition_mask(0, torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"dtype torch\.bool"):
        model.set_head_transition_mask(0, torch.ones(NHEADS))
    assert model.state_masks() == {} and model.head_transition_masks() == {}


# ---------------------------------------------------------------------- cache / decode
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("kind", "compact_k"),
    [("dense", None), ("group_uniform", 4), ("head_uniform", 4), ("group_nonuniform", None)],
)
def test_decode_matches_full_sequence(kind: str, compact_k: int | None, mode: str) -> None:
    model = _model()
    for i in range(N_LAYER):
        model.set_state_mask(i, _state_mask(kind, seed=10 + i), pruned_states=mode)
    model.set_head_transition_mask(1, _head_mask())
    ids = _ids(length=11)
    prompt = 5  # crosses a chunk boundary
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        for lc in cache.layers:
            assert lc.conv_state.shape == (2, CONV_DIM, 4) and lc.conv_state.dtype == torch.float32
            assert lc.ssm_state.shape == (2, NHEADS, HEADDIM, compact_k or N_STATE)
            assert lc.ssm_state.dtype == torch.float32 and lc.compact == (compact_k is not None)
        steps = [model(ids[:, :prompt], cache=cache)]
        assert cache.seqlen_offset == prompt
        for t in range(prompt, ids.shape[1]):
            steps.append(model(ids[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)
    if compact_k is not None:
        dense = model.allocate_cache(2, compact=False)
        assert cache.ssm_state_nbytes() * N_STATE == dense.ssm_state_nbytes() * compact_k
        assert cache.dense_ssm_state(0).shape == (2, NHEADS, HEADDIM, N_STATE)


def test_multi_token_continuation_short_prefill_and_stale_cache() -> None:
    model = _model()
    model.set_state_mask(0, _state_mask("group_uniform"))
    ids = _ids(length=9)
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        first = model(ids[:, :2], cache=cache)  # shorter than the conv kernel
        rest = model(ids[:, 2:], cache=cache)  # several tokens continuing a cached sequence
        torch.testing.assert_close(torch.cat([first, rest], 1), full, **TOL)
        model.set_head_transition_mask(0, _head_mask())  # the cache does not depend on it
        model(ids[:, :1], cache=cache)
        model.set_state_mask(1, _state_mask("group_uniform"))
        with pytest.raises(RuntimeError, match="allocate a new cache"):
            model(ids[:, :1], cache=cache)
        with pytest.raises(ValueError, match="batch size 2"):
            model(ids[:1], cache=model.allocate_cache(2))


def test_generate_greedy_equals_argmax_loop() -> None:
    model = _model()
    model.set_state_mask(0, _state_mask("head_uniform"), pruned_states="zero_transition")
    model.set_head_transition_mask(1, _head_mask())
    ids = _ids(length=5)
    out = model.generate(ids, max_new_tokens=7)
    assert out.shape == (2, 12) and torch.equal(out[:, :5], ids)
    seq = ids
    with torch.no_grad():
        for _ in range(7):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


# ---------------------------------------------------------------------- save / load
def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    from sparsessm_kernels.sparsity import head_mask_names, load_masks

    model = _model(tie_embeddings=False)
    model.set_state_mask(0, _state_mask("head_uniform"), pruned_states="zero_transition")
    model.set_state_mask(1, _state_mask("group_nonuniform"))
    model.set_head_transition_mask(1, _head_mask())
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "model.safetensors",
        "sparsity.safetensors",
    }
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "mamba2" and cfg["architectures"] == ["Mamba2ForCausalLM"]
    assert (cfg["num_heads"], cfg["head_dim"], cfg["n_groups"], cfg["state_size"]) == (8, 8, 2, 8)
    masks, meta = load_masks(tmp_path / "sparsity.safetensors")
    assert set(masks) == {
        "backbone.layers.0.mixer.ssm_state",
        "backbone.layers.1.mixer.ssm_state",
        "backbone.layers.1.mixer.A_log",
    }
    assert head_mask_names(meta) == {"backbone.layers.1.mixer.A_log"}
    assert json.loads(meta["pruned_states"]) == {
        "backbone.layers.0.mixer.ssm_state": "zero_transition",
        "backbone.layers.1.mixer.ssm_state": "remove",
    }
    loaded = load_model(tmp_path)
    assert type(loaded) is Mamba2LM
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.pruned_states_map() == model.pruned_states_map()
    for k, mask in model.state_masks().items():
        assert torch.equal(loaded.state_masks()[k], mask)
    assert (
        torch.equal(loaded.head_transition_mask(1), _head_mask()) and loaded.head_transition_mask(0) is None
    )
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    # replacing a saved directory needs overwrite=True; a dense save then drops the masks file
    loaded.clear_state_masks()
    loaded.clear_head_transition_masks()
    with pytest.raises(OutputPathError, match=r"not empty.*overwrite=True"):
        loaded.save_pretrained(tmp_path)
    loaded.save_pretrained(tmp_path, overwrite=True)
    assert not (tmp_path / "sparsity.safetensors").exists()
    dense = Mamba2LM.from_pretrained(tmp_path)
    assert dense.state_masks() == {} and dense.head_transition_masks() == {}


def test_dtype_and_device_arguments(tmp_path: Path) -> None:
    model = _model()
    model.save_pretrained(tmp_path)
    half = Mamba2LM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    assert Mamba2LM.from_pretrained(tmp_path, dtype="auto").dtype == torch.float32
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(half(ids), model(ids), atol=0.15, rtol=0.05)
    with pytest.raises(TypeError, match="dtype"):
        Mamba2LM.from_pretrained(tmp_path, dtype="half")


# ---------------------------------------------------------------------- export
@pytest.mark.parametrize(
    ("masks", "heads", "expected_n"),
    [
        ({0: "group_uniform", 1: "group_uniform"}, False, 4),  # physical removal
        ({0: "group_uniform", 1: "group_uniform"}, True, 4),
        ({0: "group_nonuniform", 1: "group_uniform"}, False, 5),  # removal down to 5, fillers zeroed
        ({0: "head_grouped"}, True, N_STATE),  # a dense layer keeps the full size: zeroed columns
        ({0: "group_empty", 1: "group_empty"}, False, 3),
        ({}, True, N_STATE),  # head transition masks only
    ],
    ids=["uniform", "uniform+heads", "nonuniform", "per-head-spelling+heads", "empty-group", "heads"],
)
def test_export_for_transformers(tmp_path: Path, masks: dict, heads: bool, expected_n: int) -> None:
    transformers = pytest.importorskip("transformers")
    model = _model(bias=True)
    for i, kind in masks.items():
        model.set_state_mask(i, _state_mask(kind, seed=20 + i), pruned_states="remove")
    if heads:
        for i in range(N_LAYER):
            model.set_head_transition_mask(i, _head_mask(seed=i))
    model.export_for_stock_kernels(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    hf = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.state_size == expected_n
    ids = _ids(length=13)
    with torch.no_grad():
        expected = model(ids)
        torch.testing.assert_close(hf(ids).logits, expected, **TOL)
        torch.testing.assert_close(Mamba2LM.from_pretrained(tmp_path)(ids), expected, **TOL)
        generated = hf.generate(
            ids[:, :4], max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    assert torch.equal(generated, model.generate(ids[:, :4], 6))
    a_log = hf.backbone.layers[0].mixer.A_log
    assert int((a_log == PRUNED_A_LOG).sum()) == (3 if heads else 0)


def test_export_errors(tmp_path: Path) -> None:
    model = _model()
    model.set_state_mask(0, _state_mask("group_uniform"), pruned_states="zero_transition")
    with pytest.raises(ExportError, match="layer 0: a state mask with pruned_states='zero_transition'"):
        model.export_for_stock_kernels(tmp_path / "a")
    model.set_state_mask(0, _state_mask("head_uniform"), pruned_states="remove")
    with pytest.raises(ExportError, match="per-head state mask whose heads differ inside a group"):
        model.export_for_stock_kernels(tmp_path / "b")
    with pytest.raises(ValueError, match="format"):
        model.export_for_stock_kernels(tmp_path / "c", format="onnx")
    with pytest.raises(ExportError, match=r"LayerNorm block norms.*format='mamba_ssm'"):
        _model(norm_type="layer_norm").export_for_stock_kernels(tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "file").write_text("x")
    with pytest.raises(OutputPathError, match="not empty"):
        _model().export_for_stock_kernels(tmp_path / "e")


def test_export_mamba_ssm_format_round_trip(tmp_path: Path) -> None:
    model = _model()
    model.set_state_mask(0, _state_mask("group_uniform"), pruned_states="remove")
    model.set_state_mask(1, _state_mask("group_uniform", seed=1), pruned_states="remove")
    model.set_head_transition_mask(0, _head_mask())
    model.export_for_stock_kernels(tmp_path, format="mamba_ssm")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["ssm_cfg"]["layer"] == "Mamba2" and cfg["ssm_cfg"]["d_state"] == 4 and "d_model" in cfg
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert "backbone.embedding.weight" in state and "lm_head.weight" in state
    assert state["backbone.layers.0.mixer.in_proj.weight"].shape == (
        2 * D_INNER + 2 * NGROUPS * 4 + NHEADS,
        D_MODEL,
    )
    assert state["backbone.layers.0.mixer.conv1d.weight"].shape == (D_INNER + 2 * NGROUPS * 4, 1, 4)
    loaded = load_model(tmp_path)
    assert type(loaded) is Mamba2LM and loaded.state_masks() == {} and loaded.head_transition_masks() == {}
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), **TOL)


# ---------------------------------------------------------------------- dispatch and bad input
def test_load_model_dispatches_on_the_architecture(tmp_path: Path) -> None:
    m1 = MambaLM.from_config(MambaLMConfig(vocab_size=VOCAB, d_model=16, n_layer=1, d_state=4), seed=0)
    m1.save_pretrained(tmp_path / "m1")
    _model().save_pretrained(tmp_path / "m2")
    assert type(load_model(tmp_path / "m1")) is MambaLM
    assert type(load_model(tmp_path / "m2", dtype=torch.bfloat16)) is Mamba2LM
    assert isinstance(read_model_config(tmp_path / "m1"), MambaLMConfig)
    assert isinstance(read_model_config(tmp_path / "m2"), Mamba2LMConfig)
    with pytest.raises(CheckpointFormatError, match=r"model_type 'mamba2' is not supported.*Mamba2LM"):
        MambaLM.from_pretrained(tmp_path / "m2")
    with pytest.raises(CheckpointFormatError, match="a Mamba-1 config, not a Mamba-2 one"):
        Mamba2LM.from_pretrained(tmp_path / "m1")
    cfg = json.loads((tmp_path / "m2" / "config.json").read_text())
    (tmp_path / "m2" / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon_h1"}))
    with pytest.raises(CheckpointFormatError, match="model_type 'falcon_h1' is not supported"):
        load_model(tmp_path / "m2")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model(tmp_path / "missing")


def _edit_safetensors(directory: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_strict_keys_and_shapes(tmp_path: Path) -> None:
    d = tmp_path / "m"
    _model(tie_embeddings=True).save_pretrained(d)

    def check(edit, match: str) -> None:
        _model(tie_embeddings=True).save_pretrained(d, overwrite=True)
        _edit_safetensors(d, edit)
        with pytest.raises(CheckpointFormatError, match=match) as exc:
            Mamba2LM.from_pretrained(d)
        assert "model.safetensors" in str(exc.value)

    check(
        lambda s: s.pop("backbone.layers.1.mixer.dt_bias"),
        r"a Mamba-2 LM with d_model=32, .*missing keys: backbone\.layers\.1\.mixer\.dt_bias",
    )
    check(lambda s: s.update({"backbone.layers.0.mixer.x_proj.weight": torch.zeros(3)}), "unexpected keys")
    check(
        lambda s: s.update({"backbone.layers.0.mixer.A_log": torch.zeros(NHEADS, N_STATE)}),
        r"shape mismatch: backbone\.layers\.0\.mixer\.A_log: expected shape \(8,\)",
    )
    check(lambda s: s.update({"lm_head.weight": torch.zeros(VOCAB, D_MODEL)}), r"lm_head\.weight differs")


def test_config_errors(tmp_path: Path) -> None:
    d = tmp_path / "m"
    _model().save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())

    def check(new_cfg: dict, match: str) -> None:
        (d / "config.json").write_text(json.dumps(new_cfg))
        with pytest.raises(CheckpointFormatError, match=match):
            Mamba2LM.from_pretrained(d)

    check({**cfg, "num_heads": 4}, r"hidden_size \* expand = 64 must equal num_heads \* head_dim = 4 \* 8")
    check({**cfg, "n_groups": 3}, "not a multiple of ngroups=3")
    check({**cfg, "hidden_act": "gelu"}, "hidden_act 'gelu'")
    check({**cfg, "time_step_limit": [1.0]}, "time_step_limit")
    check({k: v for k, v in cfg.items() if k != "hidden_size"}, "missing required field 'hidden_size'")
    ssm = _mamba_ssm_cfg()
    check({**ssm, "ssm_cfg": {**ssm["ssm_cfg"], "d_ssm": 32}}, r"d_ssm=32 \(a gated-MLP part")
    check({**ssm, "ssm_cfg": {**ssm["ssm_cfg"], "mimo": True}}, r"unsupported ssm_cfg fields \['mimo'\]")
    check({**ssm, "attn_layer_idx": [1]}, "attention layers")
    check({**ssm, "d_intermediate": 64}, "d_intermediate=64")
    check(
        {**ssm, "ssm_cfg": {**ssm["ssm_cfg"], "layer": "Mamba3"}}, "ssm_cfg.layer='Mamba3' is not supported"
    )


def test_bad_masks_file(tmp_path: Path) -> None:
    from sparsessm_kernels.sparsity import save_masks

    model = _model()
    model.save_pretrained(tmp_path)
    sparsity = tmp_path / "sparsity.safetensors"
    group = _state_mask("group_uniform")

    def check(match: str, masks: dict, **kw) -> None:
        save_masks(sparsity, masks, **kw)
        with pytest.raises(CheckpointFormatError, match=match):
            Mamba2LM.from_pretrained(tmp_path)

    check(
        r"mask keys \['backbone\.layers\.5\.mixer\.ssm_state'\] name no layer",
        {"backbone.layers.5.mixer.ssm_state": group},
    )
    # a Mamba-1 masks file (state masks under A_log) is no Mamba-2 masks file
    check(r"backbone\.layers\.0\.mixer\.A_log'\] name no layer", {"backbone.layers.0.mixer.A_log": group})
    check(
        r"state mask 'backbone\.layers\.0\.mixer\.ssm_state' has shape \(4, 8\)",
        {"backbone.layers.0.mixer.ssm_state": torch.ones(4, N_STATE, dtype=torch.bool)},
    )
    check(
        r"head transition mask 'backbone\.layers\.0\.mixer\.A_log' has shape \(4,\)",
        {},
        head_masks={"backbone.layers.0.mixer.A_log": torch.ones(4, dtype=torch.bool)},
    )
    check(
        "names layers without a state mask",
        {"backbone.layers.0.mixer.ssm_state": group},
        metadata={"pruned_states": json.dumps({"backbone.layers.1.mixer.ssm_state": "remove"})},
    )
    # one mode for every mask, and the Mamba-2 default when absent
    save_masks(
        sparsity, {"backbone.layers.0.mixer.ssm_state": group}, metadata={"pruned_states": "zero_transition"}
    )
    assert Mamba2LM.from_pretrained(tmp_path).state_layout(0)[1] == "zero_transition"
    save_masks(sparsity, {"backbone.layers.0.mixer.ssm_state": group})
    assert Mamba2LM.from_pretrained(tmp_path).state_layout(0)[1] == "remove"


def test_bad_forward_input() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"\(b, l\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer dtype"):
        model(torch.zeros(1, 3))


# ---------------------------------------------------------------------- CLI
def test_cli_eval_convert_and_prune_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vocab = 260  # room for the UTF-8 byte fallback tokenizer
    model = _model(vocab_size=vocab)
    model.set_state_mask(0, _state_mask("group_uniform"))
    model.set_head_transition_mask(1, _head_mask())
    src = tmp_path / "src-ssm"
    state = _mamba_ssm_state(model.state_dict(), tie=True)
    cfg = {**_mamba_ssm_cfg(pad_vocab_size_multiple=4), "vocab_size": vocab}
    _write_mamba_ssm_dir(src, state, cfg)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text(encoding="utf-8")
    )

    # convert: mamba_ssm layout -> this package's (HF) layout
    dst = tmp_path / "converted"
    assert cli.main(["convert", str(src), "--out", str(dst), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["masked_layers"] == []
    assert json.loads((dst / "config.json").read_text())["model_type"] == "mamba2"
    dense = Mamba2LM.from_pretrained(src)
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(Mamba2LM.from_pretrained(dst)(ids), dense(ids), atol=0, rtol=0)
    # masks are carried through convert
    model.save_pretrained(tmp_path / "masked")
    assert cli.main(["convert", str(tmp_path / "masked"), "--out", str(tmp_path / "masked2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["masked_layers"] == [
        "backbone.layers.0.mixer.ssm_state",
        "backbone.layers.1.mixer.A_log",
    ]
    assert cli.main(["convert", str(src), "--out", str(tmp_path / "x"), "--zero-a-log-pruned"]) == 2
    assert "--zero-a-log-pruned" in capsys.readouterr().err and not (tmp_path / "x").exists()

    # eval: the masked model's perplexity, as the model computes it
    argv = ["eval", str(tmp_path / "masked"), "--data", str(corpus), "--seqlen", "16", "--max-windows", "2"]
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        assert cli.main([*argv, "--json", "--no-progress"]) == 0
    p = json.loads(capsys.readouterr().out)["perplexity"]
    assert p["windows"] == 2 and p["tokens"] == 2 * 15
    from sparsessm_kernels.prune import evaluate_perplexity, load_tokenizer, load_tokens

    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        tokens = load_tokens(str(corpus), load_tokenizer(tmp_path / "masked", vocab), "test")
    assert p["ppl"] == pytest.approx(evaluate_perplexity(model, tokens, 16, max_windows=2)["ppl"], rel=1e-5)

    # prune refuses a method Mamba-2's A_log does not have, before any work
    out = tmp_path / "pruned"
    argv = [
        "prune",
        str(src),
        "--calib",
        str(corpus),
        "--save",
        str(out),
        "--no-progress",
        "--method",
        "wanda",
    ]
    assert cli.main(argv) == 2
    assert "method: 'wanda' is not defined for Mamba-2 A_log" in capsys.readouterr().err
    assert not out.exists()
