"""Tests of Mamba-2 pruning (sparsessm_kernels.prune on Mamba2LM) and of SNIP on both architectures:
intermediates against the model's forward, exact per-module sparsity, N:M validity, SNIP against an
independent autograd computation, the SSD state and head saliencies against independent
computations on the SSD oracle, the state saliency against magnitude and random, the CLI end to end
(save, reload, stock export) and bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsessm_kernels import cli
from sparsessm_kernels.models import Mamba2LM, MambaLM, MambaLMConfig
from sparsessm_kernels.ops import ssd_scan_ref
from sparsessm_kernels.prune import PruneConfig, PruneConfigError, prune_model
from sparsessm_kernels.prune.capture_mamba2 import mamba2_intermediates
from sparsessm_kernels.prune.heads import keep_channels, keep_heads, remove_channels
from sparsessm_kernels.prune.snip import snip_saliency
from sparsessm_kernels.prune.ssd import channel_weights, ssd_statistics
from sparsessm_kernels.prune.ssm import time_weights
from sparsessm_kernels.sparsity import kept_count

from .test_models_mamba2 import N_STATE, NGROUPS, NHEADS, VOCAB, _model

PROJ = ("in_proj", "out_proj")


def _ids(n: int = 4, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _prune(model, ids: torch.Tensor | None = None, **kw):
    kw.setdefault("batch_size", 2)
    return prune_model(model, _ids() if ids is None else ids, PruneConfig(**kw), progress=False)


def _loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _layer_input(model: Mamba2LM, ids: torch.Tensor, layer: int = 0):
    block = model.backbone.layers[layer]
    with torch.no_grad():
        h = model.backbone.embeddings(ids)
        for blk in model.backbone.layers[:layer]:
            h = blk(h)
        return block, block.norm(h.to(block.norm.weight.dtype))


# ---------------------------------------------------------------------- intermediates
@pytest.mark.parametrize("variant", ["dense", "masked", "no_gated_norm"])
def test_intermediates_reproduce_forward(variant: str) -> None:
    model = _model(rmsnorm=variant != "no_gated_norm")
    if variant == "masked":
        keep = torch.ones(NGROUPS, N_STATE, dtype=torch.bool)
        keep[0, :3] = False
        model.set_state_mask(0, keep)
        model.set_head_transition_mask(0, torch.arange(NHEADS) % 3 != 0)
    block, normed = _layer_input(model, _ids())
    inter = mamba2_intermediates(block.mixer, normed)
    with torch.no_grad():
        torch.testing.assert_close(inter["out"], block.mixer(normed), atol=0, rtol=0)
        torch.testing.assert_close(block.mixer.out_proj(inter["out_proj"]), inter["out"], atol=0, rtol=0)
    assert inter["conv1d"].shape == (4, block.mixer.conv_dim, 16)
    assert inter["y"].shape == (4, 16, NHEADS, block.mixer.headdim)


# ---------------------------------------------------------------------- projections
@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude", "snip", "random"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_projection_sparsity_per_module(method: str, pattern: str) -> None:
    model = _model()
    result = _prune(model, method=method, targets="ffn", pattern=pattern, conv1d=True)
    kinds = [(r.layer, r.kind) for r in result.modules]
    assert kinds == [(i, k) for i in range(2) for k in ("in_proj", "conv1d", "out_proj")]
    for rec in result.modules:
        weight = getattr(model.mixer(rec.layer), rec.kind).weight
        zeros = int((weight == 0).sum())
        assert rec.pruned == zeros == weight.numel() // 2, rec
        assert rec.sparsity == 0.5 and rec.method == method
        if pattern == "2:4":
            groups = (weight.reshape(weight.shape[0], -1) != 0).reshape(-1, 4).sum(-1)
            assert bool((groups == 2).all())


def test_sensitivity_allocation_on_mamba2() -> None:
    model = _model()
    result = _prune(model, method="sparsessm", targets="ffn", sparsity=0.5)  # alpha 0.04 by default
    assert set(result.allocation) == {f"backbone.layers.{i}.mixer.{k}" for i in range(2) for k in PROJ}
    for kind in PROJ:
        recs = [r for r in result.modules if r.kind == kind]
        total = sum(r.params for r in recs)
        assert sum(r.pruned for r in recs) == total - kept_count(total, 0.5)
        assert all(0.46 - 1e-9 <= r.target_sparsity <= 0.54 + 1e-9 for r in recs)
        assert len({r.pruned for r in recs}) > 1  # the allocation differs between layers


def test_sparsegpt_beats_magnitude_on_layer_output() -> None:
    ids = _ids(8, 24)
    dense = _model()
    errors = {}
    for method in ("sparsegpt", "magnitude"):
        model = _model()
        _prune(model, ids, method=method, targets="ffn", include=("layers\\.0\\.",))
        block, normed = _layer_input(dense, ids)
        with torch.no_grad():
            errors[method] = float(
                (model.backbone.layers[0].mixer(normed) - block.mixer(normed)).square().sum()
            )
    assert errors["sparsegpt"] < errors["magnitude"]


# ---------------------------------------------------------------------- SNIP
def _mamba1() -> MambaLM:
    cfg = MambaLMConfig(vocab_size=VOCAB, d_model=16, n_layer=2, d_state=8, dt_rank=4)
    model = MambaLM.from_config(cfg, seed=0).eval()
    with torch.no_grad():
        model.backbone.embeddings.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    return model


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_snip_saliency_matches_autograd(arch: str) -> None:
    model = _mamba1() if arch == "mamba" else _model()
    ids = _ids(5, 12)
    names = {
        f"backbone.layers.{i}.mixer.{k}": getattr(model.mixer(i), k).weight for i in range(2) for k in PROJ
    }
    got = snip_saliency(model, ids, names, device="cpu", batch_size=2)  # 3 batches, uneven
    # independent: one full-batch mean loss through torch.autograd.grad on a copy
    ref = copy.deepcopy(model)
    params = [dict(ref.named_parameters())[n + ".weight"] for n in names]
    grads = torch.autograd.grad(_loss(ref, ids), params)
    for (name, _), p, g in zip(names.items(), params, grads):
        torch.testing.assert_close(got[name], (p * g).abs().detach(), atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_snip_pipeline_prunes_lowest_saliency(arch: str, pattern: str) -> None:
    def build():
        return _mamba1() if arch == "mamba" else _model()

    model, ids = build(), _ids(4, 12)
    kinds = ("in_proj", "x_proj", "dt_proj", "out_proj") if arch == "mamba" else PROJ
    ref = build()
    params = [getattr(ref.mixer(i), k).weight for i in range(2) for k in kinds]
    grads = torch.autograd.grad(_loss(ref, ids), params)
    result = _prune(model, ids, method="snip", targets="ffn", pattern=pattern)
    assert [r.method for r in result.modules] == ["snip"] * len(params)
    for rec, p, g in zip(result.modules, params, grads):
        sal = (p * g).abs().detach()
        pruned = getattr(model.mixer(rec.layer), rec.kind).weight == 0
        assert rec.pruned == int(pruned.sum())
        if pattern == "unstructured":
            # every pruned entry scores no higher than every kept one
            assert float(sal[pruned].max()) <= float(sal[~pruned].min()) + 1e-12
        else:
            s4, p4 = sal.reshape(-1, 4), pruned.reshape(-1, 4)
            assert bool((p4.sum(-1) == 2).all())
            assert bool(
                (s4.masked_fill(~p4, -1).max(-1).values <= s4.masked_fill(p4, 1e30).min(-1).values).all()
            )


# ---------------------------------------------------------------------- SSD saliencies
def _scan_inputs(model: Mamba2LM, ids: torch.Tensor, layer: int = 0):
    block, normed = _layer_input(model, ids, layer)
    return block.mixer, mamba2_intermediates(block.mixer, normed, "out_proj")


@torch.no_grad()
def test_state_saliency_is_exact_single_state_removal_error() -> None:
    """The ``(g, n)`` saliency equals the channel-weighted squared change of the scan output when that
    one state is removed, computed by the float64 SSD oracle with a one-state mask."""
    model = _model()
    mixer, inter = _scan_inputs(model, _ids(3, 10))
    k = channel_weights(mixer, inter["y"], inter["z"])
    A = -torch.exp(mixer.A_log.double())
    args = dict(D=None, dt_bias=mixer.dt_bias.double(), dt_softplus=True, dt_limit=mixer.dt_limit)
    x, dt, B, C = (inter[key].double() for key in ("x", "dt", "B", "C"))
    got = ssd_statistics(
        inter["x"], inter["dt"], A.float(), inter["B"], inter["C"],
        dt_bias=mixer.dt_bias.float(), dt_limit=mixer.dt_limit, state_weights=k,
    )["state"]  # fmt: skip
    dense = ssd_scan_ref(x, dt, A, B, C, **args)
    for g in range(NGROUPS):
        for s in range(N_STATE):
            keep = torch.ones(NGROUPS, N_STATE, dtype=torch.bool)
            keep[g, s] = False
            dy = dense - ssd_scan_ref(x, dt, A, B, C, state_mask=keep, pruned_states="remove", **args)
            expected = float((k.double() * dy.square()).sum())
            assert float(got[g, s]) == pytest.approx(expected, rel=2e-4, abs=1e-9)


@torch.no_grad()
def test_head_saliency_matches_oracle_states() -> None:
    """SparseSSM's per-head score: ``sum_t w_t exp(dt_t A)^2 ||h_{t-1}||^2`` with ``h_{t-1}`` the
    oracle's final state of the first ``t`` steps."""
    model = _model()
    model.set_head_transition_mask(0, torch.arange(NHEADS) != 2)
    mixer, inter = _scan_inputs(model, _ids(2, 9))
    A = -torch.exp(mixer.A_log.float())
    w = time_weights("power", 9)
    got = ssd_statistics(
        inter["x"], inter["dt"], A, inter["B"], inter["C"], dt_bias=mixer.dt_bias.float(),
        dt_limit=mixer.dt_limit, heads_kept=mixer.head_transition_mask, head_weights=w,
    )["head"]  # fmt: skip
    x, dt, B, C = (inter[key].double() for key in ("x", "dt", "B", "C"))
    dtm = F.softplus(dt + mixer.dt_bias.double())
    heads = mixer.head_transition_mask
    expected = torch.zeros(NHEADS, dtype=torch.float64)
    for t in range(1, 9):
        _, state = ssd_scan_ref(
            x[:, :t], dt[:, :t], A.double(), B[:, :t], C[:, :t], dt_bias=mixer.dt_bias.double(),
            dt_softplus=True, head_transition_mask=heads, return_final_states=True,
        )  # fmt: skip
        decay = torch.exp(dtm[:, t] * A.double()) * heads.double()
        expected += float(w[t]) * (decay.square() * state.square().sum((2, 3))).sum(0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-9)


