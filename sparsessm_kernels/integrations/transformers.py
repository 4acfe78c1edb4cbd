"""Drop-in sparse states (and 2:4 projections) for a transformers Mamba model.

::

    from transformers import MambaForCausalLM
    from sparsessm_kernels.integrations import transformers as ssk_hf

    model = MambaForCausalLM.from_pretrained("path/to/pruned-mamba")  # has sparsity.safetensors
    report = ssk_hf.apply(model)  # masks from model.name_or_path
    out = model.generate(input_ids, max_new_tokens=32)  # compact ssm caches for sparse layers
    ssk_hf.revert(model)  # the stock model again, bit for bit

:func:`apply` replaces, **per mixer instance**, the ``forward`` of every ``MambaMixer`` (and
``FalconMambaMixer``) with one that reproduces transformers' own computation (padding masks, the
causal convolution and its cache, ``x_proj`` / ``dt_proj``, FalconMamba's B / C / dt norms,
``out_proj``) but runs the selective scan and the decode step through
:func:`sparsessm_kernels.ops.selective_scan` / :func:`~sparsessm_kernels.ops.selective_state_update`
with the layer's state mask. ``Mamba2ForCausalLM``'s ``Mamba2Mixer`` gets the same treatment with the
SSD scan / step (:func:`sparsessm_kernels.ops.ssd_scan` / :func:`~sparsessm_kernels.ops.ssd_state_update`),
state masks and head transition masks: see :mod:`._transformers_mamba2`. Nothing module-level is
touched: transformers binds ``mamba_selective_scan`` & co. to mamba_ssm's kernels when mamba_ssm
imports, and the patched mixers never call them, so a missing, broken or CPU-less mamba_ssm cannot
break this path.

Supported: transformers >= 5.15 (:data:`SUPPORTED`; CI tests 5.15, 5.17, 5.23 and the newest
release). The mixer takes its cache as ``cache_params`` up to 5.23 and as ``cache`` from 5.24 on
(``cache_params`` stays a deprecated alias until 5.40): the patched forward accepts both and refuses
any other data-carrying argument rather than dropping it. The cache is a ``DynamicCache`` with
``update_conv_state`` / ``update_recurrent_state``, read through ``get_recurrent_state`` from 5.21
on and the per-layer state dicts ``layers[i].recurrent_states`` before. Older releases (``MambaCache``
up to 5.4, one state tensor per cache layer in 5.5-5.13, FalconMamba's weightless B / C / dt norms
in 5.14) are refused with a message naming the version found and the supported range.

Why the hook is the mixer's ``forward``, per instance: from 5.24 transformers routes the scan and
the decode step through module-level functions (``mamba_selective_scan`` /
``mamba_selective_state_update``, wrapped by ``use_kernel_func_from_hub_with_fallback``) that the
mixer calls by their global name. Replacing them (or registering a ``kernels`` hub mapping, which
``kernelize`` applies model-wide and which needs the ``kernels`` package and a hub download) would
change every Mamba model in the process, could not carry a per-layer mask without a side channel,
and does not exist before 5.15 in this form; the per-instance forward keeps masks, compact caches and
revert local to the patched model.

Differences from the stock mixer, by design:

* sparse layers with a uniform mask (column or N:M) keep a **compact** ``(b, d_inner, k)`` ssm
  state in the cache (``k / n`` of the memory); the state is float32, as the stock one;
* several new tokens against a non-empty cache are decoded one at a time from the cached SSM
  state (stock transformers restarts the SSM from zero there); a single token, the common
  ``generate`` step, is the same path as stock;
* the mixer never takes the training-only fused ``mamba_inner_fn`` branch; gradients flow through
  the ops' reference backward (:mod:`sparsessm_kernels.ops.selective_scan.autograd`: exact, slow).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import mixer_forward, split_x_dbl
from ..ops.dispatch import resolve_backend
from ..ops.ssd.dispatch import resolve_ssd_backend
from ._common import (
    MODEL_ATTR,
    ApplyReport,
    LayerSpec,
    Mamba1MixerPatch,
    ModelPatch,
    bind,
    densify_names,
    is_applied,
    layer_specs,
    read_sparsity,
    unbind,
)
from ._common import sparsify_projections as _sparsify_projections

__all__ = ["UnsupportedModelError", "apply", "is_applied", "revert"]

logger = logging.getLogger("sparsessm_kernels")

_MIXER_CLASSES = ("MambaMixer", "FalconMambaMixer")
_REQUIRED = (
    "in_proj",
    "conv1d",
    "x_proj",
    "dt_proj",
    "A_log",
    "D",
    "out_proj",
    "act",
    "layer_idx",
    "time_step_rank",
    "ssm_state_size",
    "intermediate_size",
    "conv_kernel_size",
)
_FALCON_NORMS = ("dt_layernorm", "b_layernorm", "c_layernorm")
_STATE_ATTR = "_sparsessm_patch"

#: The transformers releases this integration supports: the oldest one whose Mamba and FalconMamba
#: mixers it reproduces (5.14 and older compute FalconMamba's B / C / dt norms differently and keep
#: other cache layouts). Newer releases are accepted while their mixer and cache keep the API checked
#: below; CI runs the integration tests on the oldest supported release and on current ones.
_OLDEST = (5, 15)
SUPPORTED = f"transformers >= {_OLDEST[0]}.{_OLDEST[1]}"
_MAMBA_LM_HINT = "sparsessm_kernels.models.MambaLM.from_pretrained (sparse masks and compact caches included)"
_MAMBA2_LM_HINT = (
    "sparsessm_kernels.models.Mamba2LM.from_pretrained (sparse masks and compact caches included)"
)


class UnsupportedModelError(TypeError):
    """The model (or the installed transformers) is not one this integration can patch."""


# ------------------------------------------------------------------------------------- checks
def _transformers_version() -> str:
    try:
        import transformers

        return str(transformers.__version__)
    except Exception as exc:  # pragma: no cover - transformers is a test dependency
        raise ImportError(f"transformers is not importable: {type(exc).__name__}: {exc}") from exc


def _check_version(version: str) -> None:
    """Refuse releases older than :data:`SUPPORTED` (their mixers compute differently)."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is not None and tuple(int(x) for x in found.groups()) < _OLDEST:
        raise UnsupportedModelError(
            f"transformers {version} is older than this integration supports ({SUPPORTED}): its Mamba "
            f"mixers and caches differ from the ones it reproduces. Install a supported release, or load "
            f"the checkpoint with {_MAMBA_LM_HINT}"
        )


