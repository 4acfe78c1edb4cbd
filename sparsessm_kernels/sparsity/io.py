"""Save and load state masks as safetensors files.

File layout: one bool tensor per masked parameter, keyed by the parameter name (e.g.
``"backbone.layers.0.mixer.A_log"``), shape ``(n,)`` (column mask) or ``(d, n)`` (per-channel
mask) -- the *state masks*. A file may also hold *head transition masks* (Mamba-2): bool
``(nheads,)`` of any length, one flag per head (True = the head keeps its transition). The
safetensors header metadata (``str -> str``) always holds

* ``"format"``: ``"sparsessm-masks"`` (identifies a masks file),
* ``"version"``: the ``sparsessm_kernels`` version that wrote it,
* ``"masks"``: JSON ``{name: {"pattern", "shape", "sparsity", "n_kept", "uniform"}}`` for state
  masks and ``{name: {"kind": "head_transition", "shape", "sparsity", "n_kept"}}`` for head
  transition masks,

plus whatever the caller passes (``pattern``, ``sparsity``, ``method``, calibration settings,
``pruned_states``, ... as strings, JSON-encoded where structured).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparsessm_kernels._io import atomic_path
from sparsessm_kernels._version import __version__
from sparsessm_kernels.ops.layout import StateLayout

from .state_sparsity import StateSparsity

__all__ = [
    "HEAD_TRANSITION_KIND",
    "MASKS_FORMAT",
    "MaskFileError",
    "head_mask_names",
    "load_masks",
    "load_sparsities",
    "save_masks",
]

MASKS_FORMAT = "sparsessm-masks"
"""Value of the ``"format"`` metadata key of a masks file."""

HEAD_TRANSITION_KIND = "head_transition"
"""``"kind"`` of a head transition mask in the ``"masks"`` metadata."""

RESERVED_KEYS = ("format", "version", "masks")
"""Metadata keys always written by :func:`save_masks` (caller values for them are replaced)."""


class MaskFileError(ValueError):
    """A file is not a readable, valid sparsessm masks file."""


def _mask_sparsity(name: str, value: torch.Tensor | StateLayout, pattern: str | None) -> StateSparsity:
    """Validate one mask for saving; ``pattern`` (the file-level one) is checked if given."""
    try:
        if isinstance(value, StateSparsity):
            return value if pattern is None else StateSparsity(value, pattern)
        return StateSparsity(value, pattern)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"masks[{name!r}]: {exc}") from exc


def _check_head_mask(name: str, mask: object) -> torch.Tensor:
    """A head transition mask: bool ``(nheads,)`` with ``nheads >= 1``."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"head_masks[{name!r}]: expected a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"head_masks[{name!r}]: expected dtype torch.bool (True = kept), got {mask.dtype}")
    if mask.dim() != 1 or mask.numel() < 1:
        raise ValueError(
            f"head_masks[{name!r}]: expected shape (nheads,) with nheads >= 1, got {tuple(mask.shape)}"
        )
    return mask


def _head_summary(mask: torch.Tensor) -> dict:
    kept = int(mask.sum())
    return {
        "kind": HEAD_TRANSITION_KIND,
        "shape": list(mask.shape),
        "sparsity": round(1.0 - kept / mask.numel(), 6),
        "n_kept": kept,
    }


def save_masks(
    path: str | os.PathLike,
    masks: Mapping[str, torch.Tensor | StateLayout],
    metadata: Mapping[str, str] | None = None,
    *,
    head_masks: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write state masks to a safetensors file, atomically.

    Args:
        path: output file (parent directories are created). Written via a temporary file that
            is renamed only on success, so an error never leaves a partial file behind and an
            existing file is left intact.
        masks: ``{parameter name: mask}``; each mask is a bool ``(n,)`` / ``(d, n)`` tensor or a
            :class:`StateLayout` / :class:`StateSparsity`. Masks are validated (bool, shape,
            ``n <= 256``). If ``metadata["pattern"]`` is given, every plain-tensor mask (and
            every :class:`StateSparsity`) is validated against that pattern; a ``"column"``
            ``(d, n)`` mask with identical rows is stored as ``(n,)``.
        metadata: extra ``str -> str`` header entries (``pattern``, ``sparsity``, ``method``,
            calibration settings, ``pruned_states``, ...). Values for the reserved keys
            ``format``, ``version`` and ``masks`` are replaced by freshly computed ones.
        head_masks: ``{parameter name: bool (nheads,)}`` head transition masks (Mamba-2, keyed by
            the ``A_log`` they apply to), any length; never checked against ``pattern``. Names
            must differ from those of ``masks``.

    Raises:
        TypeError: a key, value or metadata entry has the wrong type.
        ValueError: a mask is invalid or does not follow ``metadata["pattern"]``; a name is both
            a state mask and a head mask.
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks: expected a dict of name -> bool tensor, got {type(masks).__name__}")
    meta: dict[str, str] = {}
    for key, val in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise TypeError(
                f"metadata: expected str keys and str values (JSON-encode structured values), "
                f"got {key!r}: {type(val).__name__}"
            )
        if key not in RESERVED_KEYS:
            meta[key] = val
    pattern = meta.get("pattern")

    tensors: dict[str, torch.Tensor] = {}
    summary: dict[str, dict] = {}
    for name, value in masks.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"masks: expected non-empty str keys (parameter names), got {name!r}")
        sp = _mask_sparsity(name, value, pattern)
        # Own contiguous CPU copies: safetensors refuses shared or non-contiguous storage.
        tensors[name] = sp.mask.detach().to("cpu").contiguous().clone()
        summary[name] = sp.summary()
    if head_masks is not None and not isinstance(head_masks, Mapping):
        raise TypeError(
            f"head_masks: expected a dict of name -> bool tensor, got {type(head_masks).__name__}"
        )
    for name, value in (head_masks or {}).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"head_masks: expected non-empty str keys (parameter names), got {name!r}")
        if name in tensors:
            raise ValueError(f"head_masks: {name!r} is also a state mask; a name holds one mask")
        mask = _check_head_mask(name, value)
        tensors[name] = mask.detach().to("cpu").contiguous().clone()
        summary[name] = _head_summary(mask)
    meta["format"] = MASKS_FORMAT
    meta["version"] = __version__
    meta["masks"] = json.dumps(summary, sort_keys=True)

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _to_bool(name: str, tensor: torch.Tensor, path: Path) -> torch.Tensor:
    if tensor.dtype == torch.bool:
        return tensor
    if tensor.dtype == torch.uint8:
        bad = (tensor != 0) & (tensor != 1)
        if bool(bad.any()):
            value = int(tensor[bad][0])
            raise MaskFileError(
                f"{path}: mask {name!r} is uint8 but holds values other than 0/1 (found {value})"
            )
        return tensor.bool()
    raise MaskFileError(f"{path}: mask {name!r} must have dtype bool (or uint8 0/1), got {tensor.dtype}")