def _kl_to_dense(model, dense, ids) -> float:
    with torch.no_grad():
        p, q = F.log_softmax(dense(ids), -1), F.log_softmax(model(ids), -1)
        return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("pattern", ["column", "2:4"])
def test_state_saliency_beats_magnitude_and_random(pattern: str) -> None:
    """Half of every group's states removed: the SSD saliency's model stays closest to the dense one
    (KL on held-out tokens, summed over three models)."""
    kl = dict.fromkeys(("sparsessm", "magnitude", "random"), 0.0)
    for seed in range(3):
        calib, held = _ids(8, 32, 100 + seed), _ids(8, 32, 200 + seed)
        dense = _model(seed)
        for method in kl:
            model = _model(seed)
            result = _prune(model, calib, method=method, targets="states", pattern=pattern, batch_size=4)
            for rec in result.modules:
                assert rec.kind == "ssm_state" and rec.pruned == NGROUPS * N_STATE // 2
                assert rec.extra["kept_per_group"] == [N_STATE // 2] * NGROUPS
            kl[method] += _kl_to_dense(model, dense, held)
    assert kl["sparsessm"] < kl["magnitude"] and kl["sparsessm"] < kl["random"], kl


def test_head_pruning_masks_and_records() -> None:
    settings = (
        ("sparsessm", {}),
        ("sparsessm", {"aggregation": "vote"}),
        ("sparsessm", {"score": "a_log"}),
        ("magnitude", {}),
        ("random", {}),
    )
    for method, kw in settings:
        model = _model()
        result = _prune(model, method=method, targets="ssm", sparsity=0.25, **kw)
        for rec in result.modules:
            mask = model.head_transition_mask(rec.layer)
            assert rec.kind == "A_log" and rec.pruned == int((~mask).sum()) == 2 and rec.shape == [NHEADS]
        assert model.state_masks() == {}
    model = _model()
    _prune(model, method="sparsessm", targets="ssm", pattern="2:4")
    for i in range(2):
        assert bool((model.head_transition_mask(i).reshape(-1, 4).sum(-1) == 2).all())


def test_head_scores_prune_the_least_salient_heads() -> None:
    """The pruned heads are those with the lowest oracle-checked score (layer 0 sees dense inputs)."""
    model, ids = _model(), _ids(4, 16)
    mixer, inter = _scan_inputs(model, ids)
    score = ssd_statistics(
        inter["x"], inter["dt"], -torch.exp(mixer.A_log.float()), inter["B"], inter["C"],
        dt_bias=mixer.dt_bias.float(), dt_limit=mixer.dt_limit, head_weights=time_weights("power", 16),
    )["head"]  # fmt: skip
    _prune(model, ids, method="sparsessm", targets="ssm", sparsity=0.5, include=("layers\\.0\\.",))
    pruned = ~model.head_transition_mask(0)
    assert float(score[pruned].max()) <= float(score[~pruned].min())
    assert model.head_transition_mask(1) is None


# ---------------------------------------------------------------------- CLI
def _corpus(path: Path) -> Path:
    words = ["the", "state", "space", "model", "prunes", "heads", "and", "states", "of", "mamba"]
    g = torch.Generator().manual_seed(0)
    text = " ".join(words[int(i)] for i in torch.randint(0, len(words), (600,), generator=g))
    path.write_text(text + "\n")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["--targets", "states", "--pattern", "column"],
        ["--targets", "ssm", "--method", "sparsessm"],
        ["--targets", "ffn", "--method", "snip", "--pattern", "2:4"],
    ],
)
def test_cli_prunes_mamba2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str]) -> None:
    model = _model(vocab_size=256)
    src = tmp_path / "src"
    model.save_pretrained(src)
    corpus = _corpus(tmp_path / "train.txt")
    out, stock = tmp_path / "out", tmp_path / "stock"
    argv = [
        "prune",
        str(src),
        "--calib",
        str(corpus),
        "--save",
        str(out),
        "--nsamples",
        "4",
        "--seqlen",
        "16",
    ]
    argv += ["--no-progress", "--json", "--export-stock", str(stock), "--batch-size", "2", *args]
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "prune_report.json").read_text())
    assert len(report["modules"]) >= 2 and report["summary"]["total"]["pruned"] > 0
    pruned = Mamba2LM.from_pretrained(out)
    exported = Mamba2LM.from_pretrained(stock)
    ids = _ids(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(exported(ids), pruned(ids), atol=2e-5, rtol=2e-5)
    if "states" in args:
        assert all(pruned.mixer(i).layout is not None for i in range(2))
        assert exported.config.d_state == N_STATE // 2
    if "ssm" in args:
        assert all(int((~pruned.head_transition_mask(i)).sum()) == NHEADS // 2 for i in range(2))


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"targets": "ssm", "method": "wanda"}, "method: 'wanda' is not defined for Mamba-2 A_log"),
        ({"targets": "states", "method": "sparsegpt", "pattern": "column"}, "Mamba-2 ssm_state"),
        ({"targets": "ssm", "pattern": "column"}, "one A_log per head, so 'column'"),
        ({"targets": "states"}, "pattern: --targets states prunes whole state columns"),
        ({"targets": "ssm", "method": "snip"}, "method: snip scores projection weights"),
        ({"targets": "ssm", "pattern": "3:6"}, "has 8 heads, not a multiple of M=6"),
        ({"targets": "states", "pattern": "column", "sparsity": 0.95}, "remove every one of the 8 states"),
    ],
)
def test_bad_settings_name_the_argument(kw: dict, message: str) -> None:
    with pytest.raises(PruneConfigError, match=message.replace("(", r"\(")):
        _prune(_model(), **kw)


