"""sparsessm_kernels.integrations.mamba_ssm against a structural stand-in of mamba_ssm (CPU).

mamba_ssm itself needs CUDA to build and import, so these tests put ``tests/fake_mamba_ssm`` (same
module paths, classes, signatures and parameter names as mamba_ssm 2.x's Mamba-1 model, plain
PyTorch math) on ``sys.path``. The ``gpu`` test at the end runs the real mamba_ssm when it imports.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsessm_kernels.integrations import mamba_ssm as ssk_mamba
from sparsessm_kernels.models import MambaLM, a_log_name
from sparsessm_kernels.nn import SemiStructuredLinear, prune_2to4_
from sparsessm_kernels.sparsity import column_mask, nm_mask, unstructured_mask

FAKE = Path(__file__).resolve().parent / "fake_mamba_ssm"
VOCAB, D_MODEL, N_LAYER, N = 90, 32, 3, 16
D_INNER = 2 * D_MODEL
CONFIG = {
    "d_model": D_MODEL,
    "n_layer": N_LAYER,
    "vocab_size": VOCAB,
    "ssm_cfg": {"d_state": N},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": False,
    "pad_vocab_size_multiple": 8,
    "tie_embeddings": True,
}


def _drop_mamba_ssm_modules() -> dict[str, object]:
    return {
        k: sys.modules.pop(k) for k in list(sys.modules) if k == "mamba_ssm" or k.startswith("mamba_ssm.")
    }


@pytest.fixture(scope="module")
def fake() -> Iterator[object]:
    saved = _drop_mamba_ssm_modules()
    sys.path.insert(0, str(FAKE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield importlib.import_module("mamba_ssm")
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(FAKE))
        _drop_mamba_ssm_modules()
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def ckpt(fake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(**CONFIG))
    for blk in model.backbone.layers:
        for name in ("in_proj", "x_proj", "out_proj"):
            prune_2to4_(getattr(blk.mixer, name))
    path = tmp_path_factory.mktemp("mamba_ssm_ckpt")
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps({k: v for k, v in CONFIG.items() if k != "fused_add_norm"}))
    return path


def _load(ckpt: Path) -> nn.Module:
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    model = MambaLMHeadModel(MambaConfig(**CONFIG))
    model.load_state_dict(torch.load(ckpt / "pytorch_model.bin"))
    return model.eval()


def _masks() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        a_log_name(0): column_mask(torch.rand(N, generator=g), 0.5),
        a_log_name(1): nm_mask(torch.rand(D_INNER, N, generator=g), 2, 4),
        a_log_name(2): unstructured_mask(torch.rand(D_INNER, N, generator=g), 0.5),
    }


def _greedy(model: nn.Module, ids: torch.Tensor, n: int, **cache_kw) -> tuple[torch.Tensor, object]:
    """mamba_ssm's decode loop: prefill with InferenceParams, then one token per step."""
    from mamba_ssm.utils.generation import InferenceParams

    params = InferenceParams(max_seqlen=ids.shape[1] + n, max_batch_size=ids.shape[0])
    if cache_kw.get("preallocate"):
        params.key_value_memory_dict = model.allocate_inference_cache(ids.shape[0], params.max_seqlen)
    logits = model(ids, inference_params=params, num_last_tokens=1).logits[:, -1]
    out = [ids]
    for _ in range(n):
        token = logits.argmax(-1, keepdim=True)
        out.append(token)
        params.seqlen_offset += out[-2].shape[1]
        logits = model(token, inference_params=params, num_last_tokens=1).logits[:, -1]
    return torch.cat(out, dim=1), params


@pytest.mark.parametrize("preallocate", [False, True])
def test_apply_matches_masked_reference(ckpt: Path, preallocate: bool) -> None:
    model = _load(ckpt)
    ref = MambaLM.from_pretrained(ckpt).eval()
    masks = _masks()
    for i, mask in enumerate(masks.values()):
        ref.set_state_mask(i, mask)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stock = model(ids).logits
        torch.testing.assert_close(stock, MambaLM.from_pretrained(ckpt)(ids), rtol=1e-4, atol=1e-4)
        report = ssk_mamba.apply(model, masks)
        assert report.framework == "mamba_ssm" and report.sparse_layers == [0, 1, 2]
        assert isinstance(model.backbone.layers[0].mixer.out_proj, SemiStructuredLinear)
        torch.testing.assert_close(model(ids).logits, ref(ids), rtol=1e-5, atol=1e-5)
        tokens, params = _greedy(model, ids, 8, preallocate=preallocate)
        assert torch.equal(tokens, ref.generate(ids, max_new_tokens=8))
        shapes = [tuple(params.key_value_memory_dict[i][1].shape) for i in range(N_LAYER)]
        assert shapes == [(2, D_INNER, 8), (2, D_INNER, 8), (2, D_INNER, N)]  # compact for uniform masks
        assert ssk_mamba.revert(model) == [0, 1, 2]
        assert type(model.backbone.layers[0].mixer.out_proj) is nn.Linear
        assert not any(k in model.backbone.layers[0].mixer.__dict__ for k in ("forward", "step"))
        assert torch.equal(model(ids).logits, stock)


