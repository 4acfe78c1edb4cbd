"""Structured pruning of Mamba-2 heads and head channels (``--targets heads`` / ``headdim``).

A head ``h`` owns ``headdim`` channels ``c = h * headdim + p`` of ``d_inner``; a channel's scan is
independent of every other channel (the state ``(h, p, :)`` is its own), so removing channels is
exact surgery (:func:`remove_channels`): the ``z`` and ``x`` rows of ``in_proj``, the ``x``
channels of the convolution, ``D`` (per channel with ``D_has_hdim``), the gated-norm weights and
the ``out_proj`` columns go; a removed head also loses its ``dt`` row of ``in_proj``, ``dt_bias``,
``A_log`` and ``D``. The result equals the model whose removed channels output zero (their ``x``
zeroed), because the gated-norm weights of a group are rescaled by ``sqrt(old size / new size)``
(the norm's mean of squares runs over fewer channels; exact up to the norm's ``eps``).

Scores (higher = kept): ``flap`` -- FLAP's fluctuation (An et al., 2024) of ``out_proj``'s input
channel ``c``, ``Var_tokens(u_c) * ||W_out[:, c]||^2``, summed over a head's channels for heads;
``magnitude`` -- ``||W_out[:, c]||^2`` (summed likewise); ``random``. Every group loses the same
number of heads (the gated norm's groups stay equal) and every kept head the same channels count
(one ``headdim``), the same in every layer (one ``config.json``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from ..models import Mamba2LM
from ..models.mamba2 import Mamba2Mixer
from ..models.mamba2_config import expand_for
from ..ops import SSDStateLayout
from ..sparsity import kept_count

__all__ = [
    "FluctuationStatistics",
    "channel_scores",
    "keep_channels",
    "keep_heads",
    "remove_channels",
    "sync_config",
]


class FluctuationStatistics:
    """Per-channel mean and variance over tokens of ``out_proj``'s input ``(b, l, d_inner)``."""

    def __init__(self, d_inner: int, device: torch.device | str) -> None:
        self.n = 0
        self.sum = torch.zeros(d_inner, dtype=torch.float64, device=device)
        self.sq = torch.zeros(d_inner, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, u: torch.Tensor) -> None:
        X = u.reshape(-1, u.shape[-1]).double()
        self.n += X.shape[0]
        self.sum += X.sum(0)
        self.sq += X.square().sum(0)

    def variance(self) -> torch.Tensor:
        """``(d_inner,)`` sample variance (``n - 1`` denominator, as FLAP)."""
        n = max(self.n, 2)
        return ((self.sq - self.sum.square() / max(self.n, 1)) / (n - 1)).clamp_min(0).float()


def channel_scores(
    mixer: Mamba2Mixer, method: str, stats: FluctuationStatistics | None, seed: int
) -> torch.Tensor:
    """``(nheads, headdim)`` keep-scores of the mixer's channels (see the module doc)."""
    col = mixer.out_proj.weight.detach().float().square().sum(0)  # (d_inner,)
    if method == "flap":
        assert stats is not None
        score = stats.variance().to(col.device) * col
    elif method == "magnitude":
        score = col
    elif method == "random":
        score = torch.rand(col.shape, generator=torch.Generator().manual_seed(seed)).to(col.device)
    else:
        raise ValueError(f"method: expected flap, magnitude or random for heads / headdim, got {method!r}")
    return score.reshape(mixer.nheads, mixer.headdim)