def _mask_summaries(metadata: Mapping[str, str], path: str | os.PathLike) -> dict:
    """The ``"masks"`` metadata as a dict (``{}`` when absent)."""
    try:
        per_mask = json.loads(metadata.get("masks", "{}"))
        if not isinstance(per_mask, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise MaskFileError(f"{path}: metadata 'masks' is not a valid JSON object ({exc})") from exc
    return per_mask


def head_mask_names(metadata: Mapping[str, str], path: str | os.PathLike = "masks file") -> set[str]:
    """Names of the head transition masks of a file, from the metadata :func:`load_masks` returns
    (``path`` names the file in the error raised for a malformed ``"masks"`` entry)."""
    per_mask = _mask_summaries(metadata, path)
    return {
        name
        for name, info in per_mask.items()
        if isinstance(info, dict) and info.get("kind") == HEAD_TRANSITION_KIND
    }


def load_masks(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by :func:`save_masks`.

    Args:
        path: the safetensors masks file.

    Returns:
        ``(masks, metadata)``: ``{parameter name: bool CPU tensor}`` -- state masks ``(n,)`` /
        ``(d, n)`` and head transition masks ``(nheads,)`` (:func:`head_mask_names` tells which)
        -- and the full ``str -> str`` header metadata (including ``format``, ``version`` and
        ``masks``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MaskFileError (a ValueError): the file is not valid safetensors, is not a masks file
            (no ``"format": "sparsessm-masks"`` metadata), or holds a mask that is not bool /
            0-1 uint8 or has an invalid shape.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"masks file not found: {p}")
    if not p.is_file():
        raise MaskFileError(f"{p}: not a file")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            raw = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # safetensors raises its own error types (SafetensorError, OSError, ...)
        raise MaskFileError(f"{p}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    fmt = metadata.get("format")
    if fmt != MASKS_FORMAT:
        found = "no 'format' metadata" if fmt is None else f"format {fmt!r}"
        raise MaskFileError(
            f"{p}: not a sparsessm masks file (expected metadata format {MASKS_FORMAT!r}, found {found})"
        )
    heads = head_mask_names(metadata, p)
    masks: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        mask = _to_bool(name, tensor, p)
        try:
            if name in heads:
                _check_head_mask(name, mask)
            else:
                StateSparsity(mask)
        except (TypeError, ValueError) as exc:
            raise MaskFileError(f"{p}: mask {name!r} is invalid: {exc}") from exc
        masks[name] = mask
    return masks, metadata


def load_sparsities(path: str | os.PathLike) -> tuple[dict[str, StateSparsity], dict[str, str]]:
    """Like :func:`load_masks` but returns validated :class:`StateSparsity` objects.

    Each mask is re-validated against the pattern recorded for it in the ``"masks"`` metadata
    (falling back to the file-level ``"pattern"``, then to the mask's kind). A file holding head
    transition masks raises :class:`MaskFileError` (they are no state masks).
    """
    masks, metadata = load_masks(path)
    per_mask = _mask_summaries(metadata, path)
    heads = sorted(head_mask_names(metadata, path))
    if heads:
        raise MaskFileError(
            f"{path}: holds Mamba-2 head transition masks {heads}, which are not state masks; read the "
            "file with load_masks (or load the model with Mamba2LM.from_pretrained)"
        )
    out: dict[str, StateSparsity] = {}
    for name, mask in masks.items():
        info = per_mask.get(name)
        pattern = info.get("pattern") if isinstance(info, dict) else None
        pattern = pattern or metadata.get("pattern")
        try:
            out[name] = StateSparsity(mask, pattern)
        except (TypeError, ValueError) as exc:
            raise MaskFileError(f"{path}: mask {name!r} does not follow pattern {pattern!r}: {exc}") from exc
    return out, metadata