def test_states_target_refused_on_mamba1_and_masked_layers() -> None:
    with pytest.raises(PruneConfigError, match="targets: 'states' prunes the B / C state columns of Mamba-2"):
        prune_model(_mamba1(), _ids(), PruneConfig(targets="states", pattern="column"), progress=False)
    model = _model()
    model.set_state_mask(1, torch.ones(NGROUPS, N_STATE, dtype=torch.bool))
    with pytest.raises(PruneConfigError, match="layer 1 already has a state mask"):
        _prune(model, targets="states", pattern="column")
    model.set_head_transition_mask(0, torch.ones(NHEADS, dtype=torch.bool))
    with pytest.raises(PruneConfigError, match="layer 0 already has a head transition mask"):
        _prune(model, targets="ssm")
    with pytest.raises(ValueError, match="calib_ids: expected"):
        prune_model(_model(), torch.zeros(4, 8), PruneConfig(), progress=False)
    with pytest.raises(ValueError, match="saliency: method snip needs"):
        from sparsessm_kernels.prune.projections import prune_linear

        prune_linear(torch.ones(4, 4), None, "snip", n_prune=2, nm=None)


# ---------------------------------------------------------------------- heads and head channels
def _dead_channels_reference(model: Mamba2LM, layer: int, keep: torch.Tensor) -> None:
    """Make the removed channels output zero: their x rows of in_proj and conv taps / bias zeroed."""
    mixer = model.mixer(layer)
    dead = torch.nonzero(~keep.reshape(-1)).flatten()
    with torch.no_grad():
        mixer.in_proj.weight[mixer.d_inner + dead] = 0
        mixer.conv1d.weight[dead] = 0
        mixer.conv1d.bias[dead] = 0


