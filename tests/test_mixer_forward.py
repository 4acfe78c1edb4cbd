"""The one Mamba-1 mixer forward (``ops.mixer``): every caller runs it, z / B / C reach the ops as views.

* ``MambaLM`` (forward and decode step), the pruning capture, the transformers and mamba_ssm
  integrations and ``compat.mamba_inner_fn`` all reach the scan / step ops through
  ``ops.mixer`` (a spy on the ops as ``ops.mixer`` calls them sees every call), and the ``z``,
  ``B`` and ``C`` they pass are views of the ``in_proj`` / ``x_proj`` outputs, not copies;
* every usable backend gives the same result for those producer layouts as for contiguous copies;
* the float32 constants (``A``, ``D``, ``dt`` bias) are built once and rebuilt when a parameter
  changes, and never cached while autograd records them.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparsessm_kernels.ops.mixer as mixer_module
from sparsessm_kernels import compat
from sparsessm_kernels.models import MambaLM, MambaLMConfig
from sparsessm_kernels.ops import MixerConstants, available_backends, selective_scan, selective_state_update
from sparsessm_kernels.prune import mixer_intermediates
from sparsessm_kernels.sparsity import column_mask

VOCAB, D_MODEL, N_LAYER, N, DT_RANK = 40, 16, 2, 4, 2
D_INNER = 2 * D_MODEL
ROW = DT_RANK + 2 * N  # x_dbl row length: the time stride of B / C views


class Spy:
    """Wraps the ops that ``ops.mixer`` calls; records the tensor arguments of every call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scans: list[dict[str, torch.Tensor]] = []
        self.steps: list[dict[str, torch.Tensor]] = []

        def scan(u, delta, A, B, C, D=None, z=None, *args, **kwargs):
            self.scans.append({"u": u, "B": B, "C": C, "z": z})
            return selective_scan(u, delta, A, B, C, D, z, *args, **kwargs)

        def step(state, x, dt, A, B, C, D=None, z=None, *args, **kwargs):
            self.steps.append({"x": x, "B": B, "C": C, "z": z})
            return selective_state_update(state, x, dt, A, B, C, D, z, *args, **kwargs)

        monkeypatch.setattr(mixer_module, "selective_scan", scan)
        monkeypatch.setattr(mixer_module, "selective_state_update", step)

    def check_views(self, d_inner: int = D_INNER, row: int = ROW) -> None:
        """Every call got z as a view of the in_proj output and B / C as views of x_dbl."""
        assert self.scans or self.steps, "no call went through ops.mixer"
        for call in self.scans:  # (b, d, l) / (b, n, l) views: time strides 2d and row
            assert call["z"].stride()[1:] == (1, 2 * d_inner), call["z"].stride()
            assert call["B"].stride()[1:] == (1, row) and call["C"].stride()[1:] == (1, row)
            assert _same_storage(call["B"], call["C"])
        for call in self.steps:  # (b, d) / (b, n) rows of the projection outputs
            assert call["z"].stride() == (2 * d_inner, 1), call["z"].stride()
            assert call["B"].stride() == (row, 1) and call["C"].stride() == (row, 1)
            assert _same_storage(call["B"], call["C"])


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _model(masked: bool = True) -> MambaLM:
    torch.manual_seed(0)
    config = MambaLMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layer=N_LAYER, d_state=N, dt_rank=DT_RANK)
    model = MambaLM.from_config(config).eval()
    if masked:
        model.set_state_mask(0, column_mask(torch.rand(N, generator=torch.Generator().manual_seed(1)), 0.5))
    return model


def _ids(b: int = 2, l: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, l), generator=torch.Generator().manual_seed(2))


