"""The depthwise causal convolution of the Mamba mixers, over a sequence and one decode step.

Mamba-1 convolves the ``d_inner`` SSM inputs, Mamba-2 the ``x | B | C`` channels; both use an
``nn.Conv1d`` with ``groups = channels`` and ``padding = d_conv - 1`` followed by SiLU, and keep
the last ``d_conv`` convolution *inputs* (oldest first) as the decode cache's ``conv_state``.
The math is transformers' eager path (convolution in the weight dtype, SiLU, result cast back to
the input dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_conv_silu(x: torch.Tensor, conv1d: nn.Conv1d) -> torch.Tensor:
    """``silu(causal_conv(x))`` over a whole sequence.

    Args:
        x: ``(b, channels, l)`` convolution input.
        conv1d: depthwise ``nn.Conv1d`` (``groups == channels``, ``padding == d_conv - 1``).

    Returns:
        ``(b, channels, l)`` in ``x.dtype``.
    """
    w = conv1d.weight
    out = F.conv1d(x.to(w.dtype), w, conv1d.bias, padding=w.shape[-1] - 1, groups=w.shape[0])
    return F.silu(out[:, :, : x.shape[-1]]).to(x.dtype)


def fill_conv_state(conv_state: torch.Tensor, x: torch.Tensor) -> None:
    """Prefill: ``conv_state`` ``(b, channels, d_conv)`` gets the last ``d_conv`` columns of ``x``
    ``(b, channels, l)``, zero-padded on the left when ``l < d_conv``."""
    d_conv, seqlen = conv_state.shape[-1], x.shape[-1]
    keep = min(seqlen, d_conv)
    conv_state.zero_()
    conv_state[:, :, d_conv - keep :] = x[:, :, seqlen - keep :].to(conv_state.dtype)


def conv_silu_step(conv_state: torch.Tensor, x: torch.Tensor, conv1d: nn.Conv1d) -> torch.Tensor:
    """One decode step: push ``x`` ``(b, channels)`` into ``conv_state`` (in place) and return
    ``silu(conv)`` of the new window, ``(b, channels)`` in ``x.dtype``."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    w = conv1d.weight[:, 0, :]  # (channels, d_conv)
    out = (conv_state.to(w.dtype) * w).sum(dim=-1)
    if conv1d.bias is not None:
        out = out + conv1d.bias
    return F.silu(out).to(x.dtype)