@pytest.mark.parametrize(
    ("kind", "sparsity"), [("heads", 0.5), ("heads", 0.25), ("headdim", 0.25), ("headdim", 0.5)]
)
def test_removed_channels_equal_zero_output_channels(kind: str, sparsity: float) -> None:
    """Physical removal = the same model with the removed channels' outputs zero (the gated norm's
    eps set negligible: removal scales it by new / old group size), masks carried over."""
    kw = {"norm_eps": 1e-12, "headdim": 4 if kind == "heads" and sparsity == 0.25 else 8}
    model, ref = _model(**kw), _model(**kw)
    nheads, headdim = model.config.nheads, model.config.headdim
    g = torch.Generator().manual_seed(0)
    for m in (model, ref):
        m.set_head_transition_mask(0, torch.arange(nheads) % 3 != 1)
        keep_states = torch.ones(NGROUPS, N_STATE, dtype=torch.bool)
        keep_states[:, :2] = False
        m.set_state_mask(1, keep_states)
    for layer in range(2):
        scores = torch.rand(nheads, headdim, generator=g)
        if kind == "heads":
            keep = keep_heads(scores, NGROUPS, sparsity)[:, None].expand(nheads, headdim).clone()
        else:
            keep = keep_channels(scores, sparsity)
        _dead_channels_reference(ref, layer, keep)
        remove_channels(model, layer, keep)
    kept_inner = int(keep.sum())
    assert model.config.d_inner == kept_inner and model.mixer(0).d_inner == kept_inner
    assert model.mixer(0).head_transition_mask.shape == (model.config.nheads,)
    ids = _ids(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), atol=2e-5, rtol=2e-5)


