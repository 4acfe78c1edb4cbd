"""Reading and writing checkpoint directories (Mamba-1 here; Mamba-2 in :mod:`.mamba2_checkpoint`,
built on the same helpers: :func:`read_config_json`, :func:`read_tensors`, :func:`validate_state_dict`,
:func:`write_hf_checkpoint`, :func:`write_mamba_ssm_checkpoint`).

Read (:func:`read_checkpoint`), either format, detected from ``config.json``, from a local
directory or a Hugging Face Hub repository id (:func:`resolve_checkpoint_dir`):

* transformers ``MambaForCausalLM``: ``config.json`` + ``model.safetensors``, sharded
  ``model.safetensors.index.json``, ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``.
* mamba_ssm ``MambaLMHeadModel``: ``config.json`` + ``pytorch_model.bin`` (or
  ``model.safetensors``); ``backbone.embedding.weight`` is renamed to HF's
  ``backbone.embeddings.weight``.

A ``lm_head.weight`` stored next to tied embeddings is accepted only if it equals the embeddings.
``sparsity.safetensors`` (optional, see :mod:`sparsessm_kernels.sparsity.io`) holds state masks
keyed by ``backbone.layers.{i}.mixer.A_log``; its metadata key ``"pruned_states"`` is either a
JSON object ``{param name: "zero_transition" | "remove"}`` or one plain string for every layer
(absent = ``"zero_transition"``).

Write (:func:`write_hf_checkpoint`, :func:`write_mamba_ssm_checkpoint`): every file atomically;
:meth:`MambaLM.save_pretrained` and the stock export call them on a staging directory of
:func:`sparsessm_kernels._io.atomic_directory`, which makes the directory atomic as a whole.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path, write_text_atomic
from ..ops import StateLayout
from ..ops.layout import PRUNED_STATES_CHOICES
from .config import (
    CheckpointFormatError,
    MambaLMConfig,
    config_from_hf_dict,
    config_from_mamba_ssm_dict,
)
from .hub import needs_hub_lookup, resolve_local_or_hub, snapshot_commit

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
SPARSITY_NAME = "sparsity.safetensors"
WEIGHT_FILES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, BIN_NAME, BIN_INDEX_NAME)

SMALL_FILE_PATTERNS = ("*.json", "*.txt", "*.model", SPARSITY_NAME)
"""Hub files fetched without the weights: config, shard indices, tokenizer files, state masks."""
_SAFETENSORS_PATTERNS = ("model*.safetensors",)
_BIN_PATTERNS = ("pytorch_model*.bin",)
"""Hub weight files, safetensors first; ``.bin`` only when a repository has no safetensors."""

_A_LOG_RE = re.compile(r"^backbone\.layers\.(\d+)\.mixer\.A_log$")
_MAX_LISTED = 20


@dataclass
class CheckpointContents:
    """What :func:`read_checkpoint` found.

    Attributes:
        config: the architecture, with per-layer state sizes taken from the ``A_log`` tensors.
        tensors: ``{HF key: tensor}`` on CPU, as stored (dtype unchanged).
        format: ``"hf"`` or ``"mamba_ssm"``.
        source: the weights file(s), for error messages.
        layer_masks: ``{layer index: (StateLayout, pruned_states)}`` from ``sparsity.safetensors``.
    """

    config: MambaLMConfig
    tensors: dict[str, torch.Tensor]
    format: str
    source: str
    layer_masks: dict[int, tuple[StateLayout, str]] = field(default_factory=dict)


# ---------------------------------------------------------------------- low-level readers
def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: could not read {what} ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{path}: not valid JSON ({exc}); expected {what}") from exc


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ... depending on the corruption
        raise CheckpointFormatError(
            f"{path}: could not read safetensors weights ({type(exc).__name__}: {exc}); "
            "expected a valid safetensors file"
        ) from exc


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of many kinds
        raise CheckpointFormatError(
            f"{path}: could not read PyTorch weights ({type(exc).__name__}: {exc}); "
            "expected a torch.save'd state dict"
        ) from exc
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointFormatError(
            f"{path}: expected a state dict (a dict of parameter name -> tensor), got {type(obj).__name__}"
        )
    return dict(obj)


def _load_index(path: Path, loader) -> dict[str, torch.Tensor]:
    index = _read_json(path, "a sharded-checkpoint index with a 'weight_map'")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFormatError(f"{path}: expected a JSON object with a non-empty 'weight_map'")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise CheckpointFormatError(f"{path}: shard {shard!r} listed in weight_map does not exist")
        part = loader(shard_path)
        wanted = {k for k, v in weight_map.items() if v == shard}
        absent = sorted(wanted - set(part))
        if absent:
            raise CheckpointFormatError(
                f"{shard_path}: keys listed in {path.name} are absent: {absent[:_MAX_LISTED]}"
            )
        tensors.update({k: part[k] for k in wanted})
    return tensors


def load_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read the weights of a checkpoint directory: ``({key: tensor}, file description)``.

    Priority: ``model.safetensors``, ``model.safetensors.index.json``, ``pytorch_model.bin``,
    ``pytorch_model.bin.index.json``.
    """
    for name in WEIGHT_FILES:
        p = directory / name
        if not p.is_file():
            continue
        if name == SAFETENSORS_NAME:
            return _load_safetensors(p), str(p)
        if name == SAFETENSORS_INDEX_NAME:
            return _load_index(p, _load_safetensors), str(p)
        if name == BIN_NAME:
            return _load_bin(p), str(p)
        return _load_index(p, _load_bin), str(p)
    raise CheckpointFormatError(
        f"{directory}: no weights file found; expected one of {', '.join(WEIGHT_FILES)}"
    )


