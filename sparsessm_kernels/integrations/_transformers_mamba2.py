"""The Mamba-2 half of :mod:`sparsessm_kernels.integrations.transformers`: transformers'
``Mamba2Mixer`` with its SSD scan and decode step on :func:`sparsessm_kernels.ops.ssd_scan` /
:func:`~sparsessm_kernels.ops.ssd_state_update`.

The patched forward reproduces ``Mamba2Mixer.forward``'s eager path of every supported release
(5.15+): padding masks, ``in_proj`` split into ``gate | xBC | dt``, the causal convolution over
``xBC`` with its cache, the SSD scan (chunk form from the cached state when there is one) or the
one-token recurrent step, the module's own gated RMSNorm (``self.norm``: ungrouped up to 5.17,
grouped over ``n_groups`` from 5.18 on, as each release computes it) and ``out_proj``. Only the scan
and the step run the layer's state mask, ``pruned_states`` and head transition mask. As in stock
transformers the step does not clamp ``dt`` to ``time_step_limit`` (the scan does).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.mamba import a_log_name
from ..models.mamba2 import DEFAULT_PRUNED_STATES, ssm_state_name
from ..models.mamba2_checkpoint import read_mamba2_masks
from ..ops import SSDStateLayout, ssd_scan, ssd_state_update
from ._common import PRUNED_STATES, MaskLoader, check_pruned_states_arg

# transformers.py imports this module lazily (inside apply), so importing it here is not circular.
from .transformers import (
    _STATE_ATTR,
    _cache_states,
    _conv_fn,
    _conv_update,
    _forward_args,
    _mask_padding,
    _store_final_state,
)

MIXER_CLASS = "Mamba2Mixer"
_REQUIRED = (
    "in_proj",
    "conv1d",
    "dt_bias",
    "A_log",
    "D",
    "norm",
    "out_proj",
    "act",
    "layer_idx",
    "num_heads",
    "head_dim",
    "n_groups",
    "ssm_state_size",
    "intermediate_size",
    "conv_dim",
    "conv_kernel_size",
    "chunk_size",
    "time_step_limit",
)
_STATE_KEY = re.compile(r"^(?:.*\.)?layers\.(\d+)\.mixer\.ssm_state$")
_HEAD_KEY = re.compile(r"^(?:.*\.)?layers\.(\d+)\.mixer\.A_log$")
_NO_CLAMP = (-math.inf, math.inf)


def is_mamba2(mixer: nn.Module) -> bool:
    """Whether ``mixer`` is transformers' ``Mamba2Mixer``."""
    return type(mixer).__name__ == MIXER_CLASS


def check_mixer(mixer: nn.Module, i: int, version: str, supported: str, hint: str) -> None:
    """Validate one mixer of a ``Mamba2ForCausalLM`` for :func:`patched_forward`."""
    cls = type(mixer)
    if not is_mamba2(mixer):
        raise TypeError(
            f"layer {i}: mixer is {cls.__module__}.{cls.__name__}; a Mamba-2 model needs transformers' "
            f"{MIXER_CLASS} in every layer"
        )
    missing = [a for a in _REQUIRED if not hasattr(mixer, a)]
    if missing:
        raise TypeError(
            f"layer {i}: {cls.__name__} of transformers {version} lacks {missing}; this integration "
            f"reproduces the {MIXER_CLASS} of {supported} and cannot patch this one"
        )
    params = inspect.signature(inspect.unwrap(cls.forward)).parameters
    # A wrapper that hides the signature ((*args, **kwargs), as in 5.15) says nothing either way.
    opaque = any(v.kind in (v.VAR_POSITIONAL, v.VAR_KEYWORD) for v in params.values()) and len(params) <= 3
    if "cache_position" in params or not (opaque or {"cache", "cache_params"} & set(params)):
        raise TypeError(
            f"transformers {version}: its {cls.__name__}.forward takes {sorted(params)[:8]}, not the "
            f"(hidden_states, cache / cache_params, attention_mask) of {supported}. Install a supported "
            f"release, or load the checkpoint with {hint}"
        )
    if mixer.layer_idx != i:
        raise TypeError(f"layer {i}: mixer.layer_idx is {mixer.layer_idx}, expected {i}")
    if mixer.num_heads * mixer.head_dim != mixer.intermediate_size or mixer.num_heads % mixer.n_groups:
        raise TypeError(
            f"layer {i}: num_heads={mixer.num_heads}, head_dim={mixer.head_dim}, n_groups={mixer.n_groups}, "
            f"intermediate_size={mixer.intermediate_size} are inconsistent"
        )


# ------------------------------------------------------------------------------------- masks
@dataclass(frozen=True)
class _Sizes:
    """What :func:`~sparsessm_kernels.models.mamba2_checkpoint.read_mamba2_masks` checks masks against,
    taken from the live mixers."""

    n_layer: int
    nheads: int
    ngroups: int
    d_state: int