def test_flap_scores_and_kept_heads() -> None:
    model, ids = _model(), _ids(4, 16)
    block, normed = _layer_input(model, ids)
    u = mamba2_intermediates(block.mixer, normed)["out_proj"].reshape(-1, block.mixer.d_inner).double()
    fluct = u.var(0) * block.mixer.out_proj.weight.double().square().sum(0)
    head = fluct.reshape(NHEADS, -1).sum(1).reshape(NGROUPS, -1)
    result = _prune(model, ids, method="flap", targets="heads", sparsity=0.5)
    expected = torch.sort(torch.topk(head, 2, dim=1).indices + torch.arange(NGROUPS)[:, None] * 4, dim=1)
    assert result.modules[0].extra["kept_heads"] == expected.values.flatten().tolist()
    assert model.config.nheads == NHEADS // 2
    assert result.modules[0].pruned == result.modules[0].params - sum(
        p.numel() for p in model.mixer(0).parameters()
    )


def test_head_pruned_model_loads_in_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = _model()
    _prune(model, method="flap", targets="heads", sparsity=0.5)  # d_inner 64 -> 32 = d_model: expand 1
    model.save_pretrained(tmp_path / "m")
    hf = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = _ids(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits.float(), model(ids), atol=2e-5, rtol=2e-5)
    # a non-integer expand: mamba_ssm's layout, reloaded exactly
    model = _model()
    _prune(model, method="flap", targets="headdim", sparsity=0.25)
    assert model.config.expand == 1.5 and model.config.hf_unsupported
    model.save_pretrained(tmp_path / "m2")
    assert (tmp_path / "m2" / "pytorch_model.bin").is_file()
    with torch.no_grad():
        torch.testing.assert_close(Mamba2LM.from_pretrained(tmp_path / "m2")(ids), model(ids), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"targets": "heads", "method": "wanda"}, "method: --targets heads removes whole heads"),
        ({"targets": "ffn", "method": "flap"}, "method: flap scores heads"),
        ({"targets": "headdim", "method": "flap", "pattern": "2:4"}, "expected 'unstructured' or 'column'"),
        (
            {"targets": "heads", "method": "flap", "exclude": ("layers\\.1\\.",)},
            "layers \\[1\\] are not selected",
        ),
        ({"targets": "heads", "method": "flap", "sparsity": 0.9}, "would remove all 4 heads of a group"),
    ],
)
def test_bad_structured_settings(kw: dict, message: str) -> None:
    with pytest.raises(PruneConfigError, match=message):
        _prune(_model(), **kw)
    if kw["targets"] == "heads" and kw["method"] == "flap":
        with pytest.raises(PruneConfigError, match="targets: 'heads' removes Mamba-2 heads"):
            prune_model(_mamba1(), _ids(), PruneConfig(targets="heads", method="flap"), progress=False)