def _find_layers(model: nn.Module) -> nn.ModuleList:
    backbone = getattr(model, "backbone", model)
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(blk, "mixer") for blk in layers):
        raise UnsupportedModelError(
            f"expected a transformers MambaForCausalLM / MambaModel (or FalconMamba) with "
            f"backbone.layers[i].mixer, got {type(model).__name__}"
        )
    return layers


def _check_mixer(mixer: nn.Module, i: int, version: str) -> bool:
    """Validate one mixer; return True for a FalconMamba mixer (B / C / dt norms)."""
    cls = type(mixer)
    if cls.__name__ not in _MIXER_CLASSES:
        hint = (
            " (of the Mamba-2 family, only Mamba2ForCausalLM / Mamba2Model's Mamba2Mixer is supported)"
            if "2" in cls.__name__
            else ""
        )
        raise UnsupportedModelError(
            f"layer {i}: mixer is {cls.__module__}.{cls.__name__}; expected transformers' MambaMixer or "
            f"FalconMambaMixer{hint}"
        )
    missing = [a for a in _REQUIRED if not hasattr(mixer, a)]
    falcon = cls.__name__ == "FalconMambaMixer"
    if falcon:
        missing += [a for a in _FALCON_NORMS if not hasattr(mixer, a)]
    if missing:
        raise UnsupportedModelError(
            f"layer {i}: {cls.__name__} of transformers {version} lacks {missing}; this integration "
            f"reproduces the Mamba-1 mixer of {SUPPORTED} and cannot patch this one"
        )
    params = inspect.signature(inspect.unwrap(cls.forward)).parameters
    if "cache_position" in params:
        raise UnsupportedModelError(
            f"transformers {version}: its {cls.__name__}.forward takes cache_position, the MambaCache "
            f"layout of transformers < 5.5 (ssm_states); this integration supports {SUPPORTED}. Install "
            f"a supported release, or load the checkpoint with {_MAMBA_LM_HINT}"
        )
    if mixer.layer_idx != i:
        raise UnsupportedModelError(f"layer {i}: mixer.layer_idx is {mixer.layer_idx}, expected {i}")
    if getattr(mixer, "activation", "silu") not in ("silu", "swish"):
        raise UnsupportedModelError(f"layer {i}: hidden_act {mixer.activation!r} (Mamba uses silu)")
    return falcon