def mask_loader(mixers: list[nn.Module]) -> MaskLoader:
    """A reader of Mamba-2 ``sparsity.safetensors`` files for these mixers: state masks keyed by
    ``backbone.layers.{i}.mixer.ssm_state`` and head transition masks by ``...A_log``."""
    m = mixers[0]
    sizes = _Sizes(len(mixers), int(m.num_heads), int(m.n_groups), int(m.ssm_state_size))

    def load(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        states, heads = read_mamba2_masks(path, sizes)  # type: ignore[arg-type]
        masks: dict[str, Any] = {ssm_state_name(i): layout for i, (layout, _) in states.items()}
        masks.update({a_log_name(i): mask for i, mask in heads.items()})
        return masks, {ssm_state_name(i): mode for i, (_, mode) in states.items()}

    return load


@dataclass
class Mamba2Spec:
    """What a patched ``Mamba2Mixer`` runs: its state layout, the pruned-state semantics, its head
    transition mask and the cache form."""

    layout: SSDStateLayout | None = None
    pruned_states: str = DEFAULT_PRUNED_STATES
    heads: torch.Tensor | None = None
    compact: bool = False

    def describe(self, d_state: int) -> str:
        parts = []
        if self.layout is not None:
            lay = self.layout
            kind = "per-group" if lay.mask.shape[0] == lay.ngroups else "per-head"
            cache = (
                f"compact ssm cache ({lay.n_kept}/{d_state} states)" if self.compact else "dense ssm cache"
            )
            parts.append(f"{kind} state mask, sparsity {lay.sparsity:.2f}, {self.pruned_states}, {cache}")
        if self.heads is not None:
            parts.append(f"head transition mask ({int(self.heads.sum())}/{self.heads.numel()} heads keep it)")
        return "; ".join(parts) if parts else "dense"


def layer_specs(
    masks: Mapping[str, Any],
    source_modes: str | dict[str, str],
    pruned_states: str | Mapping[str, str] | None,
    mixers: list[nn.Module],
    *,
    compact_cache: bool,
) -> dict[int, Mamba2Spec]:
    """Validate Mamba-2 ``masks`` against the layers and build ``{layer index: Mamba2Spec}``.

    Keys: ``backbone.layers.{i}.mixer.ssm_state`` -> bool ``(n_groups, n)`` / ``(num_heads, n)``
    state mask or an :class:`~sparsessm_kernels.ops.SSDStateLayout`; ``backbone.layers.{i}.mixer.A_log``
    -> bool ``(num_heads,)`` head transition mask (any prefix before ``layers.{i}`` is accepted).
    ``pruned_states`` (or the source's modes) are keyed by the ``ssm_state`` names.
    """
    check_pruned_states_arg(pruned_states)
    modes = pruned_states if pruned_states is not None else source_modes
    specs: dict[int, Mamba2Spec] = {}
    bad: list[str] = []
    for key, value in masks.items():
        state = _STATE_KEY.match(key) if isinstance(key, str) else None
        head = _HEAD_KEY.match(key) if isinstance(key, str) else None
        found = state or head
        i = int(found.group(1)) if found is not None else -1
        if not 0 <= i < len(mixers):
            bad.append(repr(key))
            continue
        if value is None:
            continue
        m = mixers[i]
        h, g, n = int(m.num_heads), int(m.n_groups), int(m.ssm_state_size)
        spec = specs.setdefault(i, Mamba2Spec())
        if (spec.heads if head is not None else spec.layout) is not None:
            kind = "head transition" if head is not None else "state"
            raise ValueError(f"mask {key!r}: layer {i} has more than one {kind} mask")
        if head is not None:
            if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or tuple(value.shape) != (h,):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                dtype = f" {value.dtype}" if isinstance(value, torch.Tensor) else ""
                raise ValueError(
                    f"mask {key!r}: a head transition mask of layer {i} must be a bool tensor of shape "
                    f"(num_heads,) = ({h},), got{dtype} {got}"
                )
            spec.heads = value.to(m.A_log.device if m.A_log.device.type != "meta" else "cpu")
            continue
        try:
            if isinstance(value, SSDStateLayout):
                value.check(h, g, n)
                layout = value
            else:
                layout = SSDStateLayout(value, nheads=h, ngroups=g)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"mask {key!r} (layer {i}): {exc}") from exc
        if isinstance(modes, str):
            mode = modes
        else:
            mode = modes.get(key, modes.get(ssm_state_name(i), DEFAULT_PRUNED_STATES))
        if mode not in PRUNED_STATES:
            raise ValueError(f"pruned_states for {key!r}: expected one of {PRUNED_STATES}, got {mode!r}")
        spec.layout, spec.pruned_states = layout, mode
        spec.compact = compact_cache and layout.uniform and 0 < layout.n_kept < n
    if bad:
        raise ValueError(
            f"sparsity: keys {', '.join(bad[:5])} name no layer of this Mamba-2 model (expected state masks "
            f"'backbone.layers.{{i}}.mixer.ssm_state' and head transition masks "
            f"'backbone.layers.{{i}}.mixer.A_log' with 0 <= i < {len(mixers)})"
        )
    return specs