def test_remove_channels_bad_keep() -> None:
    model = _model()
    with pytest.raises(ValueError, match="keep: expected a bool \\(nheads, headdim\\) = \\(8, 8\\)"):
        remove_channels(model, 0, torch.ones(8, 4, dtype=torch.bool))
    keep = torch.ones(NHEADS, 8, dtype=torch.bool)
    keep[0, :3] = False
    with pytest.raises(ValueError, match="every kept head must keep the same number of channels"):
        remove_channels(model, 0, keep)
    keep = torch.ones(NHEADS, 8, dtype=torch.bool)
    keep[0] = False
    with pytest.raises(ValueError, match="every group must keep the same number"):
        remove_channels(model, 0, keep)


def test_non_integer_expand_config() -> None:
    from sparsessm_kernels.models import CheckpointFormatError, Mamba2LMConfig
    from sparsessm_kernels.models.mamba2_config import expand_for

    cfg = Mamba2LMConfig(vocab_size=8, d_model=32, n_layer=1, expand=1.5, headdim=8, ngroups=2)
    assert (cfg.d_inner, cfg.nheads) == (48, 6) and "non-integer expand" in cfg.hf_unsupported[-1]
    assert isinstance(Mamba2LMConfig(vocab_size=8, d_model=32, n_layer=1, expand=2.0, headdim=8).expand, int)
    with pytest.raises(
        CheckpointFormatError, match="expand must be a positive number with expand \\* d_model"
    ):
        Mamba2LMConfig(vocab_size=8, d_model=32, n_layer=1, expand=1.3, headdim=8)
    for d_inner, d_model in ((1408, 768), (1152, 768), (1536, 768), (7, 3), (2560 - 64, 2560)):
        e = expand_for(d_inner, d_model)
        assert int(e * d_model) == d_inner == round(e * d_model)


def test_cli_refuses_head_export_transformers_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _model(vocab_size=256).save_pretrained(tmp_path / "src")
    corpus = _corpus(tmp_path / "train.txt")
    argv = ["prune", str(tmp_path / "src"), "--calib", str(corpus), "--save", str(tmp_path / "out")]
    argv += [
        "--targets",
        "headdim",
        "--method",
        "flap",
        "--sparsity",
        "0.25",
        "--export-stock",
        str(tmp_path / "s"),
    ]
    assert cli.main(argv) == 2
    assert (
        "--export-stock: --targets headdim at sparsity 0.25 leaves 48 SSM channels" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()
