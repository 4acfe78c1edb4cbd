"""Inference cache of a Mamba LM: per-layer convolution and SSM states.

Unlike attention, Mamba's cache does not grow with the sequence: every layer keeps

* ``conv_state`` ``(b, channels, d_conv)`` in the model dtype: the last ``d_conv`` inputs of the
  depthwise causal convolution (oldest first); ``channels`` is ``d_inner`` for Mamba-1 and
  ``d_inner + 2 * ngroups * n`` (``x | B | C``) for Mamba-2, and
* ``ssm_state`` float32, either dense -- Mamba-1 ``(b, d_inner, n)``, Mamba-2
  ``(b, nheads, headdim, n)`` -- or **compact**, the last axis ``k`` instead of ``n``, holding only
  the kept states (ascending ``n``) of a layer whose state mask keeps the same number of states
  in every channel (Mamba-1: column or N:M masks) or head (Mamba-2). The compact cache is the
  memory saving of sparse decoding: ``k / n`` of the dense state.

A cache is tied to the state masks it was allocated for: changing a layer's mask afterwards
makes the cache invalid (the model checks and raises).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ops import StateLayout
from ..ops.ssd import SSDStateLayout


@dataclass
class LayerCache:
    """Cache of one layer.

    Attributes:
        conv_state: ``(b, channels, d_conv)`` last convolution inputs, model dtype.
        ssm_state: ``(b, d_inner, n)`` (Mamba-1) / ``(b, nheads, headdim, n)`` (Mamba-2) dense, or
            the same with ``k`` for ``n`` compact, float32.
        layout: the state layout the cache was allocated for (``None`` = dense layer).
        compact: ``ssm_state`` holds only the kept states.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor
    layout: StateLayout | SSDStateLayout | None = None
    compact: bool = False


@dataclass
class MambaCache:
    """Per-layer caches plus the number of tokens already consumed.

    Create one with ``allocate_cache`` of :class:`~sparsessm_kernels.models.MambaLM` or
    :class:`~sparsessm_kernels.models.Mamba2LM`, pass it as
    ``model(input_ids, cache=cache)``: the first call (``seqlen_offset == 0``) is the prefill, later
    calls continue the sequence (one token at a time is the fast decode path). The cache is
    updated in place.
    """

    layers: list[LayerCache]
    batch_size: int
    seqlen_offset: int = 0
    extra: dict = field(default_factory=dict)

    def reset(self) -> None:
        """Zero every state and rewind to the start of a sequence."""
        for layer in self.layers:
            layer.conv_state.zero_()
            layer.ssm_state.zero_()
        self.seqlen_offset = 0

    def nbytes(self) -> int:
        """Bytes held by the SSM and convolution states."""
        return sum(
            lc.conv_state.numel() * lc.conv_state.element_size()
            + lc.ssm_state.numel() * lc.ssm_state.element_size()
            for lc in self.layers
        )

    def ssm_state_nbytes(self) -> int:
        """Bytes held by the SSM states only (what a compact cache shrinks)."""
        return sum(lc.ssm_state.numel() * lc.ssm_state.element_size() for lc in self.layers)

    def dense_ssm_state(self, layer_idx: int) -> torch.Tensor:
        """Layer ``layer_idx``'s SSM state with the full last axis ``n``, float32 (a copy if compact)."""
        lc = self.layers[layer_idx]
        if lc.compact:
            assert lc.layout is not None
            return lc.layout.expand_state(lc.ssm_state)  # index tables follow the state's device
        return lc.ssm_state
