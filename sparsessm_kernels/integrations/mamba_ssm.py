"""Drop-in sparse states (and 2:4 projections) for a mamba_ssm ``MambaLMHeadModel``.

::

    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    from sparsessm_kernels.integrations import mamba_ssm as ssk_mamba

    model = MambaLMHeadModel.from_pretrained("state-spaces/mamba-1.4b", device="cuda", dtype=torch.bfloat16)
    ssk_mamba.apply(model, "pruned/sparsity.safetensors")
    out = model.generate(input_ids, max_length=128)  # InferenceParams caches, compact for sparse layers
    ssk_mamba.revert(model)

:func:`apply` patches every Mamba-1 mixer (``mamba_ssm.modules.mamba_simple.Mamba``) **per
instance**, replacing four methods:

* ``forward`` -- the full-sequence / prefill path. mamba_ssm runs its fused ``mamba_inner_fn``
  (no cache) or an unfused path with ``selective_scan_fn`` (cache); the patched forward is the
  unfused one in both cases, with the scan on :func:`sparsessm_kernels.ops.selective_scan` and the
  layer's state mask (``in_proj`` / ``x_proj`` / ``out_proj`` are called as modules, so 2:4
  :class:`~sparsessm_kernels.nn.SemiStructuredLinear` projections apply);
* ``step`` -- the decode step, on :func:`sparsessm_kernels.ops.selective_state_update` (several
  tokens are decoded one at a time, where mamba_ssm asserts a single token);
* ``allocate_inference_cache`` and ``_get_states_from_cache`` -- the ``InferenceParams`` caches:
  ``conv_state`` as in mamba_ssm, ``ssm_state`` compact ``(b, d_inner, k)`` for uniform sparse
  layers, in mamba_ssm's dtype (the weights' dtype) unless ``ssm_state_dtype`` is given.

The causal convolution runs in PyTorch (``causal_conv1d`` is not needed), so a mamba_ssm whose
compiled extensions are missing still works once imported. mamba_ssm is imported lazily: this
module imports without it, and :func:`apply` raises ``ImportError`` when it cannot be imported.
Other mixers (Mamba-2, attention) are left untouched and listed in the report; masks may only
name Mamba-1 layers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import mixer_forward, mixer_step
from ..ops.dispatch import resolve_backend
from ._common import (
    MODEL_ATTR,
    ApplyReport,
    LayerSpec,
    Mamba1MixerPatch,
    ModelPatch,
    bind,
    densify_names,
    is_applied,
    layer_index,
    layer_specs,
    read_sparsity,
    unbind,
)
from ._common import sparsify_projections as _sparsify_projections

__all__ = ["UnsupportedModelError", "apply", "is_applied", "revert"]

logger = logging.getLogger("sparsessm_kernels")

_REQUIRED = (
    "d_model",
    "d_inner",
    "d_state",
    "d_conv",
    "dt_rank",
    "in_proj",
    "conv1d",
    "x_proj",
    "dt_proj",
    "A_log",
    "D",
    "out_proj",
    "act",
    "layer_idx",
)
_METHODS = ("forward", "step", "allocate_inference_cache", "_get_states_from_cache")
_STATE_ATTR = "_sparsessm_patch"


class UnsupportedModelError(TypeError):
    """The model is not a mamba_ssm Mamba-1 model this integration can patch."""


def _import_mamba_ssm() -> Any:
    """The imported ``mamba_ssm`` package, or a clear ``ImportError``."""
    module = sys.modules.get("mamba_ssm")
    if module is not None:
        return module
    try:
        import mamba_ssm
    except Exception as exc:
        raise ImportError(
            "sparsessm_kernels.integrations.mamba_ssm needs mamba_ssm, which failed to import "
            f"({type(exc).__name__}: {exc}). Install it with its compiled extension "
            "(pip install mamba-ssm --no-build-isolation), or load the checkpoint without it: "
            "sparsessm_kernels.models.MambaLM.from_pretrained(path) reads mamba_ssm checkpoints, "
            "with masks and compact caches"
        ) from exc
    return mamba_ssm


def _mamba1_class() -> type | None:
    try:
        from mamba_ssm.modules.mamba_simple import Mamba
    except Exception:
        return None
    return Mamba


def _is_mamba1(mixer: nn.Module, mamba_cls: type | None) -> bool:
    if mamba_cls is not None:
        return isinstance(mixer, mamba_cls)
    cls = type(mixer)
    return cls.__name__ == "Mamba" and cls.__module__.startswith("mamba_ssm.")


def _find_layers(model: nn.Module) -> nn.ModuleList:
    backbone = getattr(model, "backbone", model)
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(blk, "mixer") for blk in layers):
        raise UnsupportedModelError(
            f"expected a mamba_ssm MambaLMHeadModel (or MixerModel) with backbone.layers[i].mixer, "
            f"got {type(model).__name__}"
        )
    return layers


def _check_mixer(mixer: nn.Module, i: int) -> None:
    missing = [a for a in (*_REQUIRED, *_METHODS) if not hasattr(mixer, a)]
    if missing:
        raise UnsupportedModelError(
            f"layer {i}: {type(mixer).__name__} lacks {missing}; this integration reproduces "
            "mamba_ssm 2.x's Mamba-1 mixer (mamba_ssm.modules.mamba_simple.Mamba)"
        )
    if getattr(mixer, "activation", "silu") not in ("silu", "swish"):
        raise UnsupportedModelError(f"layer {i}: activation {mixer.activation!r} (Mamba-1 uses silu)")
    if mixer.layer_idx is None:
        raise UnsupportedModelError(f"layer {i}: mixer.layer_idx is None (InferenceParams needs it)")


# ------------------------------------------------------------------------------------- patch
class _MixerPatch(Mamba1MixerPatch):
    def __init__(self, spec: LayerSpec, backend: str, ssm_dtype: torch.dtype | None) -> None:
        super().__init__(spec, backend)
        self.ssm_dtype = ssm_dtype
        self.saved: list[tuple[str, Any]] = []

    def ssm_width(self, d_state: int) -> int:
        return self.spec.layout.n_kept if self.spec.compact and self.spec.layout is not None else d_state


def _patch_of(self: nn.Module) -> _MixerPatch:
    return self.__dict__[_STATE_ATTR]


def _allocate_inference_cache(
    self: nn.Module, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """mamba_ssm's ``Mamba.allocate_inference_cache`` with a compact ssm state for uniform masks."""
    patch = _patch_of(self)
    device = self.out_proj.weight.device
    conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
    conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype)
    ssm_dtype = patch.ssm_dtype or (self.dt_proj.weight.dtype if dtype is None else dtype)
    ssm_state = torch.zeros(
        batch_size, self.d_inner, patch.ssm_width(self.d_state), device=device, dtype=ssm_dtype
    )
    return conv_state, ssm_state