# ---------------------------------------------------------------------- resolve
def resolve_checkpoint_dir(
    path: str | os.PathLike, revision: str | None = None, *, weights: bool = True
) -> Path:
    """The local directory of a checkpoint given as a local path or a Hub repository id.

    A Hub id (``ORG/NAME`` that is no local path; see :mod:`.hub`) is resolved through the
    ``huggingface_hub`` cache, downloading only what a Mamba-1 checkpoint needs: ``*.json``
    (config, shard indices, tokenizer), ``*.txt`` / ``*.model`` (tokenizer),
    ``sparsity.safetensors`` and, with ``weights``, ``model*.safetensors`` -- or
    ``pytorch_model*.bin`` when the repository has no safetensors weights.

    Args:
        path: local directory or Hub id.
        revision: Hub branch, tag or commit (Hub ids only).
        weights: also fetch the weights (``False``: config, tokenizer and masks only).

    Raises:
        HubLookupError: (a ``FileNotFoundError``) a Hub id that cannot be resolved.
        ValueError: ``revision`` with a local directory.
    """
    if not needs_hub_lookup(path):
        return resolve_local_or_hub(path, revision=revision)
    small = list(SMALL_FILE_PATTERNS)
    if not weights:
        return resolve_local_or_hub(path, revision=revision, allow_patterns=small)
    directory = resolve_local_or_hub(path, revision=revision, allow_patterns=[*small, *_SAFETENSORS_PATTERNS])
    if any((directory / name).is_file() for name in WEIGHT_FILES):
        return directory
    # No safetensors weights: fetch the .bin ones of the same commit.
    pinned = snapshot_commit(directory) or revision
    return resolve_local_or_hub(path, revision=pinned, allow_patterns=[*small, *_BIN_PATTERNS])


# ---------------------------------------------------------------------- read
def read_config_json(
    path: str | os.PathLike, revision: str | None = None
) -> tuple[Path, Path, dict[str, Any]]:
    """Resolve a checkpoint (local directory or Hub id, weights included) and read its ``config.json``.

    Returns:
        ``(directory, config path, config dict)``.

    Raises:
        FileNotFoundError: the directory or its ``config.json`` does not exist
            (:class:`~.hub.HubLookupError` for a Hub id that cannot be resolved).
        CheckpointFormatError: not a directory; ``config.json`` is not a JSON object.
    """
    directory = resolve_checkpoint_dir(path, revision)
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    if not directory.is_dir():
        raise CheckpointFormatError(
            f"{directory}: expected a checkpoint directory (with config.json and weights)"
        )
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: expected a Mamba checkpoint directory with config.json (transformers "
            "MambaForCausalLM / Mamba2ForCausalLM or mamba_ssm MambaLMHeadModel) and its weights"
        )
    raw_cfg = _read_json(config_path, "a Mamba model config")
    if not isinstance(raw_cfg, dict):
        raise CheckpointFormatError(f"{config_path}: expected a JSON object, got {type(raw_cfg).__name__}")
    return directory, config_path, raw_cfg


