"""Build state masks from importance scores.

Conventions shared by every builder:

* **Higher score = more important = kept.** The builders keep the highest scores and prune
  the lowest ones; a mask entry is ``True`` for a kept state.
* **Ties are broken deterministically by position**: among equal scores, the one with the
  lower index is kept (row-major order for the global ``unstructured_mask``: lower channel
  first, then lower state index). The results do not depend on the device or on sort
  implementation details (stable sorts are used).
* **Counts are rounded to the nearest integer**, halves rounded up:
  ``kept = floor((1 - sparsity) * total + 0.5)``. So ``sparsity=0.5`` on 10 entries keeps 5,
  ``sparsity=0.25`` on 10 entries keeps 8 (7.5 rounded up). The achieved sparsity can thus
  differ from the requested one by at most half an entry. A ``sparsity`` close to 1 may keep
  nothing at all (valid: a channel may keep no state).
* Scores must be a real floating-point tensor without NaN; ``+-inf`` is allowed. The mask is
  returned on the device of ``scores``.
"""

from __future__ import annotations

import math
import numbers

import torch

from .state_sparsity import StateSparsity, parse_pattern

__all__ = ["build_sparsity", "column_mask", "kept_count", "nm_mask", "unstructured_mask"]


def _check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1), got {type(sparsity).__name__}")
    value = float(sparsity)
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{name}: expected a float in [0, 1) (fraction of pruned states), got {sparsity!r}")
    return value


def _check_scores(scores: torch.Tensor, dims: tuple[int, ...], name: str = "scores") -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name}: expected a floating-point torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point dtype, got {scores.dtype}")
    if scores.dim() not in dims:
        expected = " or ".join({1: "(n,)", 2: "(d, n)"}[k] for k in dims)
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(scores.shape)}")
    if scores.shape[-1] < 1:
        raise ValueError(f"{name}: expected at least one state (n >= 1), got shape {tuple(scores.shape)}")
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"{name}: contains NaN; scores must be comparable (higher = more important)")
    return scores


def kept_count(total: int, sparsity: float) -> int:
    """Number of entries kept out of ``total`` at ``sparsity``: ``floor((1 - sparsity) * total + 0.5)``."""
    sparsity = _check_sparsity(sparsity)
    return min(total, max(0, math.floor((1.0 - sparsity) * total + 0.5)))


def _top_mask_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask over a 1-D tensor keeping the ``k`` highest scores (ties: lower index wins)."""
    flat = scores.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    mask[order[:k]] = True
    return mask


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the globally highest-scoring ``(1 - sparsity)`` fraction of a layer's states.

    Args:
        scores: ``(d, n)`` floating-point importance scores (higher = kept).
        sparsity: fraction of pruned states, in ``[0, 1)``. The kept count is
            ``floor((1 - sparsity) * d * n + 0.5)`` (nearest, halves up).

    Returns:
        ``(d, n)`` bool mask, ``True`` = kept. Channels may end up with no kept state. Ties are
        broken in row-major order (lower channel, then lower state, is kept).
    """
    scores = _check_scores(scores, (2,))
    k = kept_count(scores.numel(), sparsity)
    return _top_mask_flat(scores, k).reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n_keep: int = 2, m: int = 4) -> torch.Tensor:
    """N:M mask along the state axis: keep the ``n_keep`` best of every ``m`` consecutive states.

    Args:
        scores: ``(d, n)`` floating-point importance scores (higher = kept), ``n % m == 0``.
        n_keep: states kept per group, ``1 <= n_keep <= m``.
        m: group size (consecutive states of one channel), ``m >= 1``.

    Returns:
        ``(d, n)`` bool mask with exactly ``n_keep`` ``True`` in every group
        ``[g*m, (g+1)*m)`` of every channel. Ties: the lower state index is kept.
    """
    for name, value in (("n_keep", n_keep), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    n_keep, m = int(n_keep), int(m)
    if m < 1 or not 1 <= n_keep <= m:
        raise ValueError(f"n_keep, m: expected 1 <= n_keep <= m, got n_keep={n_keep}, m={m}")
    scores = _check_scores(scores, (2,))
    d, n = scores.shape
    if n % m != 0:
        raise ValueError(f"scores: N:M needs n divisible by m={m}, got n={n} (shape {tuple(scores.shape)})")
    groups = scores.reshape(d, n // m, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, order[..., :n_keep], True)
    return mask.reshape(d, n)


def column_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Column mask: prune the same states in every channel.

    Args:
        scores: ``(n,)`` per-state scores, or ``(d, n)`` per-(channel, state) scores which are
            summed over channels (in float64) first. Higher = kept.
        sparsity: fraction of pruned states, in ``[0, 1)``; kept count
            ``floor((1 - sparsity) * n + 0.5)``.

    Returns:
        ``(n,)`` bool mask, ``True`` = kept. Ties: the lower state index is kept.
    """
    scores = _check_scores(scores, (1, 2))
    if scores.dim() == 2:
        scores = scores.double().sum(dim=0)
    k = kept_count(scores.numel(), sparsity)
    return _top_mask_flat(scores, k)


def build_sparsity(scores: torch.Tensor, pattern: str, sparsity: float | None = None) -> StateSparsity:
    """Build a validated :class:`StateSparsity` for ``pattern`` from ``scores``.

    Args:
        scores: ``(d, n)`` scores (``(n,)`` is accepted for ``"column"``). Higher = kept.
        pattern: ``"unstructured"``, ``"column"`` or ``"N:M"`` (e.g. ``"2:4"``).
        sparsity: required for ``"unstructured"`` / ``"column"``; for ``"N:M"`` it is implied
            (``1 - N/M``) and may be omitted, but if given it must equal ``1 - N/M``.
    """
    canonical, nm = parse_pattern(pattern)
    if canonical is None:
        raise ValueError("pattern: expected 'unstructured', 'column' or an 'N:M' string, got None")
    if nm is not None:
        implied = 1.0 - nm[0] / nm[1]
        if sparsity is not None and abs(_check_sparsity(sparsity) - implied) > 1e-9:
            raise ValueError(
                f"sparsity: pattern {canonical!r} implies sparsity {implied:g}, got {sparsity!r} "
                f"(omit sparsity for N:M patterns)"
            )
        return StateSparsity(nm_mask(scores, nm[0], nm[1]), canonical)
    if sparsity is None:
        raise ValueError(f"sparsity: required for pattern {canonical!r}, got None")
    if canonical == "column":
        return StateSparsity(column_mask(scores, sparsity), "column")
    return StateSparsity(unstructured_mask(scores, sparsity), "unstructured")