def _get_states_from_cache(
    self: nn.Module, inference_params: Any, batch_size: int, initialize_states: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """mamba_ssm's ``Mamba._get_states_from_cache`` allocating a compact ssm state when possible."""
    patch = _patch_of(self)
    cache = inference_params.key_value_memory_dict
    if self.layer_idx not in cache:
        conv_state = torch.zeros(
            batch_size,
            self.d_inner,
            self.d_conv,
            device=self.conv1d.weight.device,
            dtype=self.conv1d.weight.dtype,
        )
        ssm_state = torch.zeros(
            batch_size,
            self.d_inner,
            patch.ssm_width(self.d_state),
            device=self.dt_proj.weight.device,
            dtype=patch.ssm_dtype or self.dt_proj.weight.dtype,
        )
        cache[self.layer_idx] = (conv_state, ssm_state)
    else:
        conv_state, ssm_state = cache[self.layer_idx]
        if initialize_states:
            conv_state.zero_()
            ssm_state.zero_()
    return conv_state, ssm_state


def _forward(
    self: nn.Module, hidden_states: torch.Tensor, inference_params: Any = None, **kwargs: Any
) -> torch.Tensor:
    """mamba_ssm's ``Mamba.forward`` (unfused) with the scan on sparsessm ops."""
    patch = _patch_of(self)
    batch, seqlen, _ = hidden_states.shape
    conv_state, ssm_state = None, None
    if inference_params is not None:
        conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
        if inference_params.seqlen_offset > 0:
            out, _, _ = self.step(hidden_states, conv_state, ssm_state)
            return out

    def conv(x: torch.Tensor) -> torch.Tensor:  # mamba_ssm's conv path without causal_conv1d
        if conv_state is not None:
            conv_state.copy_(F.pad(x, (self.d_conv - x.shape[-1], 0)))
        return self.act(self.conv1d(x)[..., :seqlen])

    result = mixer_forward(
        self, hidden_states, conv=conv, ssm=patch.ssm(self), return_last_state=ssm_state is not None
    )
    if ssm_state is None:
        return result
    out, last_state = result
    if ssm_state.shape[-1] != last_state.shape[-1]:
        last_state = patch.spec.layout.to(last_state.device).compact_state(last_state)
    ssm_state.copy_(last_state)
    return out


def _step(
    self: nn.Module, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mamba_ssm's ``Mamba.step`` on sparsessm ops; several tokens are decoded one by one."""
    patch = _patch_of(self)
    dtype = hidden_states.dtype
    weight = self.conv1d.weight[:, 0, :]  # (d_inner, d_conv)

    def conv_step(x: torch.Tensor) -> torch.Tensor:  # mamba_ssm's step convolution
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = torch.sum(conv_state * weight, dim=-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        return self.act(x).to(dtype=dtype)

    ssm = patch.ssm(self)
    outs = [
        mixer_step(self, hidden_states[:, t], ssm_state, conv_step=conv_step, ssm=ssm)
        for t in range(hidden_states.shape[1])
    ]
    return torch.stack(outs, dim=1), conv_state, ssm_state


_PATCHED = {
    "forward": _forward,
    "step": _step,
    "allocate_inference_cache": _allocate_inference_cache,
    "_get_states_from_cache": _get_states_from_cache,
}


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
    ssm_state_dtype: torch.dtype | None = None,
) -> ApplyReport:
    """Route a mamba_ssm ``MambaLMHeadModel``'s scans and decode steps through sparsessm_kernels.

    Args:
        model: mamba_ssm ``MambaLMHeadModel`` or ``MixerModel`` (Mamba-1 layers are patched).
        sparsity: a pruned model directory, a ``sparsity.safetensors`` file, a dict
            ``{"backbone.layers.{i}.mixer.A_log": mask}`` or ``None`` (the directory named by
            ``model.name_or_path`` / ``model.config._name_or_path`` when set and local -- mamba_ssm
            does not record one, so usually no masks: every layer runs dense, logged at INFO).
        pruned_states, backend, sparsify_projections, projection_path, compact_cache: as in
            :func:`sparsessm_kernels.integrations.transformers.apply`.
        ssm_state_dtype: dtype of the ``InferenceParams`` ssm states this patch allocates
            (default: mamba_ssm's, the weights' dtype; ``torch.float32`` is more accurate).

    Returns:
        An :class:`~sparsessm_kernels.integrations.ApplyReport`.

    Raises:
        ImportError: mamba_ssm cannot be imported.
        UnsupportedModelError: no Mamba-1 mixer, or one that does not look like mamba_ssm 2.x's.
    """
    _import_mamba_ssm()
    mamba_cls = _mamba1_class()
    layers = _find_layers(model)
    mamba1 = {i: blk.mixer for i, blk in enumerate(layers) if _is_mamba1(blk.mixer, mamba_cls)}
    if not mamba1:
        kinds = sorted({type(blk.mixer).__name__ for blk in layers})
        raise UnsupportedModelError(
            f"no Mamba-1 mixer in {type(model).__name__} (mixers: {kinds}); sparsessm_kernels implements "
            "Mamba-1 (mamba_ssm.modules.mamba_simple.Mamba)"
        )
    for i, mixer in mamba1.items():
        _check_mixer(mixer, i)
    params = list(model.parameters())
    if backend != "auto" and params:
        resolve_backend(backend, params[0].device)
    config = getattr(model, "config", None)
    default_dir = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None)
    masks, modes, source = read_sparsity(sparsity, default_dir, type(model).__name__)
    stray = sorted(
        {i for i in map(layer_index, masks) if i is not None and i < len(layers) and i not in mamba1}
    )
    if stray:
        raise UnsupportedModelError(f"masks name layers {stray}, which are not Mamba-1 mixers")
    n_layers = len(layers)
    shapes = [
        (int(layers[i].mixer.d_inner), int(layers[i].mixer.A_log.shape[-1])) if i in mamba1 else (0, 0)
        for i in range(n_layers)
    ]
    specs = layer_specs(masks, modes, pruned_states, list(layers), shapes, compact_cache=compact_cache)

    if is_applied(model) or any(_STATE_ATTR in blk.mixer.__dict__ for blk in layers):
        logger.info("sparsessm_kernels: model was already patched; replacing the previous patch")
        revert(model)

    prefix = "backbone." if hasattr(model, "backbone") else ""
    report = ApplyReport("mamba_ssm", source, backend=backend)
    for i, mixer in mamba1.items():
        spec = specs.get(i, LayerSpec(None))
        patch = _MixerPatch(spec, backend, ssm_state_dtype)
        for name, fn in _PATCHED.items():
            patch.saved.append(bind(mixer, name, fn))
        mixer.__dict__[_STATE_ATTR] = patch
        report.layers[i] = spec.describe(shapes[i][1])
    swapped: list[str] = []
    if sparsify_projections:
        names = [f"{prefix}layers.{i}.mixer" for i in mamba1]
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
    """Undo :func:`apply` (stock mixer methods, dense projections); return the restored layers.

    ``InferenceParams`` filled while patched hold compact states: start new ones.
    """
    patch: ModelPatch | None = model.__dict__.pop(MODEL_ATTR, None)
    restored = []
    for i, blk in enumerate(_find_layers(model)):
        state: _MixerPatch | None = blk.mixer.__dict__.pop(_STATE_ATTR, None)
        if state is not None:
            for target, saved in reversed(state.saved):
                unbind(blk.mixer, target, saved)
            restored.append(i)
    if patch is not None and patch.swapped:
        densify_names(model, patch.swapped)
    return restored