# ------------------------------------------------------------------------------ the five callers
def test_mamba_lm_forward_and_step(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    with torch.no_grad():
        want = model(_ids())
        spy = Spy(monkeypatch)
        assert torch.equal(model(_ids()), want)
        assert len(spy.scans) == N_LAYER and not spy.steps
        cache = model.allocate_cache(2)
        model(_ids(), cache=cache)
        model(_ids(2, 1), cache=cache)
    assert len(spy.scans) == 2 * N_LAYER and len(spy.steps) == N_LAYER
    spy.check_views()


def test_pruning_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    spy = Spy(monkeypatch)
    blk = model.backbone.layers[0]
    with torch.no_grad():
        hidden = blk.norm(model.backbone.embeddings(_ids()))
        inter = mixer_intermediates(blk.mixer, hidden)
        assert torch.equal(inter["out"], blk.mixer(hidden))
    assert len(spy.scans) == 2
    spy.check_views()
    assert _same_storage(inter["B"], inter["C"]) and _same_storage(inter["z"], inter["conv1d"])
    assert set(mixer_intermediates(blk.mixer, hidden, "x_proj")) == {"in_proj", "conv1d", "z", "u", "x_proj"}
    assert len(spy.scans) == 2  # stopping before the scan runs no scan


def test_compat_mamba_inner_fn(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(masked=False)
    m = model.mixer(0)
    hidden = torch.randn(2, 7, D_MODEL, generator=torch.Generator().manual_seed(3))
    spy = Spy(monkeypatch)
    with torch.no_grad():
        xz = m.in_proj(hidden).transpose(1, 2)
        out = compat.mamba_inner_fn(
            xz, m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.out_proj.weight,
            None, -torch.exp(m.A_log), D=m.D, delta_bias=m.dt_proj.bias,
        )  # fmt: skip
        torch.testing.assert_close(out, m(hidden), rtol=1e-5, atol=1e-5)
    spy.check_views()
    assert _same_storage(spy.scans[0]["z"], xz)


@pytest.fixture
def fake_mamba_ssm() -> Iterator[object]:
    """The structural stand-in of mamba_ssm that tests/test_integration_mamba_ssm.py uses."""
    fake = Path(__file__).resolve().parent / "fake_mamba_ssm"
    drop = [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]
    saved = {k: sys.modules.pop(k) for k in drop}
    sys.path.insert(0, str(fake))
    try:
        yield importlib.import_module("mamba_ssm")
    finally:
        sys.path.remove(str(fake))
        for k in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
            sys.modules.pop(k)
        sys.modules.update(saved)


def test_mamba_ssm_integration(monkeypatch: pytest.MonkeyPatch, fake_mamba_ssm: object) -> None:
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    from mamba_ssm.utils.generation import InferenceParams

    from sparsessm_kernels.integrations import mamba_ssm as ssk_mamba

    torch.manual_seed(0)
    config = MambaConfig(
        d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, ssm_cfg={"d_state": N}, fused_add_norm=False
    )
    model = MambaLMHeadModel(config).eval()
    ssk_mamba.apply(model, {}, sparsify_projections=False)
    spy = Spy(monkeypatch)
    ids = _ids()
    row = model.backbone.layers[0].mixer.dt_rank + 2 * N
    with torch.no_grad():
        params = InferenceParams(max_seqlen=10, max_batch_size=2)
        model(ids, inference_params=params)
        params.seqlen_offset += ids.shape[1]
        model(ids[:, :1], inference_params=params)
    assert len(spy.scans) == N_LAYER and len(spy.steps) == N_LAYER
    spy.check_views(row=row)


def test_transformers_integration(monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")
    from sparsessm_kernels.integrations import transformers as ssk_hf

    torch.manual_seed(0)
    config = transformers.MambaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=N_LAYER, state_size=N, expand=2,
        conv_kernel=4, eos_token_id=None, pad_token_id=None, bos_token_id=None,
    )  # fmt: skip
    model = transformers.MambaForCausalLM(config).eval()
    ssk_hf.apply(model, {}, sparsify_projections=False)
    spy = Spy(monkeypatch)
    ids = _ids()
    row = model.backbone.layers[0].mixer.time_step_rank + 2 * N
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    assert len(spy.scans) == N_LAYER and len(spy.steps) == N_LAYER  # prefill, then one decode step
    spy.check_views(row=row)


# ------------------------------------------------------------------------------ backends
def _usable_backends() -> list[str]:
    return [name for name, (usable, _) in available_backends().items() if usable and name != "cuda"]


@pytest.mark.parametrize("backend", _usable_backends())
def test_backends_read_producer_layouts(backend: str) -> None:
    """The scan and the step on views of projection outputs equal the same on contiguous copies."""
    g = torch.Generator().manual_seed(4)
    b, l = 2, 9
    xz = torch.randn(b, l, 2 * D_INNER, generator=g).transpose(1, 2)  # in_proj output, (b, 2d, l)
    u, z = xz.chunk(2, dim=1)
    u = u.contiguous()  # the conv output
    x_dbl = torch.randn(b, l, ROW, generator=g)
    _, B, C = torch.split(x_dbl, [DT_RANK, N, N], dim=-1)
    B, C = B.transpose(1, 2), C.transpose(1, 2)  # (b, n, l) views
    delta = torch.randn(b, D_INNER, l, generator=g)
    A = -torch.rand(D_INNER, N, generator=g) - 0.5
    D, bias = torch.randn(D_INNER, generator=g), torch.randn(D_INNER, generator=g)
    mask = column_mask(torch.rand(N, generator=g), 0.5)
    for state_mask in (None, mask):
        kw = {"state_mask": state_mask, "backend": backend}
        got = selective_scan(u, delta, A, B, C, D, z, bias, True, True, **kw)
        want = selective_scan(u, delta, A, B.contiguous(), C.contiguous(), D, z, bias, True, True, **kw)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # B / C: bit for bit
        # z: the same math; an elementwise SiLU over strided memory may round the last bit differently
        want = selective_scan(u, delta, A, B, C, D, z.contiguous(), bias, True, True, **kw)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

        state = torch.randn(b, D_INNER, N, generator=g)
        state_c = state.clone()
        x_t, z_t, dt_t = u[..., 0], z[..., 0], delta[..., 0]
        B_t, C_t = B[..., 0], C[..., 0]  # (b, n) rows of x_dbl
        got = selective_state_update(state, x_t, dt_t, A, B_t, C_t, D, z_t, bias, True, **kw)
        want = selective_state_update(
            state_c, x_t, dt_t, A, B_t.contiguous(), C_t.contiguous(), D, z_t.contiguous(), bias, True, **kw
        )
        assert torch.equal(got, want) and torch.equal(state, state_c)


# ------------------------------------------------------------------------------ constants
def test_constants_are_built_once_and_follow_the_parameters() -> None:
    m = _model(masked=False).mixer(0)
    consts = MixerConstants()
    with torch.no_grad():
        A, D, bias = consts.get(m.A_log, m.D, m.dt_proj.bias)
        assert torch.equal(A, -torch.exp(m.A_log)) and A.dtype == torch.float32
        again = consts.get(m.A_log, m.D, m.dt_proj.bias)
        assert again[0] is A and again[1] is D and again[2] is bias  # cached
        m.A_log.add_(1.0)  # an in-place write bumps the version: rebuilt
        A2 = consts.get(m.A_log, m.D, m.dt_proj.bias)[0]
        assert A2 is not A and torch.equal(A2, -torch.exp(m.A_log))
        m.D.copy_(torch.zeros_like(m.D))
        assert torch.equal(consts.get(m.A_log, m.D, m.dt_proj.bias)[1], torch.zeros(D_INNER))
        m.to(torch.float64)  # new storage (and dtype): rebuilt
        A3, D3, _ = consts.get(m.A_log, m.D, m.dt_proj.bias)
        assert A3.dtype == D3.dtype == torch.float32 and torch.equal(A3, -torch.exp(m.A_log.float()))
        m.A_log.data.fill_(0.0)  # a write through .data skips the version counter: clear() after it
        consts.clear()
        assert torch.equal(consts.get(m.A_log, m.D, m.dt_proj.bias)[0], -torch.ones(D_INNER, N))
    assert copy.deepcopy(consts)._cached is None


def test_constants_are_not_cached_while_autograd_records() -> None:
    m = _model(masked=False).mixer(0)
    consts = MixerConstants()
    A, D, bias = consts.get(m.A_log, m.D, m.dt_proj.bias)
    assert A.requires_grad and consts._cached is None
    (A.sum() + D.sum() + bias.sum()).backward()
    assert m.A_log.grad is not None and m.D.grad is not None and m.dt_proj.bias.grad is not None
    with torch.no_grad():
        A, _, _ = consts.get(m.A_log, m.D, m.dt_proj.bias)
    assert not A.requires_grad and consts._cached is not None


def test_model_uses_fresh_constants_after_a_weight_change() -> None:
    model = _model()
    with torch.no_grad():
        before = model(_ids())
        for blk in model.backbone.layers:
            blk.mixer.A_log.mul_(0.5)
            blk.mixer.D.add_(1.0)
            blk.mixer.dt_proj.bias.sub_(0.5)
        after = model(_ids())
        fresh = copy.deepcopy(model)(_ids())
    assert not torch.equal(before, after) and torch.equal(after, fresh)


def test_mixer_step_matches_the_forward_token_by_token() -> None:
    model = _model()
    ids = _ids()
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        model(ids[:, :3], cache=cache)
        steps = model(ids[:, 3:], cache=cache)
    torch.testing.assert_close(steps, full[:, 3:], rtol=1e-5, atol=1e-5)


def test_mixer_compiles_without_graph_breaks() -> None:
    """torch.compile(fullgraph=True) traces the shared forward and step (constants computed in the graph)."""
    model = _model()
    m = model.mixer(0)
    hidden = torch.randn(2, 5, D_MODEL, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = m(hidden)
        got = torch.compile(lambda h: m(h), fullgraph=True, backend="aot_eager")(hidden)
        torch.testing.assert_close(got, want)
        caches = [model.allocate_cache(2).layers[0] for _ in range(2)]
        want = m.step(hidden[:, 0], caches[0])
        got = torch.compile(lambda h: m.step(h, caches[1]), fullgraph=True, backend="aot_eager")(hidden[:, 0])
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(caches[1].ssm_state, caches[0].ssm_state)


@pytest.mark.parametrize("given", ["B (b, n, l)", "B (b, g, n, l)", "C (d, n)"])
def test_compat_mamba_inner_fn_with_a_given_B_or_C(given: str) -> None:
    """A given B / C (input-dependent, grouped or time-invariant) reaches the scan as given; the other one
    is the x_proj rows, as a view."""
    from sparsessm_kernels.ops import selective_scan_ref

    g = torch.Generator().manual_seed(6)
    b, l, d, n, r, width = 2, 7, 8, 4, 2, 4
    xz = torch.randn(b, 2 * d, l, generator=g)
    conv_w, conv_b = torch.randn(d, 1, width, generator=g), torch.randn(d, generator=g)
    dt_w, out_w = torch.randn(d, r, generator=g) / 2, torch.randn(5, d, generator=g)
    A, D, bias = (
        -torch.rand(d, n, generator=g) - 0.5,
        torch.randn(d, generator=g),
        torch.randn(d, generator=g),
    )
    fixed = {
        "B (b, n, l)": torch.randn(b, n, l, generator=g),
        "B (b, g, n, l)": torch.randn(b, 2, n, l, generator=g),
        "C (d, n)": torch.randn(d, n, generator=g),
    }[given]
    x_w = torch.randn(r + n, d, generator=g) / 2  # dt_rank rows + the one input-dependent B / C
    B, C = (fixed, None) if given.startswith("B") else (None, fixed)
    out = compat.mamba_inner_fn(xz, conv_w, conv_b, x_w, dt_w, out_w, None, A, B, C, D, bias)

    x, z = xz.chunk(2, dim=1)
    u = F.silu(F.conv1d(x, conv_w, conv_b, padding=width - 1, groups=d)[..., :l])
    x_dbl = torch.einsum("rd,bdl->brl", x_w, u)
    rows = x_dbl[:, r:]
    want_B, want_C = (fixed, rows) if given.startswith("B") else (rows, fixed)
    y = selective_scan_ref(u, dt_w @ x_dbl[:, :r], A, want_B, want_C, D, z, bias, True)
    torch.testing.assert_close(out, torch.einsum("ed,bdl->ble", out_w, y), rtol=1e-4, atol=1e-4)