def parse_config(parse, raw_cfg: dict[str, Any], config_path: Path):
    """``parse(raw_cfg, str(config_path))`` with every :class:`CheckpointFormatError` naming the file."""
    try:
        return parse(raw_cfg, str(config_path))
    except CheckpointFormatError as exc:
        if str(config_path) in str(exc):
            raise
        raise CheckpointFormatError(f"{config_path}: {exc}") from exc


def read_tensors(
    directory: Path, tie_embeddings: bool, config_path: Path
) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a checkpoint directory with HF key names: ``({key: tensor}, source)``.

    mamba_ssm's ``backbone.embedding.weight`` becomes ``backbone.embeddings.weight``; every tensor
    must be floating point; with ``tie_embeddings`` a stored ``lm_head.weight`` (mamba_ssm saves it)
    must equal the embeddings and is dropped.
    """
    tensors, source = load_weights(directory)
    if "backbone.embeddings.weight" not in tensors and "backbone.embedding.weight" in tensors:
        tensors["backbone.embeddings.weight"] = tensors.pop("backbone.embedding.weight")
    bad_dtype = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if bad_dtype:
        raise CheckpointFormatError(
            f"{source}: expected floating-point weights, got non-float tensors {bad_dtype[:_MAX_LISTED]}"
        )
    if tie_embeddings and "lm_head.weight" in tensors:
        head = tensors.pop("lm_head.weight")
        emb = tensors.get("backbone.embeddings.weight")
        if emb is None or head.shape != emb.shape or not torch.equal(head, emb):
            raise CheckpointFormatError(
                f"{source}: lm_head.weight differs from backbone.embeddings.weight, but {config_path} ties "
                "them (tie_word_embeddings / tie_embeddings = true)"
            )
    return tensors, source


def read_checkpoint(path: str | os.PathLike, revision: str | None = None) -> CheckpointContents:
    """Read config, weights and (optional) masks of a Mamba-1 checkpoint.

    Args:
        path: a checkpoint directory, or a Hugging Face Hub repository id
            (:func:`resolve_checkpoint_dir`).
        revision: Hub branch, tag or commit (Hub ids only).

    Raises:
        FileNotFoundError: the directory or its ``config.json`` does not exist
            (:class:`~.hub.HubLookupError` for a Hub id that cannot be resolved).
        CheckpointFormatError: unknown / unsupported format, bad config fields, unreadable weights,
            conflicting tied ``lm_head``, invalid masks.
    """
    directory, config_path, raw_cfg = read_config_json(path, revision)
    from .arch import detect_architecture  # arch reads both architectures' configs

    try:
        arch, fmt = detect_architecture(raw_cfg)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{config_path}: {exc}") from exc
    if arch != "mamba":
        found = "model_type 'mamba2'" if fmt == "hf" else "ssm_cfg.layer='Mamba2'"
        raise CheckpointFormatError(
            f"{config_path}: {found} is not supported here: a Mamba-2 checkpoint, not Mamba-1; load it with "
            "Mamba2LM, or load_model, which picks the class"
        )
    config = parse_config(
        config_from_hf_dict if fmt == "hf" else config_from_mamba_ssm_dict, raw_cfg, config_path
    )
    tensors, source = read_tensors(directory, config.tie_embeddings, config_path)

    # Per-layer state size from the tensors (structured pruning may shrink some layers).
    states = []
    for i in range(config.n_layer):
        a_log = tensors.get(f"backbone.layers.{i}.mixer.A_log")
        states.append(
            int(a_log.shape[1]) if a_log is not None and a_log.dim() == 2 else config.layer_d_state(i)
        )
    try:
        config = config.with_layer_d_states(states)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(
            f"{source}: A_log tensors give invalid state sizes {states}: {exc}"
        ) from exc

    layer_masks = (
        read_masks(directory / SPARSITY_NAME, config) if (directory / SPARSITY_NAME).exists() else {}
    )
    return CheckpointContents(
        config=config, tensors=tensors, format=fmt, source=source, layer_masks=layer_masks
    )


def validate_state_dict(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    config: Any,
    source: str,
) -> None:
    """Strict key and shape check; raises one :class:`CheckpointFormatError` listing every problem.

    Args:
        tensors: the checkpoint's tensors (HF keys).
        expected: ``{key: shape}`` the model needs.
        config: the architecture (its ``describe()`` opens the message).
        source: the weights file(s), named in the message.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = []
    for key in sorted(set(expected) & set(tensors)):
        got = tuple(tensors[key].shape)
        if got != tuple(expected[key]):
            note = ""
            if key.endswith("mixer.x_proj.weight"):
                note = f" (rows = dt_rank {config.dt_rank} + 2 * d_state of the layer, from its A_log)"
            mismatched.append(f"{key}: expected shape {tuple(expected[key])}{note}, got {got}")
    if not (missing or unexpected or mismatched):
        return

    def _list(items: list[str]) -> str:
        more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
        return ", ".join(items[:_MAX_LISTED]) + more

    parts = []
    if missing:
        parts.append(f"missing keys: {_list(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_list(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatch: {'; '.join(mismatched[:_MAX_LISTED])}")
    raise CheckpointFormatError(f"{source}: weights do not match {config.describe()}: " + "; ".join(parts))