def _check_cache_api() -> None:
    """Refuse the cache layouts :func:`_cache_states` cannot read.

    transformers 5.0-5.4 still use ``MambaCache`` (refused by the mixer check), 5.5-5.13 keep one
    conv / recurrent tensor per cache layer (refused here), 5.14-5.20 keep per-layer dicts of
    states behind ``has_previous_state``, and 5.21+ add ``get_recurrent_state``.
    """
    try:
        from transformers import cache_utils
    except Exception as exc:
        raise UnsupportedModelError(f"transformers.cache_utils is not importable: {exc}") from exc
    cache = getattr(cache_utils, "Cache", None)
    needed = ["update_conv_state", "update_recurrent_state"]
    if cache is not None and not hasattr(cache, "get_recurrent_state"):
        needed.append("has_previous_state")
    missing = [m for m in needed if cache is None or not hasattr(cache, m)]
    if missing:
        raise UnsupportedModelError(
            f"transformers {_transformers_version()}: its Cache lacks {missing} (the Mamba cache API "
            f"this integration reads); it supports {SUPPORTED}. Install a supported release, "
            f"or load the checkpoint with {_MAMBA_LM_HINT}"
        )
    if not hasattr(cache, "get_recurrent_state"):
        mixin = getattr(cache_utils, "LinearAttentionCacheLayerMixin", None)
        if mixin is None or "number_of_states" not in inspect.signature(mixin.__init__).parameters:
            raise UnsupportedModelError(
                f"transformers {_transformers_version()}: its Mamba cache keeps a single conv / recurrent "
                f"tensor per layer (the layout of transformers 5.5-5.13), which this integration does not "
                f"read; it supports {SUPPORTED}. Install a supported release, or load the checkpoint with "
                f"{_MAMBA_LM_HINT}"
            )


def _cache_states(cache_params: Any, layer_idx: int) -> tuple[Any, Any, bool]:
    """``(conv_state, recurrent_state, recording_past)`` of one layer; the states are ``None`` before
    the layer's first (prefill) forward.

    transformers >= 5.21 has ``get_conv_state`` / ``get_recurrent_state`` / ``is_recording_past``;
    5.14-5.20 keep them in ``cache.layers[i].conv_states[0]`` / ``.recurrent_states[0]`` (dicts
    keyed by state index) behind ``cache.has_previous_state(i)`` (with ``layers[i].record_past``).
    """
    if hasattr(cache_params, "get_recurrent_state"):
        conv_state = cache_params.get_conv_state(layer_idx, state_idx=0)
        recurrent_state = cache_params.get_recurrent_state(layer_idx, state_idx=0)
        recording = getattr(cache_params, "is_recording_past", None)
        return conv_state, recurrent_state, bool(recording(layer_idx)) if callable(recording) else False
    if not cache_params.has_previous_state(layer_idx):
        return None, None, False
    layer = cache_params.layers[layer_idx]
    recurrent_state = layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None
    return layer.conv_states[0], recurrent_state, bool(getattr(layer, "record_past", False))


# ------------------------------------------------------------------------------------- math
def _mask_padding(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """transformers' ``apply_mask_to_padding_states``."""
    if attention_mask is not None:
        dtype = hidden.dtype
        hidden = (hidden * attention_mask[:, :, None]).to(dtype)
    return hidden


def _conv_fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: Any) -> torch.Tensor:
    """transformers' torch ``causal_conv1d_fn``: ``x (b, d, l)``, ``weight (d, w)``."""
    _, d, seqlen = x.shape
    out = F.conv1d(
        x.to(weight.dtype), weight=weight.unsqueeze(1), bias=bias, padding=weight.shape[-1] - 1, groups=d
    )[:, :, :seqlen]
    return act(out).to(x.dtype)


def _conv_update(
    x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: Any
) -> torch.Tensor:
    """transformers' torch ``causal_conv1d_update`` (``conv_state`` updated in place)."""
    _, d, seqlen = x.shape
    state_len = conv_state.shape[-1]
    new = torch.cat([conv_state, x], dim=-1).to(weight.dtype)
    conv_state.copy_(new[:, :, -state_len:])
    out = F.conv1d(new, weight.unsqueeze(1), bias, padding=0, groups=d)[:, :, -seqlen:]
    return act(out).to(x.dtype)


