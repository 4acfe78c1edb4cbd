"""Validated state masks with a sparsity pattern.

:class:`StateSparsity` extends :class:`~sparsessm_kernels.ops.layout.StateLayout` (the
kernel-ready index tables) with the *pattern* the mask was built for and checks that the mask
really follows it:

* ``"column"``: the same states are pruned in every channel, mask ``(n,)``. A ``(d, n)`` mask
  whose rows are all identical is accepted and converted to ``(n,)``.
* ``"unstructured"``: any ``(d, n)`` mask; a channel may keep no state at all.
* ``"N:M"`` (for example ``"2:4"``): ``(d, n)`` mask, ``n % M == 0``, and every group of ``M``
  consecutive states of every channel keeps exactly ``N``.

Since it is a :class:`StateLayout`, a :class:`StateSparsity` can be passed as ``state_mask``
wherever the ops accept a mask or a layout.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from sparsessm_kernels.ops.layout import StateLayout, validate_state_mask

__all__ = ["PATTERNS", "StateSparsity", "parse_pattern"]

PATTERNS = ("unstructured", "column", "N:M")
"""Pattern names understood by :func:`parse_pattern` (``"N:M"`` stands for e.g. ``"2:4"``)."""

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str | None) -> tuple[str | None, tuple[int, int] | None]:
    """Parse a pattern string.

    Args:
        pattern: ``None``, ``"unstructured"``, ``"column"`` or ``"N:M"`` with ``1 <= N <= M``
            (whitespace around the numbers is allowed).

    Returns:
        ``(canonical, nm)``: the canonical pattern string (``"2:4"`` for ``" 2 : 4 "``, ``None``
        for ``None``) and ``(N, M)`` for N:M patterns, else ``None``.

    Raises:
        ValueError: unknown pattern or invalid ``N``/``M``.
    """
    if pattern is None:
        return None, None
    if not isinstance(pattern, str):
        raise TypeError(
            f"pattern: expected None, 'unstructured', 'column' or an 'N:M' string, "
            f"got {type(pattern).__name__}"
        )
    p = pattern.strip().lower()
    if p in ("unstructured", "column"):
        return p, None
    match = _NM_RE.match(p)
    if match is None:
        raise ValueError(
            f"pattern: expected None, 'unstructured', 'column' or an 'N:M' string such as '2:4', "
            f"got {pattern!r}"
        )
    n_keep, m = int(match.group(1)), int(match.group(2))
    if m < 1 or not 1 <= n_keep <= m:
        raise ValueError(f"pattern: expected 'N:M' with 1 <= N <= M, got {pattern!r} (N={n_keep}, M={m})")
    return f"{n_keep}:{m}", (n_keep, m)


def _check_mask(mask: Any, name: str = "mask") -> torch.Tensor:
    """Type / dtype / shape checks shared by every pattern (same rules as :class:`StateLayout`)."""
    if isinstance(mask, StateLayout):
        mask = mask.mask
    return validate_state_mask(mask, name)


def _to_column(mask: torch.Tensor, name: str) -> torch.Tensor:
    """``(n,)`` stays; ``(d, n)`` with identical rows becomes ``(n,)``; else ValueError."""
    if mask.dim() == 1:
        return mask
    d = mask.shape[0]
    if d == 0:
        raise ValueError(
            f"{name}: pattern 'column' needs at least one channel, got shape {tuple(mask.shape)}"
        )
    differs = mask != mask[0:1]
    bad_rows = differs.any(dim=1)
    if bool(bad_rows.any()):
        row = int(torch.nonzero(bad_rows)[0, 0])
        state = int(torch.nonzero(differs[row])[0, 0])
        raise ValueError(
            f"{name}: pattern 'column' needs the same states kept in every channel, but channel {row} "
            f"differs from channel 0 at state {state} (mask shape {tuple(mask.shape)}); "
            f"use pattern 'unstructured' for a per-channel mask"
        )
    return mask[0].clone()


def _check_nm(mask: torch.Tensor, n_keep: int, m: int, name: str) -> None:
    """Raise ValueError unless every group of ``m`` consecutive states keeps exactly ``n_keep``."""
    pattern = f"{n_keep}:{m}"
    if mask.dim() != 2:
        raise ValueError(
            f"{name}: pattern {pattern!r} needs a (d, n) per-channel mask, got shape {tuple(mask.shape)}"
        )
    d, n = mask.shape
    if n % m != 0:
        raise ValueError(
            f"{name}: pattern {pattern!r} needs n divisible by M={m}, got n={n} (shape {tuple(mask.shape)})"
        )
    counts = mask.reshape(d, n // m, m).sum(dim=-1)
    bad = counts != n_keep
    if bool(bad.any()):
        channel, group = (int(v) for v in torch.nonzero(bad)[0])
        found = int(counts[channel, group])
        raise ValueError(
            f"{name}: pattern {pattern!r} needs exactly {n_keep} kept states in every group of {m} "
            f"consecutive states, but channel {channel}, group {group} "
            f"(states {group * m}..{group * m + m - 1}) keeps {found}"
        )


class StateSparsity(StateLayout):
    """A state mask validated against a sparsity pattern.

    Args:
        mask: bool tensor, ``(n,)`` (column mask) or ``(d, n)`` (per-channel mask), ``True`` =
            kept, ``n <= MAX_D_STATE`` (256). A :class:`StateLayout` is accepted too (its mask is
            used). A channel may keep no state at all.
        pattern: ``None`` (no check; the pattern is taken from the kind: ``"column"`` for
            ``(n,)``, ``"unstructured"`` for ``(d, n)``), ``"unstructured"`` (needs ``(d, n)``),
            ``"column"`` (``(n,)``, or ``(d, n)`` with identical rows, converted to ``(n,)``) or
            ``"N:M"`` such as ``"2:4"`` (``(d, n)``, ``n % M == 0``, exactly ``N`` kept states in
            every group of ``M`` consecutive states of every channel).

    Attributes:
        pattern: canonical pattern string (``"column"``, ``"unstructured"`` or e.g. ``"2:4"``).
        nm: ``(N, M)`` for N:M patterns, else ``None``.
        (plus every attribute of :class:`StateLayout`: ``mask``, ``kind``, ``kept_idx``, ...)

    Raises:
        TypeError: ``mask`` is not a bool tensor.
        ValueError: bad shape, ``n > 256``, or the mask does not follow ``pattern``.
    """

    pattern: str
    nm: tuple[int, int] | None

    def __init__(self, mask: torch.Tensor | StateLayout, pattern: str | None = None) -> None:
        name = "mask"
        if pattern is None and isinstance(mask, StateSparsity):
            pattern = mask.pattern
        mask = _check_mask(mask, name)
        canonical, nm = parse_pattern(pattern)
        if canonical is None:
            canonical = "column" if mask.dim() == 1 else "unstructured"
        elif canonical == "column":
            mask = _to_column(mask, name)
        elif canonical == "unstructured":
            if mask.dim() != 2:
                raise ValueError(
                    f"{name}: pattern 'unstructured' needs a (d, n) per-channel mask, got shape "
                    f"{tuple(mask.shape)}; use pattern 'column' for an (n,) mask"
                )
        else:
            assert nm is not None
            _check_nm(mask, nm[0], nm[1], name)
        super().__init__(mask)
        self.pattern = canonical
        self.nm = nm

    @classmethod
    def from_mask(cls, mask: torch.Tensor | StateLayout, pattern: str | None = None) -> StateSparsity:
        """Validate ``mask`` (``(n,)`` or ``(d, n)`` bool) against ``pattern``; see the class doc."""
        return cls(mask, pattern)

    def to(self, device: torch.device | str) -> StateSparsity:
        """This sparsity on ``device`` (cached); pattern and ``nm`` are kept."""
        out = super().to(device)
        assert isinstance(out, StateSparsity)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description: pattern, shape, sparsity, kept states."""
        out: dict[str, Any] = {
            "pattern": self.pattern,
            "shape": list(self.mask.shape),
            "sparsity": round(self.sparsity, 6),
            "n_kept": self.n_kept,
            "uniform": self.uniform,
        }
        return out

    def __repr__(self) -> str:
        return (
            f"StateSparsity(pattern={self.pattern!r}, shape={tuple(self.mask.shape)}, "
            f"n_kept={self.n_kept}, uniform={self.uniform}, sparsity={self.sparsity:.3f})"
        )