# ---------------------------------------------------------------------- masks
def parse_pruned_states(
    meta: Mapping[str, str], path: Path, default: str = "zero_transition"
) -> str | dict[str, str]:
    """The ``"pruned_states"`` metadata of a masks file: one mode for every mask or ``{name: mode}``
    (``default`` when absent)."""
    raw = meta.get("pruned_states")
    if raw is None:
        return default
    if raw in PRUNED_STATES_CHOICES:
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(
            f"{path}: metadata 'pruned_states' must be 'zero_transition', 'remove' or a JSON object "
            f"{{param name: mode}}, got {raw!r}"
        ) from exc
    if isinstance(value, str):
        value_map: str | dict[str, str] = value
    elif isinstance(value, dict):
        value_map = value
    else:
        raise CheckpointFormatError(
            f"{path}: metadata 'pruned_states' must be a string or JSON object, got {raw!r}"
        )
    modes = [value_map] if isinstance(value_map, str) else list(value_map.values())
    for mode in modes:
        if mode not in PRUNED_STATES_CHOICES:
            raise CheckpointFormatError(
                f"{path}: metadata 'pruned_states' holds {mode!r}; expected 'zero_transition' or 'remove'"
            )
    return value_map


def read_masks(path: Path, config: MambaLMConfig) -> dict[int, tuple[StateLayout, str]]:
    """Read ``sparsity.safetensors``: ``{layer index: (layout, pruned_states)}``.

    Keys must be ``backbone.layers.{i}.mixer.A_log`` of existing layers and masks must fit the
    layer (``(n,)`` or ``(d_inner, n)``); otherwise :class:`CheckpointFormatError` names them.
    """
    from ..sparsity.io import load_sparsities

    layouts, meta = load_sparsities(path)
    pruned = parse_pruned_states(meta, path)
    out: dict[int, tuple[StateLayout, str]] = {}
    bad = []
    for name, layout in layouts.items():
        m = _A_LOG_RE.match(name)
        if m is None or int(m.group(1)) >= config.n_layer:
            bad.append(name)
            continue
        i = int(m.group(1))
        n = config.layer_d_state(i)
        if layout.d_state != n or (layout.kind == "channel" and layout.d_inner != config.d_inner):
            raise CheckpointFormatError(
                f"{path}: mask {name!r} has shape {tuple(layout.mask.shape)}, expected ({n},) or "
                f"({config.d_inner}, {n}) for layer {i}"
            )
        mode = pruned if isinstance(pruned, str) else pruned.get(name, "zero_transition")
        out[i] = (layout, mode)
    if bad:
        raise CheckpointFormatError(
            f"{path}: mask keys {bad[:_MAX_LISTED]} do not name the A_log of a layer "
            f"(expected 'backbone.layers.{{i}}.mixer.A_log' with 0 <= i < {config.n_layer})"
        )
    if isinstance(pruned, dict):
        stray = sorted(set(pruned) - set(layouts))
        if stray:
            raise CheckpointFormatError(
                f"{path}: metadata 'pruned_states' names layers without a mask: {stray}"
            )
    return out


