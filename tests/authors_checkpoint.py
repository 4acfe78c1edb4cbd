"""Checkpoints as the SparseSSM authors' research code writes them, and their evaluation forward.

The research code (CFinTech/SparseSSM, ``model/mamba.py``) prunes a state by multiplying its
``A_log`` entry by 0 and saves ``config.json`` (``d_model``, ``n_layer``, ``vocab_size``,
``ssm_cfg.d_state``) + ``pytorch_model.bin`` (HF key names, ``lm_head.weight`` included). Its
evaluation (``args.ppl = True``) multiplies ``deltaA = exp(delta * A)`` by ``(A != -1)``.
:func:`authors_logits` re-implements that forward independently of the package (sequential scan,
raw tensors), as the reference for ``sparsessm convert --zero-a-log-pruned``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
TINY_DIR = ROOT / "sparsessm_kernels" / "demo" / "tiny_mamba"
TINY = {"d_model": 128, "n_layer": 4, "vocab_size": 256, "d_state": 16, "d_inner": 256, "dt_rank": 8}


def tiny_state() -> dict[str, torch.Tensor]:
    """The embedded tiny model's tensors (HF keys, float32)."""
    from safetensors.torch import load_file

    return load_file(str(TINY_DIR / "model.safetensors"))


def prune_a_log_like_authors(
    state: dict[str, torch.Tensor],
    sparsity: float = 0.5,
    seed: int = 0,
    layers: tuple[int, ...] = (0, 1, 2, 3),
) -> dict[str, torch.Tensor]:
    """Zero ``A_log`` entries as the authors' unstructured pruning does (random entries here)."""
    out = {k: v.clone() for k, v in state.items()}
    g = torch.Generator().manual_seed(seed)
    for i in layers:
        a_log = out[f"backbone.layers.{i}.mixer.A_log"]
        k = round(sparsity * a_log.numel())
        idx = torch.randperm(a_log.numel(), generator=g)[:k]
        a_log.view(-1)[idx] = 0.0
    return out


def write_authors_checkpoint(directory: Path, state: dict[str, torch.Tensor]) -> Path:
    """``config.json`` + ``pytorch_model.bin`` in the authors' ``Mamba.save_pretrained`` layout."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "d_model": TINY["d_model"],
        "n_layer": TINY["n_layer"],
        "vocab_size": TINY["vocab_size"],
        "ssm_cfg": {"d_state": TINY["d_state"]},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tensors = dict(state)
    tensors["lm_head.weight"] = tensors["backbone.embeddings.weight"]
    torch.save(tensors, directory / "pytorch_model.bin")
    return directory


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@torch.no_grad()
def authors_logits(
    state: dict[str, torch.Tensor], ids: torch.Tensor, zero_pruned: bool = True
) -> torch.Tensor:
    """The authors' float32 forward; ``zero_pruned`` = their evaluation (transition 0 where A == -1).

    Args:
        state: HF-keyed tensors of the tiny architecture.
        ids: ``(b, l)`` token ids.

    Returns:
        ``(b, l, vocab)`` float32 logits.
    """
    p = {k: v.float() for k, v in state.items()}
    d, n, r = TINY["d_inner"], TINY["d_state"], TINY["dt_rank"]
    x = p["backbone.embeddings.weight"][ids]  # (b, l, d_model)
    b, length, _ = x.shape
    for i in range(TINY["n_layer"]):
        m = f"backbone.layers.{i}.mixer."
        h = _rms(x, p[f"backbone.layers.{i}.norm.weight"])
        u, res = (h @ p[m + "in_proj.weight"].T).split([d, d], dim=-1)
        u = F.conv1d(u.transpose(1, 2), p[m + "conv1d.weight"], p[m + "conv1d.bias"], padding=3, groups=d)
        u = F.silu(u[:, :, :length].transpose(1, 2))  # (b, l, d)
        delta, B, C = (u @ p[m + "x_proj.weight"].T).split([r, n, n], dim=-1)
        delta = F.softplus(delta @ p[m + "dt_proj.weight"].T + p[m + "dt_proj.bias"])  # (b, l, d)
        A = -torch.exp(p[m + "A_log"])  # (d, n)
        deltaA = torch.exp(delta[..., None] * A)  # (b, l, d, n)
        if zero_pruned:
            deltaA = deltaA * (A != -1)
        deltaB_u = delta[..., None] * B[:, :, None, :] * u[..., None]
        state_t = torch.zeros(b, d, n)
        ys = []
        for t in range(length):
            state_t = deltaA[:, t] * state_t + deltaB_u[:, t]
            ys.append((state_t * C[:, t, None, :]).sum(-1))
        y = torch.stack(ys, dim=1) + u * p[m + "D"]
        x = x + (y * F.silu(res)) @ p[m + "out_proj.weight"].T
    return _rms(x, p["backbone.norm_f.weight"]) @ p["backbone.embeddings.weight"].T
