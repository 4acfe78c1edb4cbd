"""Tests of sparsessm_kernels.prune: pipeline, SSM and projection pruning, allocation, evaluation."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsessm_kernels.models import MambaLM, MambaLMConfig
from sparsessm_kernels.prune import (
    PruneConfig,
    PruneConfigError,
    SSMStatistics,
    allocate_sparsity,
    calibration_windows,
    eval_windows,
    evaluate_perplexity,
    mixer_intermediates,
    prune_model,
    score_continuations,
    sparsegpt_prune,
    ssm_masks,
    time_weights,
    vote_scores,
)
from sparsessm_kernels.prune import ssm as ssm_module
from sparsessm_kernels.prune.projections import lowest_mask, round_to_total, split_counts
from sparsessm_kernels.sparsity import StateSparsity, kept_count, unstructured_mask

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 260
D_MODEL = 16
D_INNER = 2 * D_MODEL
N_STATE = 8
N_LAYER = 2
DT_RANK = 4
KINDS = ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "out_proj")


# ---------------------------------------------------------------------- helpers
def _model(seed: int = 0, n_layer: int = N_LAYER, d_state: int = N_STATE) -> MambaLM:
    cfg = MambaLMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layer=n_layer, d_state=d_state, dt_rank=DT_RANK)
    model = MambaLM.from_config(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # O(1) activations, distinct A_log, delta of order 1: the states matter
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            if name.endswith("embeddings.weight"):
                p.normal_(0.0, 0.5, generator=g)
            if name.endswith("dt_proj.bias"):
                p.uniform_(-1.0, 1.0, generator=g)
            if name.endswith(("x_proj.weight", "out_proj.weight")):
                p.mul_(3.0)
    return model


def _ids(n: int = 4, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _prune(model: MambaLM, ids: torch.Tensor | None = None, **kw):
    kw.setdefault("batch_size", 2)
    return prune_model(model, _ids() if ids is None else ids, PruneConfig(**kw), progress=False)


def _weight(model: MambaLM, layer: int, kind: str) -> torch.Tensor:
    mixer = model.mixer(layer)
    return getattr(mixer, kind) if kind == "A_log" else getattr(mixer, kind).weight


# ---------------------------------------------------------------------- intermediates
@pytest.mark.parametrize("masked", [False, True])
def test_mixer_intermediates_reproduce_forward(masked: bool) -> None:
    model = _model()
    if masked:
        model.set_state_mask(
            0, torch.rand(D_INNER, N_STATE, generator=torch.Generator().manual_seed(0)) < 0.5
        )
    blk = model.backbone.layers[0]
    h = blk.norm(model.backbone.embeddings(_ids()))
    with torch.no_grad():
        inter = mixer_intermediates(blk.mixer, h)
        assert torch.equal(inter["out"], blk.mixer(h))
        assert inter["in_proj"].shape == (4, 16, D_MODEL)
        assert inter["conv1d"].shape == inter["u"].shape == inter["delta"].shape == (4, D_INNER, 16)
        assert inter["dt_proj"].shape == (4, 16, DT_RANK) and inter["B"].shape == (4, N_STATE, 16)
        assert set(mixer_intermediates(blk.mixer, h, "conv1d")) == {"in_proj", "conv1d", "z"}


# ---------------------------------------------------------------------- exact sparsity
@pytest.mark.parametrize("method", ["sparsessm", "sparsegpt", "wanda", "magnitude", "random"])
@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_exact_sparsity_per_module(method: str, sparsity: float) -> None:
    model = _model()
    result = _prune(model, method=method, targets="all", conv1d=True, sparsity=sparsity, alpha=0.0)
    assert [(r.layer, r.kind) for r in result.modules] == [(i, k) for i in range(N_LAYER) for k in KINDS]
    for rec in result.modules:
        expected = rec.params - kept_count(rec.params, sparsity)
        assert rec.pruned == expected, rec.name
        if rec.kind == "A_log":
            layout, mode = model.state_layout(rec.layer)
            assert mode == "zero_transition" and int((~layout.mask).sum()) == expected
        else:
            assert int((_weight(model, rec.layer, rec.kind) == 0).sum()) == expected, rec.name


@pytest.mark.parametrize("method", ["sparsessm", "sparsegpt", "wanda", "magnitude", "random"])
def test_nm_masks_valid(method: str) -> None:
    model = _model()
    result = _prune(model, method=method, targets="all", conv1d=True, pattern="2:4")
    assert all(r.sparsity == 0.5 for r in result.modules)
    for layer in range(N_LAYER):
        layout, _ = model.state_layout(layer)
        StateSparsity(layout.mask, "2:4")  # raises unless every group of 4 states keeps 2
        assert isinstance(layout, StateSparsity) and layout.pattern == "2:4"
        for kind in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"):
            w = _weight(model, layer, kind)
            w2 = w.reshape(w.shape[0], -1)
            zeros = (w2.reshape(w2.shape[0], -1, 4) == 0).sum(-1)
            assert bool((zeros == 2).all()), f"layer {layer} {kind}"


def test_vote_nm_and_a_log_score_valid() -> None:
    for kw in (
        dict(aggregation="vote", pattern="4:8"),
        dict(score="a_log", aggregation="vote", pattern="2:4"),
    ):
        model = _model()
        _prune(model, **kw)
        for layer in range(N_LAYER):
            StateSparsity(model.state_layout(layer)[0].mask, kw["pattern"])


# ---------------------------------------------------------------------- column pruning
@pytest.mark.parametrize(
    "kw", [dict(), dict(aggregation="vote"), dict(method="sparsegpt"), dict(method="magnitude")]
)
def test_column_pruning_equals_remove_mask(kw: dict) -> None:
    dense = _model()
    pruned = copy.deepcopy(dense)
    result = _prune(pruned, pattern="column", sparsity=0.5, **kw)
    assert result.d_state_after == [4, 4] and pruned.config.d_state == 4
    for layer in range(N_LAYER):
        mixer = pruned.mixer(layer)
        assert mixer.A_log.shape == (D_INNER, 4) and mixer.x_proj.weight.shape == (DT_RANK + 8, D_INNER)
        assert mixer.layout is None
        keep = result.column_masks[layer]
        assert keep.shape == (N_STATE,) and int(keep.sum()) == 4
        if kw.get("method") == "sparsegpt":  # OBS-updated A_log: compare against the updated values
            a_log = dense.mixer(layer).A_log
            with torch.no_grad():
                a_log[:, keep] = mixer.A_log
        dense.set_state_mask(layer, keep, pruned_states="remove")
    ids = _ids(2, 12, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids), dense(ids), atol=1e-5, rtol=1e-5)


def test_column_pruning_per_layer_state_sizes(tmp_path: Path) -> None:
    model = _model()
    result = _prune(model, pattern="column", sparsity=0.25, include=[r"layers\.0\."])
    assert result.d_state_after == [6, 8] and model.config.layer_d_states == [6, 8]
    model.save_pretrained(tmp_path)
    loaded = MambaLM.from_pretrained(tmp_path)
    ids = _ids(2, 10)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


# ---------------------------------------------------------------------- save / export
@pytest.mark.parametrize(
    "kw",
    [
        dict(targets="all", method="sparsessm"),
        dict(targets="ssm", pattern="2:4", aggregation="vote"),
        dict(targets="ssm", pattern="column", sparsity=0.5),
    ],
)
def test_saved_model_reloads_and_exports(tmp_path: Path, kw: dict) -> None:
    transformers = pytest.importorskip("transformers")
    model = _model()
    _prune(model, **kw)
    model.save_pretrained(tmp_path / "out")
    loaded = MambaLM.from_pretrained(tmp_path / "out")
    ids = _ids(2, 12, seed=3)
    with torch.no_grad():
        expected = model(ids)
        assert torch.equal(loaded(ids), expected)
    loaded.export_for_stock_kernels(tmp_path / "stock")
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path / "stock").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- sequential pipeline
def test_later_layers_see_pruned_activations() -> None:
    dense = _model()
    model = copy.deepcopy(dense)
    seen: list[torch.Tensor] = []
    handle = model.backbone.layers[1].norm.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].clone())
    )
    ids = _ids(4, 16)
    _prune(model, ids, targets="all", sparsity=0.5, alpha=0.0)  # alpha 0: no dense pre-pass
    handle.remove()
    first_pass = torch.cat(seen[:2])  # layer 1's first statistics pass, 2 batches of 2 windows
    with torch.no_grad():
        emb = model.backbone.embeddings(ids)
        pruned_out = model.backbone.layers[0](emb)
        dense_out = dense.backbone.layers[0](emb)
    torch.testing.assert_close(first_pass, pruned_out, atol=1e-6, rtol=1e-6)
    assert (first_pass - dense_out).abs().max() > 1e-3


def test_ssm_statistics_use_pruned_projections(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[torch.Tensor, ...]] = []
    real = ssm_module.state_saliency

    def spy(u, delta, A, B, *args, **kwargs):
        calls.append((u.clone(), delta.clone(), B.clone()))
        return real(u, delta, A, B, *args, **kwargs)

    monkeypatch.setattr(ssm_module, "state_saliency", spy)
    model = _model()
    ids = _ids(4, 16)
    _prune(model, ids, targets="all", method="sparsessm", conv1d=True, batch_size=4)
    assert len(calls) == N_LAYER
    blk = model.backbone.layers[0]
    with torch.no_grad():  # A_log does not affect u, delta, B: recompute them with the final weights
        inter = mixer_intermediates(blk.mixer, blk.norm(model.backbone.embeddings(ids)), "A_log")
    for got, key in zip(calls[0], ("u", "delta", "B")):
        torch.testing.assert_close(got, inter[key], atol=1e-6, rtol=1e-6)


def test_same_seed_same_masks() -> None:
    def run(seed: int, method: str):
        model = _model()
        tokens = torch.arange(400) % VOCAB
        ids = calibration_windows(tokens, 4, 16, seed=seed)
        _prune(model, ids, method=method, targets="all", seed=seed)
        return ids, model.state_dict(), model.state_layout(0)[0].mask

    for method in ("sparsessm", "random"):
        ids_a, sd_a, mask_a = run(0, method)
        ids_b, sd_b, mask_b = run(0, method)
        assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
        assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    ids_c, _, mask_c = run(1, "random")
    assert not torch.equal(ids_a, ids_c) and not torch.equal(mask_a, mask_c)


def test_existing_mask_and_bad_inputs_rejected() -> None:
    model = _model()
    model.set_state_mask(0, torch.ones(N_STATE, dtype=torch.bool))
    with pytest.raises(PruneConfigError, match="already has a state mask"):
        _prune(model)
    _prune(model, exclude=[r"layers\.0\."])  # the masked layer is left alone
    with pytest.raises(PruneConfigError, match="would remove every one"):
        _prune(_model(), pattern="column", sparsity=0.95)
    with pytest.raises(PruneConfigError, match="not a multiple of M=8"):
        _prune(_model(), targets="ffn", pattern="4:8", conv1d=True)
    with pytest.raises(PruneConfigError, match="prunes exactly"):
        _prune(_model(), pattern="2:4", sparsity=0.3)
    with pytest.raises(PruneConfigError, match="column"):
        _prune(_model(), pattern="column", targets="all")
    with pytest.raises(PruneConfigError, match="no module selected"):
        _prune(_model(), include=["nothing-matches"])


# ---------------------------------------------------------------------- allocation
def test_allocate_sparsity_exact_weighted_mean() -> None:
    mods = [("a", 1000, 5.0), ("b", 1000, 1.0), ("c", 1000, 3.0), ("d", 1000, 2.0)]
    out = allocate_sparsity(mods, 0.5, 0.04)
    assert out["a"][0] == pytest.approx(0.46) and out["b"][0] == pytest.approx(0.54)
    assert out["a"][0] < out["c"][0] < out["d"][0] < out["b"][0]
    assert sum(c for _, c in out.values()) == 2000
    uneven = [("a", 3000, 5.0), ("b", 1000, 1.0), ("c", 500, 3.0)]
    out = allocate_sparsity(uneven, 0.4, 0.1)
    assert all(0.3 - 1e-12 <= f <= 0.5 + 1e-12 for f, _ in out.values())
    total = sum(p for _, p, _ in uneven)
    assert sum(f * p for (_, p, _), (f, _) in zip(uneven, out.values())) / total == pytest.approx(
        0.4, abs=1e-9
    )
    assert sum(c for _, c in out.values()) == total - kept_count(total, 0.4)
    assert out["a"][0] < out["c"][0] < out["b"][0]
    assert allocate_sparsity([("x", 10, 1.0)], 0.5, 0.04) == {"x": (0.5, 5)}


def test_allocation_in_pipeline() -> None:
    model = _model(n_layer=3)
    result = _prune(model, targets="ffn", method="sparsessm", sparsity=0.5)  # alpha defaults to 0.04
    assert result.config.alpha == pytest.approx(0.04)
    for kind in ("in_proj", "out_proj"):
        recs = [r for r in result.modules if r.kind == kind]
        fracs = [r.target_sparsity for r in recs]
        assert all(0.46 - 1e-9 <= f <= 0.54 + 1e-9 for f in fracs) and len(set(fracs)) == 3
        total = sum(r.params for r in recs)
        assert sum(r.pruned for r in recs) == total - kept_count(total, 0.5)
        sens = [result.allocation[r.name]["sensitivity"] for r in recs]
        order = sorted(range(3), key=lambda i: -sens[i])
        assert [fracs[i] for i in order] == sorted(fracs)  # most sensitive -> lowest sparsity
    assert all(
        r.sparsity == pytest.approx(0.5, abs=1e-3) for r in result.modules if r.kind in ("x_proj", "dt_proj")
    )


def test_round_to_total_and_split_counts() -> None:
    assert round_to_total([1.5, 1.5, 1.0], 4) == [2, 1, 1]
    assert sum(split_counts(7, [3, 3, 3])) == 7 and split_counts(0, [0, 0]) == [0, 0]
    assert split_counts(8, [4, 4]) == [4, 4] and split_counts(5, [4, 4]) == [3, 2]
    with pytest.raises(ValueError, match="cannot distribute"):
        split_counts(9, [4, 4])


# ---------------------------------------------------------------------- SparseGPT
def test_sparsegpt_exact_and_better_than_baselines() -> None:
    g = torch.Generator().manual_seed(0)
    rows, cols = 64, 128
    scale = torch.rand(cols, generator=g) ** 4 * 5 + 0.05  # a few large-scale input features
    common = torch.randn(2000, 8, generator=g) @ torch.randn(8, cols, generator=g)
    X = (torch.randn(2000, cols, generator=g) + 0.5 * common) * scale
    X[:, 5] = 0.0  # an input that never fires
    W = torch.randn(rows, cols, generator=g)
    H = 2 * X.T @ X / X.shape[0]

    def err(Wp: torch.Tensor) -> float:
        return float(((X @ (W - Wp).T) ** 2).mean())

    n_prune = rows * cols // 2
    Wg, mask = sparsegpt_prune(W, H, n_prune=n_prune, blocksize=32)
    assert int(mask.sum()) == n_prune and int((Wg == 0).sum()) == n_prune and bool(mask[:, 5].all())
    wanda = lowest_mask(W.abs() * X.square().sum(0).sqrt(), n_prune, per_row=True)
    assert bool((wanda.sum(1) == cols // 2).all())
    err_mag = err(W.masked_fill(lowest_mask(W.abs(), n_prune), 0.0))
    err_wanda = err(W.masked_fill(wanda, 0.0))
    assert err(Wg) < 0.1 * err_mag and err_wanda < 0.1 * err_mag
    assert err(Wg) < 0.8 * err(W.masked_fill(mask, 0.0))  # the OBS update compensates
    Wn, mask = sparsegpt_prune(W, H, nm=(2, 4), blocksize=32)
    assert bool((mask.reshape(rows, cols // 4, 4).sum(-1) == 2).all())
    assert err(Wn) < 0.8 * err(W.masked_fill(mask, 0.0)) and err(Wn) < 0.5 * err_mag


# ---------------------------------------------------------------------- scores
def test_time_weights_and_vote() -> None:
    w = time_weights("power", 4)
    torch.testing.assert_close(w, torch.tensor([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))
    assert time_weights("uniform", 5).allclose(torch.full((5,), 0.2))
    assert time_weights("window", 8, window=0.25).tolist() == [0.5, 0.5, 0, 0, 0, 0, 0, 0]
    assert time_weights("discount", 3, gamma=0.5).allclose(torch.tensor([4, 2, 1]) / 7.0)
    steps = torch.zeros(5, 1, 4)
    steps[1:, 0] = torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4], [5, 2, 3, 4], [5, 2, 3, 4]])
    keep = vote_scores(steps, "unstructured", 0.5, None)
    # state 1 is flagged by all 4 steps, states 0 and 2 by 2 each with equal totals (12): the lower
    # index ranks lower and goes; state 3 is never flagged
    assert unstructured_mask(keep, 0.5).tolist() == [[False, False, True, True]]
    assert vote_scores(steps, "column", 0.25, None).argmin().item() == 1


def _synthetic_corpus(words: int = 3000) -> torch.Tensor:
    """Byte ids of seeded pseudo-English: subject-verb-object sentences over a small vocabulary."""
    subjects = ["the cat", "a dog", "my model", "the state", "this layer", "a mask", "the scan", "our kernel"]
    verbs = ["keeps", "prunes", "reads", "writes", "removes", "scores", "moves", "zeroes"]
    objects = ["the states", "a column", "two of four", "its input", "the cache", "every channel", "a token"]
    g = torch.Generator().manual_seed(0)
    parts = []
    for _ in range(words // 5):
        i, j, k = (int(torch.randint(0, len(x), (1,), generator=g)) for x in (subjects, verbs, objects))
        parts.append(f"{subjects[i]} {verbs[j]} {objects[k]}.")
    return torch.tensor(list(" ".join(parts).encode("utf-8")), dtype=torch.long)


def _train_tiny_byte_model(steps: int = 50) -> MambaLM:
    """A one-layer byte-level MambaLM trained for a few steps on a synthetic corpus (seconds)."""
    data = _synthetic_corpus()
    torch.manual_seed(0)
    model = MambaLM.from_config(MambaLMConfig(vocab_size=256, d_model=32, n_layer=1, d_state=16), seed=0)

    def forward(ids: torch.Tensor) -> torch.Tensor:  # differentiable reference of the model's math
        h = model.backbone.embeddings(ids)
        for blk in model.backbone.layers:
            m = blk.mixer
            x, z = m.in_proj(blk.norm(h)).transpose(1, 2).chunk(2, dim=1)
            L = x.shape[-1]
            x = F.silu(
                F.conv1d(x, m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=m.d_inner)[..., :L]
            )
            dt, B, C = torch.split(m.x_proj(x.transpose(1, 2)), [m.dt_rank, m.d_state, m.d_state], dim=-1)
            delta = F.softplus(m.dt_proj(dt)).transpose(1, 2)
            A = -torch.exp(m.A_log)
            state = x.new_zeros(x.shape[0], m.d_inner, m.d_state)
            ys = []
            for t in range(L):
                decay = torch.exp(delta[:, :, t, None] * A)
                state = decay * state + (delta[:, :, t] * x[:, :, t])[..., None] * B[:, None, t]
                ys.append((state * C[:, None, t]).sum(-1))
            y = torch.stack(ys, -1) + m.D[:, None] * x
            h = h + m.out_proj((y * F.silu(z)).transpose(1, 2))
        return model.lm_head(model.backbone.norm_f(h))

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - 33, (16,), generator=g)
        ids = data[starts[:, None] + torch.arange(32)]
        loss = F.cross_entropy(forward(ids)[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.data = data  # type: ignore[attr-defined]
    return model


def test_sparsessm_lowest_scores_change_output_least() -> None:
    """Measured, not assumed: pruning the lowest SparseSSM scores hurts the layer less than
    pruning random states or the highest scores (trained model, held-out windows)."""
    model = _train_tiny_byte_model()
    data = model.data  # type: ignore[attr-defined]
    calib = calibration_windows(data, 16, 64, seed=1)
    held = calibration_windows(data, 16, 64, seed=2)
    blk = model.backbone.layers[0]
    mixer = blk.mixer
    with torch.no_grad():
        normed_c = blk.norm(model.backbone.embeddings(calib))
        normed_h = blk.norm(model.backbone.embeddings(held))
        dense = mixer(normed_h)

        def change(keep: torch.Tensor) -> float:
            model.set_state_mask(0, keep)
            out = mixer(normed_h)
            model.set_state_mask(0, None)
            return float((out - dense).square().mean())

        for kw in (dict(), dict(time_weights="uniform"), dict(score="a_log")):
            stats = SSMStatistics(mixer, PruneConfig(**kw).resolve(), 64)
            inter = mixer_intermediates(mixer, normed_c, "A_log")
            stats.add_batch(inter["u"], inter["delta"], inter["B"])
            keep, _ = ssm_masks(stats)
            scores = stats.scores()
            assert torch.equal(keep, unstructured_mask(scores, 0.5))
            low = change(keep)
            high = change(unstructured_mask(-scores, 0.5))
            rand = [
                change(
                    unstructured_mask(
                        torch.rand(scores.shape, generator=torch.Generator().manual_seed(s)), 0.5
                    )
                )
                for s in range(3)
            ]
            assert low < 0.5 * min(rand), (kw, low, rand)
            assert max(rand) < high, (kw, rand, high)


# ---------------------------------------------------------------------- evaluation
def test_perplexity_windows_and_value() -> None:
    model = _model()
    tokens = torch.arange(100) % VOCAB
    windows = eval_windows(tokens, 16)
    assert windows.shape == (6, 16) and torch.equal(windows.reshape(-1), tokens[:96])
    res = evaluate_perplexity(model, tokens, 16, batch_size=4)
    assert res["tokens"] == 6 * 15 and res["windows"] == 6
    with torch.no_grad():
        logits = model(windows)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
    assert res["mean_nll"] == pytest.approx(float(nll), rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert evaluate_perplexity(model, tokens, 16, max_windows=2)["tokens"] == 30


def test_score_continuations_right_padding() -> None:
    model = _model()
    reqs = [([1, 2, 3], [4, 5]), ([7], [8]), ([9, 10, 11, 12, 13], [14, 15, 16])]
    batched = score_continuations(model, reqs, batch_size=3)
    for (ctx, cont), (ll, greedy) in zip(reqs, batched):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids), -1)[0]
        expected = sum(float(logp[len(ctx) - 1 + i, tok]) for i, tok in enumerate(cont))
        assert ll == pytest.approx(expected, abs=1e-4)
        assert isinstance(greedy, bool)