def _store_final_state(
    cache_params: Any, layer_idx: int, final: torch.Tensor, compacted: torch.Tensor | None
) -> None:
    """Put a prefill's final SSM state in the cache: ``compacted`` (the kept states of a uniform
    sparse layer) when given, else the dense ``final``.

    A cache whose state for this layer was already allocated dense (by an unpatched forward)
    keeps its dense form: the decode steps accept both.
    """
    value = final
    if compacted is not None:
        value = compacted
        existing = None
        try:
            layer = cache_params.layers[layer_idx]
            if layer.is_recurrent_states_initialized[0]:
                existing = layer.recurrent_states[0]
        except (AttributeError, IndexError, KeyError, TypeError):
            existing = None
        if existing is not None and tuple(existing.shape) != tuple(value.shape):
            value = final
    cache_params.update_recurrent_state(value, layer_idx)


#: Keyword arguments the stock mixers accept and the patched forward may safely ignore: they only
#: select between stock code paths (a hub kernel's options) and carry no data.
_IGNORED_KWARGS = frozenset({"use_cache", "output_attentions", "return_dict"})


def _forward_args(
    args: tuple[Any, ...], kwargs: dict[str, Any], mixer: str = "MambaMixer"
) -> tuple[Any, torch.Tensor | None]:
    """``(cache, attention_mask)`` from a mixer call of any supported transformers release.

    transformers 5.14-5.23 call ``mixer(hidden_states, cache_params=..., attention_mask=...)``;
    5.24 renamed the argument to ``cache`` (``cache_params`` stays a deprecated alias until 5.40).
    Both are accepted, positionally or by name. Any other argument that carries data is refused:
    silently dropping an unknown cache argument would decode from an empty state. ``mixer`` names
    the patched class in the errors.
    """
    if len(args) > 2:
        raise TypeError(f"patched {mixer}.forward takes at most 3 positional arguments, got {len(args) + 1}")
    cache = args[0] if args else None
    attention_mask = args[1] if len(args) > 1 else kwargs.pop("attention_mask", None)
    for name in ("cache", "cache_params"):
        if name in kwargs:
            value = kwargs.pop(name)
            if cache is not None and value is not None and value is not cache:
                raise TypeError(f"patched {mixer}.forward got two different caches (cache and cache_params)")
            cache = value if value is not None else cache
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in _IGNORED_KWARGS)
    if unknown:
        raise TypeError(
            f"patched {mixer}.forward got unsupported arguments {unknown}: the sparse mixer reproduces "
            f"the stock mixer of {SUPPORTED} for hidden_states, cache / cache_params and attention_mask "
            "only (packed sequences through seq_idx / cu_seqlens are not supported)"
        )
    return cache, attention_mask