def test_ssm_state_dtype_and_multi_token_step(ckpt: Path) -> None:
    from mamba_ssm.utils.generation import InferenceParams

    model = _load(ckpt)
    ref = MambaLM.from_pretrained(ckpt).eval()
    masks = _masks()
    for i, mask in enumerate(masks.values()):
        ref.set_state_mask(i, mask)
    ssk_mamba.apply(model, masks, ssm_state_dtype=torch.float64)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        params = InferenceParams(max_seqlen=16, max_batch_size=2)
        model(ids[:, :6], inference_params=params)
        params.seqlen_offset = 6
        rest = model(ids[:, 6:], inference_params=params).logits  # 3 tokens through step()
        assert params.key_value_memory_dict[0][1].dtype == torch.float64
        torch.testing.assert_close(rest, ref(ids)[:, 6:], rtol=1e-5, atol=1e-5)


def test_errors(ckpt: Path, tmp_path: Path) -> None:
    model = _load(ckpt)
    with pytest.raises(ValueError, match="do not name the A_log"):
        ssk_mamba.apply(model, {"layers.9.mixer.A_log": torch.ones(N, dtype=torch.bool)})
    with pytest.raises(FileNotFoundError):
        ssk_mamba.apply(model, tmp_path)
    with pytest.raises(ssk_mamba.UnsupportedModelError, match="MixerModel"):
        ssk_mamba.apply(nn.Linear(2, 2))

    class Mamba2(nn.Module):
        pass

    for blk in model.backbone.layers:
        blk.mixer = Mamba2()
    with pytest.raises(ssk_mamba.UnsupportedModelError, match="no Mamba-1 mixer"):
        ssk_mamba.apply(model)


def test_masks_from_file_and_dense_default(ckpt: Path, tmp_path: Path) -> None:
    from sparsessm_kernels.sparsity import save_masks

    masks = _masks()
    save_masks(tmp_path / "sparsity.safetensors", masks, {"pruned_states": "remove"})
    model = _load(ckpt)
    report = ssk_mamba.apply(model, tmp_path)
    assert all("remove" in report.layers[i] for i in range(N_LAYER))
    model = _load(ckpt)
    report = ssk_mamba.apply(model)  # mamba_ssm records no source directory: dense
    assert report.sparse_layers == [] and "dense" in report.masks_source


def test_missing_mamba_ssm_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # import mamba_ssm -> ImportError
    with pytest.raises(ImportError, match=r"needs mamba_ssm.*MambaLM\.from_pretrained"):
        ssk_mamba.apply(nn.Module())


@pytest.mark.gpu
def test_gpu_real_mamba_ssm(tmp_path: Path) -> None:
    saved = _drop_mamba_ssm_modules()
    saved_path = list(sys.path)
    sys.path[:] = [p for p in sys.path if p != str(FAKE)]
    try:
        try:
            from mamba_ssm.models.config_mamba import MambaConfig
            from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
            from mamba_ssm.utils.generation import InferenceParams  # noqa: F401
        except Exception as exc:
            pytest.skip(f"mamba_ssm does not import: {exc}")
        torch.manual_seed(0)
        cfg = dict(CONFIG, fused_add_norm=False)
        model = MambaLMHeadModel(MambaConfig(**cfg), device="cuda", dtype=torch.float32).eval()
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
        (tmp_path / "config.json").write_text(
            json.dumps({k: v for k, v in cfg.items() if k != "fused_add_norm"})
        )
        ref = MambaLM.from_pretrained(tmp_path).cuda().eval()
        masks = _masks()
        for i, mask in enumerate(masks.values()):
            ref.set_state_mask(i, mask)
        ssk_mamba.apply(model, masks, sparsify_projections=False)
        ids = torch.randint(0, VOCAB, (2, 10), device="cuda")
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, ref(ids), rtol=1e-3, atol=1e-3)
            out = model.generate(ids, max_length=18, cg=False)
            seq = out if isinstance(out, torch.Tensor) else out.sequences
            assert torch.equal(seq, ref.generate(ids, max_new_tokens=8))
    finally:
        sys.path[:] = saved_path
        _drop_mamba_ssm_modules()
        sys.modules.update(saved)