# ---------------------------------------------------------------------- write
def _cpu_contiguous(
    tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in tensors.items():
        t = v.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[k] = t.contiguous().clone()  # own storage: safetensors refuses shared tensors
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_hf_checkpoint(
    directory: str | os.PathLike,
    config: MambaLMConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    masks: Mapping[str, torch.Tensor | StateLayout] | None = None,
    pruned_states: Mapping[str, str] | None = None,
    head_masks: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ ``sparsity.safetensors``) in HF layout.

    Args:
        directory: output directory (created).
        config: written with its ``to_hf_dict()`` (:class:`MambaLMConfig` or
            :class:`~.mamba2_config.Mamba2LMConfig`).
        state_dict: HF-keyed tensors; ``lm_head.weight`` is dropped when the config ties it.
        dtype: cast floating tensors (default: keep).
        masks, pruned_states: state masks and modes keyed by the name of what they apply to
            (Mamba-1: ``backbone.layers.{i}.mixer.A_log``); written to ``sparsity.safetensors``
            with ``pruned_states`` as JSON metadata.
        head_masks: Mamba-2 head transition masks keyed by ``backbone.layers.{i}.mixer.A_log``,
            written to the same file (:func:`~sparsessm_kernels.sparsity.save_masks`). With no masks
            at all an existing ``sparsity.safetensors`` is deleted (it would describe other weights).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = dict(state_dict)
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    tensors = _cpu_contiguous(tensors, dtype)
    cfg = config.to_hf_dict()
    if dtype is not None:
        cfg["dtype"] = _dtype_name(dtype)

    from safetensors.torch import save_file

    with atomic_path(out / SAFETENSORS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomic(out / CONFIG_NAME, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_masks_file(out, masks, pruned_states, head_masks)


def write_masks_file(
    directory: Path,
    masks: Mapping[str, torch.Tensor | StateLayout] | None,
    pruned_states: Mapping[str, str] | None,
    head_masks: Mapping[str, torch.Tensor] | None,
) -> None:
    """``directory/sparsity.safetensors`` with the masks (see :func:`write_hf_checkpoint`); with no
    masks at all an existing file is deleted (it would describe other weights)."""
    sparsity = directory / SPARSITY_NAME
    if masks or head_masks:
        from ..sparsity.io import save_masks

        modes = dict(pruned_states or {})
        save_masks(
            sparsity,
            dict(masks or {}),
            metadata={"pruned_states": json.dumps(modes, sort_keys=True)},
            head_masks=head_masks,
        )
    elif sparsity.exists():
        sparsity.unlink()


def write_mamba_ssm_checkpoint(
    directory: str | os.PathLike,
    config: MambaLMConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    masks: Mapping[str, torch.Tensor | StateLayout] | None = None,
    pruned_states: Mapping[str, str] | None = None,
    head_masks: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write ``config.json`` + ``pytorch_model.bin`` as mamba_ssm's ``MambaLMHeadModel`` saves them
    (``config`` written with its ``to_mamba_ssm_dict()``), plus ``sparsity.safetensors`` for masks
    (as :func:`write_hf_checkpoint`).

    Keys use ``backbone.embedding.weight`` and always include ``lm_head.weight`` (mamba_ssm's strict
    ``load_state_dict`` expects it even when tied).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _cpu_contiguous(state_dict, dtype)
    if "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors["backbone.embeddings.weight"].clone()
    tensors["backbone.embedding.weight"] = tensors.pop("backbone.embeddings.weight")
    with atomic_path(out / BIN_NAME) as tmp:
        torch.save(tensors, str(tmp))
    write_text_atomic(out / CONFIG_NAME, json.dumps(config.to_mamba_ssm_dict(), indent=2) + "\n")
    write_masks_file(out, masks, pruned_states, head_masks)