def _patched_forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``MambaMixer.forward`` of transformers >= 5.14 with the scan and step on sparsessm ops.

    Called as the stock forward is: ``(hidden_states, cache=None, attention_mask=None)`` (5.24+)
    or ``(hidden_states, cache_params=None, attention_mask=None)`` (5.14-5.23).
    """
    cache_params, attention_mask = _forward_args(args, kwargs)
    patch: _MixerPatch = self.__dict__[_STATE_ATTR]
    spec = patch.spec
    for child in patch.hooked:
        hook = getattr(getattr(self, child), "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(getattr(self, child))
    seq_len = hidden_states.shape[1]
    if cache_params is not None:
        conv_state, recurrent_state, recording = _cache_states(cache_params, self.layer_idx)
    else:
        conv_state, recurrent_state, recording = None, None, False

    hidden_states = _mask_padding(hidden_states, attention_mask)

    def conv(x: torch.Tensor) -> torch.Tensor:  # (b, d, l) -> (b, d, l), with the cache and padding mask
        weight = self.conv1d.weight.squeeze(1)
        if conv_state is not None and seq_len == 1 and not recording:
            x = _conv_update(x, conv_state, weight, self.conv1d.bias, self.act)
        else:
            if cache_params is not None:
                x = cache_params.update_conv_state(x, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
            x = _conv_fn(x, weight, self.conv1d.bias, self.act)
            if cache_params is not None:
                x = x[:, :, -seq_len:]
        return _mask_padding(x.transpose(1, 2), attention_mask).transpose(1, 2)

    split = delta = None
    if patch.falcon:

        def split(x_dbl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            dt, B, C = split_x_dbl(x_dbl, self.time_step_rank, self.ssm_state_size)
            return self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)

        if hasattr(self.config, "_is_quantized"):  # transformers' FalconMamba branch for quantized dt_proj

            def delta(dt: torch.Tensor) -> torch.Tensor:
                return (self.dt_proj(dt) - self.dt_proj.bias).transpose(1, 2)

    with_state = cache_params is not None and recurrent_state is None
    result = mixer_forward(
        self,
        hidden_states,
        conv=conv,
        ssm=patch.ssm(self),
        split=split,
        dt_proj=delta,
        ssm_state=recurrent_state,
        return_last_state=with_state,
    )
    if with_state:
        out, final_state = result
        compacted = None
        if spec.compact and spec.layout is not None:
            compacted = spec.layout.to(final_state.device).compact_state(final_state)
        _store_final_state(cache_params, self.layer_idx, final_state, compacted)
    else:
        out = result
    for child in reversed(patch.hooked):
        hook = getattr(getattr(self, child), "_hf_hook", None)
        if hook is not None:
            hook.post_forward(getattr(self, child), ())
    return out


class _MixerPatch(Mamba1MixerPatch):
    """Per-mixer state of the patch (kept in the instance ``__dict__``, not in ``state_dict``)."""

    def __init__(self, spec: LayerSpec, backend: str, falcon: bool, saved: tuple[str, Any]) -> None:
        super().__init__(spec, backend)
        self.falcon, self.saved = falcon, saved
        # Children whose weights the forward reads directly: fire their accelerate hooks, as
        # transformers' force_accelerate_hooks(["conv1d", "dt_proj"]) does.
        self.hooked = ("conv1d", "dt_proj")


# ------------------------------------------------------------------------------------- API
def apply(
    model: nn.Module,
    sparsity: str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    pruned_states: str | Mapping[str, str] | None = None,
    backend: str = "auto",
    sparsify_projections: bool = True,
    projection_path: str = "auto",
    compact_cache: bool = True,
) -> ApplyReport:
    """Route a transformers Mamba model's scans and decode steps through sparsessm_kernels.

    Args:
        model: ``MambaForCausalLM`` / ``MambaModel`` (or the FalconMamba classes), or
            ``Mamba2ForCausalLM`` / ``Mamba2Model``, of transformers >= 5.15, on any device.
        sparsity: where the state masks come from: a pruned model directory (with
            ``sparsity.safetensors``), a ``sparsity.safetensors`` file, a dict
            ``{"backbone.layers.{i}.mixer.A_log": bool (n,) / (d_inner, n) mask or StateLayout}``,
            or ``None``: ``model.name_or_path`` when it is a local directory with a masks file;
            otherwise every layer runs dense (logged at INFO). Mamba-2: state masks keyed by
            ``backbone.layers.{i}.mixer.ssm_state`` (bool ``(n_groups, n)`` / ``(num_heads, n)`` or
            an ``SSDStateLayout``) and head transition masks by ``...mixer.A_log`` (bool
            ``(num_heads,)``), as ``Mamba2LM.save_pretrained`` writes them.
        pruned_states: ``"zero_transition"`` / ``"remove"`` for every mask, or a dict per
            parameter name; default: the file's metadata (``zero_transition`` for Mamba-1 dicts,
            ``remove`` for Mamba-2 dicts).
        backend: passed to the ops (``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"``).
        sparsify_projections: swap the mixers' ``in_proj`` / ``x_proj`` / ``out_proj`` whose
            weights are 2:4 along the input dimension for :class:`~sparsessm_kernels.nn.SemiStructuredLinear`
            (others are left alone and listed in the report).
        projection_path: ``"auto"`` or a forced :data:`~sparsessm_kernels.nn.PATHS` entry.
        compact_cache: keep compact ``(b, d_inner, k)`` (Mamba-2: ``(b, num_heads, head_dim, k)``)
            ssm states for uniform sparse layers.

    Returns:
        An :class:`~sparsessm_kernels.integrations.ApplyReport`. Applying again replaces the
        previous patch.

    Raises:
        UnsupportedModelError: not a transformers Mamba / FalconMamba / Mamba-2 model, or
            transformers older than :data:`SUPPORTED`.
        FileNotFoundError / ValueError: masks that cannot be found, read or matched to layers.
    """
    version = _transformers_version()
    _check_version(version)
    _check_cache_api()
    layers = _find_layers(model)
    mixers = [blk.mixer for blk in layers]
    mamba2 = type(mixers[0]).__name__ == "Mamba2Mixer" if len(mixers) else False
    if mamba2:
        from . import _transformers_mamba2 as m2

        for i, m in enumerate(mixers):
            try:
                m2.check_mixer(m, i, version, SUPPORTED, _MAMBA2_LM_HINT)
            except TypeError as exc:
                raise UnsupportedModelError(str(exc)) from exc
        falcon = [False] * len(mixers)
    else:
        falcon = [_check_mixer(m, i, version) for i, m in enumerate(mixers)]
    if backend != "auto":  # fail now, not at the first forward
        device = next(model.parameters()).device
        if mamba2:
            resolve_ssd_backend(backend, device, "ssd_scan")
        else:
            resolve_backend(backend, device)
    default_dir = getattr(model, "name_or_path", None) or getattr(
        getattr(model, "config", None), "_name_or_path", None
    )
    # A model loaded from a hub id reads its masks from the commit its weights came from.
    revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    what = f"{type(model).__name__}"
    specs: dict[int, Any]
    if mamba2:
        masks, modes, source = read_sparsity(
            sparsity, default_dir, what, revision=revision, load=m2.mask_loader(mixers), dict_mode="remove"
        )
        specs = m2.layer_specs(masks, modes, pruned_states, mixers, compact_cache=compact_cache)
        d_states = [int(m.ssm_state_size) for m in mixers]
    else:
        masks, modes, source = read_sparsity(sparsity, default_dir, what, revision=revision)
        shapes = [(int(m.intermediate_size), int(m.A_log.shape[-1])) for m in mixers]
        for i, m in enumerate(mixers):
            if shapes[i][1] != m.ssm_state_size:
                raise UnsupportedModelError(
                    f"layer {i}: A_log has {shapes[i][1]} states but ssm_state_size is {m.ssm_state_size}"
                )
        specs = layer_specs(masks, modes, pruned_states, mixers, shapes, compact_cache=compact_cache)
        d_states = [shape[1] for shape in shapes]

    if is_applied(model) or any(_STATE_ATTR in blk.mixer.__dict__ for blk in layers):
        logger.info("sparsessm_kernels: model was already patched; replacing the previous patch")
        revert(model)

    prefix = "backbone." if hasattr(model, "backbone") else ""
    report = ApplyReport("transformers", source, backend=backend)
    for i, mixer in enumerate(mixers):
        if mamba2:
            spec = specs.get(i) or m2.Mamba2Spec()
            saved = bind(mixer, "forward", m2.patched_forward)
            mixer.__dict__[_STATE_ATTR] = m2.Mamba2MixerPatch(spec, backend, saved)
        else:
            spec = specs.get(i, LayerSpec(None))
            saved = bind(mixer, "forward", _patched_forward)
            mixer.__dict__[_STATE_ATTR] = _MixerPatch(spec, backend, falcon[i], saved)
        report.layers[i] = spec.describe(d_states[i])
    swapped: list[str] = []
    if sparsify_projections:
        names = [f"{prefix}layers.{i}.mixer" for i in range(len(mixers))]
        report.projections = _sparsify_projections(model, names, projection_path)
        swapped = list(report.projections.swapped)
    model.__dict__[MODEL_ATTR] = ModelPatch(report, swapped)
    logger.info("%s", report)
    if model.training:
        logger.warning(
            "sparsessm_kernels: the patched model is in training mode; gradients of the sparse scan and "
            "decode step are computed by recomputing through the reference implementation (exact but "
            "slow): call model.eval() for inference"
        )
    return report


def revert(model: nn.Module) -> list[int]:
    """Undo :func:`apply`: stock mixer forwards, dense ``nn.Linear`` projections.

    Returns the indices of the restored mixers. Outputs are then exactly those of the model
    before :func:`apply` (the 2:4 projections on the masked-dense path get their original
    parameters back; on the GPU paths the dense weight is rebuilt exactly from the compressed
    one). Caches filled while patched keep their compact states: start a new cache.
    """
    patch: ModelPatch | None = model.__dict__.pop(MODEL_ATTR, None)
    restored = []
    for i, blk in enumerate(_find_layers(model)):
        mixer = blk.mixer
        state: _MixerPatch | None = mixer.__dict__.pop(_STATE_ATTR, None)
        if state is not None:
            unbind(mixer, *state.saved)
            restored.append(i)
    if patch is not None and patch.swapped:
        densify_names(model, patch.swapped)
    return restored