# ------------------------------------------------------------------------------------- forward
class Mamba2MixerPatch:
    """Per-mixer state of the patch (kept in the instance ``__dict__``, not in ``state_dict``)."""

    #: Children whose weights the forward reads directly: fire their accelerate hooks, as
    #: transformers' ``force_accelerate_hooks("conv1d")`` does.
    hooked = ("conv1d",)

    def __init__(self, spec: Mamba2Spec, backend: str, saved: tuple[str, Any]) -> None:
        self.spec, self.backend, self.saved = spec, backend, saved
        self._heads: dict[torch.device, torch.Tensor] = {}

    def heads(self, device: torch.device) -> torch.Tensor | None:
        """The head transition mask on ``device`` (copied once per device)."""
        heads = self.spec.heads
        if heads is None or heads.device == device:
            return heads
        if device not in self._heads:
            self._heads[device] = heads.to(device)
        return self._heads[device]


def patched_forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``Mamba2Mixer.forward`` of transformers >= 5.15 with the SSD scan and step on sparsessm ops.

    Called as the stock forward is: ``(hidden_states, cache=None, attention_mask=None)`` (5.24+)
    or ``(hidden_states, cache_params=None, attention_mask=None)`` (5.15-5.23); ``hidden_states``
    ``(b, l, hidden_size)``, ``attention_mask`` ``(b, l)`` or None. Returns ``(b, l, hidden_size)``.
    """
    cache, attention_mask = _forward_args(args, kwargs, MIXER_CLASS)
    patch: Mamba2MixerPatch = self.__dict__[_STATE_ATTR]
    spec = patch.spec
    for child in patch.hooked:
        hook = getattr(getattr(self, child), "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(getattr(self, child))
    b, seq_len, _ = hidden_states.shape
    dtype = hidden_states.dtype
    h, p, g, n = self.num_heads, self.head_dim, self.n_groups, self.ssm_state_size
    if cache is not None:
        conv_state, recurrent_state, recording = _cache_states(cache, self.layer_idx)
    else:
        conv_state, recurrent_state, recording = None, None, False

    # 1. input projection: gate (b, l, d_inner) | xBC (b, l, conv_dim) | dt (b, l, nheads)
    hidden_states = _mask_padding(hidden_states, attention_mask)
    projected = self.in_proj(hidden_states)
    A = -torch.exp(self.A_log.float())
    gate, xbc, dt = projected.split([self.intermediate_size, self.conv_dim, h], dim=-1)

    # 2. causal convolution over xBC (with its cache)
    xbc = xbc.transpose(1, 2)
    weight = self.conv1d.weight.squeeze(1)
    if conv_state is not None and seq_len == 1 and not recording:
        xbc = _conv_update(xbc, conv_state, weight, self.conv1d.bias, self.act)
    else:
        if cache is not None:
            xbc = cache.update_conv_state(xbc, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
        xbc = _conv_fn(xbc, weight, self.conv1d.bias, self.act)
        if cache is not None:
            xbc = xbc[:, :, -seq_len:]
    xbc = _mask_padding(xbc.transpose(1, 2), attention_mask)
    x, B, C = torch.split(xbc, [self.intermediate_size, g * n, g * n], dim=-1)
    sparse = {
        "state_mask": spec.layout,
        "pruned_states": spec.pruned_states,
        "head_transition_mask": patch.heads(x.device),
        "backend": patch.backend,
    }

    # 3. the SSD: one recurrent step, or the chunked scan (from the cached state when there is one)
    if recurrent_state is not None and seq_len == 1:
        y = ssd_state_update(
            recurrent_state,
            x.reshape(b, h, p),
            dt[:, 0],
            A,
            B.reshape(b, g, n),
            C.reshape(b, g, n),
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=_NO_CLAMP,
            **sparse,
        ).reshape(b, 1, -1)
    else:
        result = ssd_scan(
            x.reshape(b, seq_len, h, p),
            dt,
            A,
            B.reshape(b, seq_len, g, n),
            C.reshape(b, seq_len, g, n),
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=tuple(self.time_step_limit),
            initial_states=recurrent_state,
            return_final_states=cache is not None,
            chunk_size=int(self.chunk_size),
            **sparse,
        )
        if cache is not None:
            y, final = result
            compacted = spec.layout.compact_state(final) if spec.compact and spec.layout is not None else None
            _store_final_state(cache, self.layer_idx, final, compacted)
        else:
            y = result
        y = y.reshape(b, seq_len, -1)

    # 4. gated RMSNorm (the module's own) and output projection
    out = self.out_proj(self.norm(y, gate).to(dtype))
    for child in reversed(patch.hooked):
        hook = getattr(getattr(self, child), "_hf_hook", None)
        if hook is not None:
            hook.post_forward(getattr(self, child), ())
    return out
