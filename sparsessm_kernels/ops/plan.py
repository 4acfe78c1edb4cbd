"""The backend contract: what a call needs decided before any kernel runs, decided once.

A :class:`ScanPlan` holds the static part of a call of the selective scan or of the decode step:
the resolved backend, the mask's kind and index tables (on the call's device), ``k``, whether the
pruned states still feed through, the math dtype and the flags. Everything in it depends only on
the layer (its mask, ``pruned_states``, ``delta_softplus``) and the shape class of the call
(shapes, dtypes and devices of the tensors), so the public ops build it once per layer and shape
class and cache it (:class:`PlanCache`); the backends take the plan plus the per-call tensors
(:class:`ScanInputs`, :class:`StepInputs`). Only :mod:`.library` flattens a plan into the plain
arguments ``torch.library`` needs, and rebuilds it from them (:func:`build_plan`) on that path.

The mask kind, ``k`` and the feed-through rule are derived here and nowhere else.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from .dispatch import BACKEND_ENV

__all__ = [
    "MASK_CHANNEL",
    "MASK_COLUMN",
    "MASK_DENSE",
    "PlanCache",
    "ScanInputs",
    "ScanPlan",
    "StepInputs",
    "build_plan",
]

MASK_DENSE, MASK_COLUMN, MASK_CHANNEL = 0, 1, 2
"""Mask kinds: no mask, a ``(n,)`` column mask, a ``(d, n)`` per-channel mask (also the values of
the Triton kernels' ``MASK_KIND`` constant)."""


class ScanInputs(NamedTuple):
    """The per-call tensors of the scan. Shapes: u, delta, z ``(b, d, l)``; A ``(d, n)``; B, C
    ``(b, n, l)``, grouped ``(b, g, n, l)`` or time-invariant ``(d, n)``; D, delta_bias ``(d,)``."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    delta_bias: torch.Tensor | None


class StepInputs(NamedTuple):
    """The per-call tensors of the decode step. Shapes: state ``(b, d, n)``, compact ``(b, d, k)`` or
    ``(S, d, n or k)`` with ``state_batch_indices`` ``(b,)``; x, dt, z ``(b, d)``; A ``(d, n)``; B, C
    ``(b, n)`` or ``(b, g, n)``; D, dt_bias ``(d,)``."""

    state: torch.Tensor
    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    dt_bias: torch.Tensor | None
    state_batch_indices: torch.Tensor | None = None


class ScanPlan(NamedTuple):
    """The static work of a scan or step call (see the module docstring). A named tuple: cheap to
    build, and traced by ``torch.compile`` like any tuple.

    Attributes:
        backend: ``"torch"``, ``"triton"`` or ``"cuda"`` (resolved).
        pruned_states: ``"zero_transition"`` or ``"remove"``.
        softplus: softplus on ``delta + delta_bias`` (``dt + dt_bias`` in the step).
        return_last_state: the scan also returns its final state (False for the step).
        math_dtype: float32, or float64 when any input is float64.
        n: states per channel (``A.shape[1]``).
        mask_kind: :data:`MASK_DENSE`, :data:`MASK_COLUMN` or :data:`MASK_CHANNEL`.
        k: state slots per channel: ``n`` (dense), the kept count (column) or the largest kept
            count of a channel (per-channel).
        state_mask, kept_idx, kept_count: the layout's tables on the call's device (None when
            absent): bool ``(n,)`` / ``(d, n)``, int32 ``(k,)`` / ``(d, k)``, int32 ``(d,)``.
        pruned: some state is pruned (a per-channel mask is assumed to prune some state: knowing
            would take a device sync).
        feedthrough: pruned states still feed ``C * delta * B * u`` through (``zero_transition``
            and ``pruned``).
        time_segments: lanes per channel along ``l`` of the CUDA kernel: 0 lets the launcher
            choose (docs/cuda.md, "Choice of P"), else a power of two <= 128 (tests, benchmarks).
    """

    backend: str
    pruned_states: str
    softplus: bool
    return_last_state: bool
    math_dtype: torch.dtype
    n: int
    mask_kind: int
    k: int
    state_mask: torch.Tensor | None
    kept_idx: torch.Tensor | None
    kept_count: torch.Tensor | None
    pruned: bool
    feedthrough: bool
    time_segments: int = 0

    @property
    def zero_transition(self) -> bool:
        return self.pruned_states == "zero_transition"


def build_plan(
    backend: str,
    n: int,
    pruned_states: str,
    softplus: bool,
    dtype: torch.dtype,
    state_mask: torch.Tensor | None = None,
    kept_idx: torch.Tensor | None = None,
    kept_count: torch.Tensor | None = None,
    *,
    return_last_state: bool = False,
    time_segments: int = 0,
) -> ScanPlan:
    """A :class:`ScanPlan` from a layout's tables (arguments already validated)."""
    if state_mask is not None and kept_idx is None:
        raise ValueError("kept_idx: required with a state_mask (pass the tables of its StateLayout)")
    if state_mask is not None and state_mask.dim() == 2 and kept_count is None:
        raise ValueError("kept_count: required with a per-channel state_mask (d, n)")
    if state_mask is None:
        kind, k, kept_idx, kept_count = MASK_DENSE, n, None, None
    elif state_mask.dim() == 1:
        kind, k, kept_count = MASK_COLUMN, int(kept_idx.shape[0]), None
    else:
        kind, k = MASK_CHANNEL, int(kept_idx.shape[1])
    pruned = kind == MASK_CHANNEL or (kind == MASK_COLUMN and k < n)
    feedthrough = pruned and pruned_states == "zero_transition"
    return ScanPlan(
        backend, pruned_states, bool(softplus), bool(return_last_state), dtype, int(n), kind, k,
        state_mask, kept_idx, kept_count, pruned, feedthrough, int(time_segments),
    )  # fmt: skip


def plan_key(shapes: tuple | None, layout: object, *statics: object) -> tuple | None:
    """The cache key of a call: its shape class (``library.eager_shape_class``), its layout
    (``layout.cached_layout``) and the layer's statics (flags, then the backend; with
    ``backend="auto"`` also ``SPARSESSM_BACKEND``). None when the call is not plain eager or its
    layout is not known yet (``False``): then it is validated and planned anew."""
    if shapes is None or layout is False:
        return None
    env = os.environ.get(BACKEND_ENV) if statics[-1] == "auto" else None
    return (shapes, layout, env, *statics)


class PlanCache:
    """Plans by ``(layer statics, shape class)``; bounded (cleared when full: shape classes are few)."""

    def __init__(self, size: int = 512) -> None:
        self._plans: dict[tuple, ScanPlan] = {}
        self._size = size

    def get(self, key: tuple) -> ScanPlan | None:
        return self._plans.get(key)

    def put(self, key: tuple, plan: ScanPlan) -> ScanPlan:
        if len(self._plans) >= self._size:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def clear(self) -> None:
        self._plans.clear()