def keep_heads(scores: torch.Tensor, ngroups: int, sparsity: float) -> torch.Tensor:
    """Bool ``(nheads,)``: every group keeps its ``round((1 - s) * nheads / ngroups)`` best heads
    (head score = sum of its channel scores ``(nheads, headdim)``)."""
    per = scores.shape[0] // ngroups
    k = kept_count(per, sparsity)
    head = scores.double().sum(1).reshape(ngroups, per)
    order = torch.sort(head, dim=1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros(ngroups, per, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, order, True)
    return keep.reshape(-1)


def keep_channels(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool ``(nheads, headdim)``: every head keeps its ``round((1 - s) * headdim)`` best channels."""
    k = kept_count(scores.shape[1], sparsity)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, order, True)
    return keep


@torch.no_grad()
def remove_channels(model: Mamba2LM, layer: int, keep: torch.Tensor) -> None:
    """Physically remove channels (and the heads left without any) from one layer of ``model``.

    Args:
        model: the model; ``model.config`` is updated once every layer agrees (:func:`sync_config`).
        layer: the layer.
        keep: bool ``(nheads, headdim)``, ``True`` = kept. Rows with no kept channel are removed
            heads; the other rows must keep the same count (the new ``headdim``), and every group
            the same number of heads.

    Raises:
        ValueError: naming ``keep`` and what was expected.
    """
    m = model.mixer(layer)
    H, P, G, N = m.nheads, m.headdim, m.ngroups, m.d_state
    if keep.dtype != torch.bool or tuple(keep.shape) != (H, P):
        raise ValueError(
            f"keep: expected a bool (nheads, headdim) = ({H}, {P}) mask, got {keep.dtype} {tuple(keep.shape)}"
        )
    keep = keep.cpu()
    heads = keep.any(1)
    counts = keep.sum(1)[heads].unique()
    if heads.sum() == 0 or counts.numel() != 1:
        raise ValueError(
            f"keep: every kept head must keep the same number of channels, got {counts.tolist()}"
        )
    per_group = heads.reshape(G, H // G).sum(1).unique()
    if per_group.numel() != 1 or int(per_group) == 0:
        raise ValueError(
            "keep: every group must keep the same number (>= 1) of heads, got "
            f"{heads.reshape(G, -1).sum(1).tolist()}"
        )
    dev = m.A_log.device
    d_inner = m.d_inner
    kh = torch.nonzero(heads).flatten().to(dev)
    ch = torch.nonzero(keep.reshape(-1)).flatten().to(dev)
    new_h, new_p = int(kh.numel()), int(counts)
    new_inner = new_h * new_p
    bc = torch.arange(2 * G * N, device=dev)
    rows = torch.cat([ch, d_inner + ch, 2 * d_inner + bc, 2 * d_inner + 2 * G * N + kh])
    conv = torch.cat([ch, d_inner + bc])

    def param(t: torch.Tensor, index: torch.Tensor, dim: int = 0) -> nn.Parameter:
        return nn.Parameter(t.detach().index_select(dim, index).clone(), requires_grad=t.requires_grad)

    m.in_proj.weight = param(m.in_proj.weight, rows)
    if m.in_proj.bias is not None:
        m.in_proj.bias = param(m.in_proj.bias, rows)
    m.in_proj.out_features = int(rows.numel())
    m.conv1d.weight = param(m.conv1d.weight, conv)
    if m.conv1d.bias is not None:
        m.conv1d.bias = param(m.conv1d.bias, conv)
    m.conv1d.in_channels = m.conv1d.out_channels = m.conv1d.groups = int(conv.numel())
    m.dt_bias, m.A_log = param(m.dt_bias, kh), param(m.A_log, kh)
    m.D = param(m.D, ch if m.D_has_hdim else kh)
    m.out_proj.weight = param(m.out_proj.weight, ch, dim=1)
    m.out_proj.in_features = new_inner
    if m.rmsnorm:
        old_group = m.norm.group_size
        m.norm.weight = param(m.norm.weight, ch)
        m.norm.group_size = new_inner // G
        m.norm.weight.mul_(math.sqrt(old_group / m.norm.group_size))
    htm = m.head_transition_mask
    m.head_transition_mask = None if htm is None else htm[kh.to(htm.device)].clone()
    m._head_mask_copies = {}
    layout = m.layout
    m.d_inner, m.nheads, m.headdim = new_inner, new_h, new_p
    m.conv_dim = new_inner + 2 * G * N
    if layout is not None:
        mask = layout.mask
        mask = mask if mask.shape[0] == G else mask[kh.to(mask.device)]
        m.layout = SSDStateLayout(mask, nheads=new_h, ngroups=G)
    sync_config(model)


def sync_config(model: Mamba2LM) -> None:
    """Set ``model.config``'s ``expand`` / ``headdim`` from the layers once they all agree."""
    sizes = {(blk.mixer.d_inner, blk.mixer.headdim) for blk in model.backbone.layers}
    if len(sizes) == 1:
        d_inner, headdim = sizes.pop()
        c = model.config
        if (d_inner, headdim) != (c.d_inner, c.headdim):
            model.config = replace(c, expand=expand_for(d_inner, c.d_model), headdim=headdim)
