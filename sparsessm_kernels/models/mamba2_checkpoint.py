"""Reading Mamba-2 checkpoint directories (writing goes through :mod:`.checkpoint`'s writers).

Formats (detected from ``config.json``, local directory or Hub id, strict keys), as for Mamba-1:

* transformers ``Mamba2ForCausalLM``: ``config.json`` (``model_type: "mamba2"``) + ``model.safetensors``
  (sharded or ``pytorch_model.bin`` too);
* mamba_ssm ``MambaLMHeadModel`` with ``ssm_cfg.layer = "Mamba2"``: ``config.json`` +
  ``pytorch_model.bin`` (or ``model.safetensors``), ``backbone.embedding.weight`` renamed to HF's
  ``backbone.embeddings.weight``; ``lm_head.weight`` next to tied embeddings must equal them.

``sparsity.safetensors`` (optional, :mod:`sparsessm_kernels.sparsity.io`) holds

* state masks keyed by ``backbone.layers.{i}.mixer.ssm_state``, bool ``(ngroups, n)`` or
  ``(nheads, n)``, with the metadata key ``"pruned_states"`` (a JSON object ``{name: mode}`` or one
  mode for every mask; absent = ``"remove"``, the Mamba-2 default), and
* head transition masks keyed by ``backbone.layers.{i}.mixer.A_log``, bool ``(nheads,)`` (kind
  ``"head_transition"`` in the file's ``"masks"`` metadata).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..ops import SSDStateLayout
from .arch import detect_architecture, parse_model_config
from .checkpoint import SPARSITY_NAME, parse_pruned_states, read_config_json, read_tensors
from .config import CheckpointFormatError
from .mamba2 import DEFAULT_PRUNED_STATES
from .mamba2_config import Mamba2LMConfig

_SSM_STATE_RE = re.compile(r"^backbone\.layers\.(\d+)\.mixer\.ssm_state$")
_A_LOG_RE = re.compile(r"^backbone\.layers\.(\d+)\.mixer\.A_log$")
_MAX_LISTED = 20


@dataclass
class Mamba2CheckpointContents:
    """What :func:`read_mamba2_checkpoint` found.

    Attributes:
        config: the architecture.
        tensors: ``{HF key: tensor}`` on CPU, as stored (dtype unchanged; ``lm_head.weight`` absent
            when tied).
        format: ``"hf"`` or ``"mamba_ssm"``.
        source: the weights file(s), for error messages.
        state_masks: ``{layer index: (SSDStateLayout, pruned_states)}`` from ``sparsity.safetensors``.
        head_masks: ``{layer index: bool (nheads,)}`` from ``sparsity.safetensors``.
    """

    config: Mamba2LMConfig
    tensors: dict[str, torch.Tensor]
    format: str
    source: str
    state_masks: dict[int, tuple[SSDStateLayout, str]] = field(default_factory=dict)
    head_masks: dict[int, torch.Tensor] = field(default_factory=dict)


def read_mamba2_checkpoint(path: str | os.PathLike, revision: str | None = None) -> Mamba2CheckpointContents:
    """Read config, weights and (optional) masks of a Mamba-2 checkpoint.

    Args:
        path: a checkpoint directory, or a Hugging Face Hub repository id.
        revision: Hub branch, tag or commit (Hub ids only).

    Raises:
        FileNotFoundError: the directory or its ``config.json`` does not exist
            (:class:`~.hub.HubLookupError` for a Hub id that cannot be resolved).
        CheckpointFormatError: not a Mamba-2 config, bad config fields, unreadable weights,
            conflicting tied ``lm_head``, invalid masks.
    """
    directory, config_path, raw_cfg = read_config_json(path, revision)
    try:
        arch, _ = detect_architecture(raw_cfg)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{config_path}: {exc}") from exc
    if arch != "mamba2":
        raise CheckpointFormatError(
            f"{config_path}: a Mamba-1 config, not a Mamba-2 one; load it with MambaLM (or load_model, "
            "which picks the class)"
        )
    config, _, fmt = parse_model_config(raw_cfg, str(config_path))
    assert isinstance(config, Mamba2LMConfig)
    tensors, source = read_tensors(directory, config.tie_embeddings, config_path)
    contents = Mamba2CheckpointContents(config=config, tensors=tensors, format=fmt, source=source)
    sparsity = directory / SPARSITY_NAME
    if sparsity.exists():
        contents.state_masks, contents.head_masks = read_mamba2_masks(sparsity, config)
    return contents


def read_mamba2_masks(
    path: Path, config: Mamba2LMConfig
) -> tuple[dict[int, tuple[SSDStateLayout, str]], dict[int, torch.Tensor]]:
    """Read a Mamba-2 ``sparsity.safetensors``: ``(state masks, head transition masks)`` by layer.

    Raises:
        CheckpointFormatError: a key that names no layer's ``ssm_state`` / ``A_log``, a mask of the
            wrong shape, ``pruned_states`` for a layer without a state mask.
    """
    from ..sparsity.io import MaskFileError, head_mask_names, load_masks

    try:
        masks, meta = load_masks(path)
        heads = head_mask_names(meta, path)
    except MaskFileError as exc:
        raise CheckpointFormatError(str(exc)) from exc
    pruned = parse_pruned_states(meta, path, default=DEFAULT_PRUNED_STATES)
    h, g, n = config.nheads, config.ngroups, config.d_state
    state_masks: dict[int, tuple[SSDStateLayout, str]] = {}
    head_masks: dict[int, torch.Tensor] = {}
    bad = []
    for name, mask in masks.items():
        match = (_A_LOG_RE if name in heads else _SSM_STATE_RE).match(name)
        if match is None or int(match.group(1)) >= config.n_layer:
            bad.append(name)
            continue
        i = int(match.group(1))
        if name in heads:
            if tuple(mask.shape) != (h,):
                raise CheckpointFormatError(
                    f"{path}: head transition mask {name!r} has shape {tuple(mask.shape)}, expected ({h},) "
                    f"for layer {i}"
                )
            head_masks[i] = mask
            continue
        if mask.dim() != 2 or mask.shape[0] not in (g, h) or mask.shape[1] != n:
            raise CheckpointFormatError(
                f"{path}: state mask {name!r} has shape {tuple(mask.shape)}, expected (ngroups, n) = "
                f"({g}, {n}) or (nheads, n) = ({h}, {n}) for layer {i}"
            )
        mode = pruned if isinstance(pruned, str) else pruned.get(name, DEFAULT_PRUNED_STATES)
        state_masks[i] = (SSDStateLayout(mask, nheads=h, ngroups=g), mode)
    if bad:
        raise CheckpointFormatError(
            f"{path}: mask keys {bad[:_MAX_LISTED]} name no layer of this Mamba-2 model (expected state "
            f"masks 'backbone.layers.{{i}}.mixer.ssm_state' and head transition masks "
            f"'backbone.layers.{{i}}.mixer.A_log' with 0 <= i < {config.n_layer})"
        )
    if isinstance(pruned, dict):
        stray = sorted(set(pruned) - {name for name in masks if name not in heads})
        if stray:
            raise CheckpointFormatError(
                f"{path}: metadata 'pruned_states' names layers without a state mask: {stray}"
            )
    return state_masks, head_masks
