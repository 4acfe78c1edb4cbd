"""Kernel-ready layout of a state mask.

A state mask says which SSM states ``(channel d, state n)`` of a Mamba layer are kept
(``True``) and which are pruned (``False``). Kernels do not want a boolean mask: they want,
for every channel, the ascending list of kept state indices, so that pruned states cost no
work. :class:`StateLayout` validates a mask once and precomputes that table; it lives in
``ops`` because every backend consumes it, while the richer
:class:`sparsessm_kernels.sparsity.StateSparsity` (N:M validation, metadata, builders)
extends it one layer up.

Two kinds of masks exist:

* **column** mask, shape ``(n,)``: the same states are pruned in every channel.
  ``kept_idx`` has shape ``(k,)``.
* **channel** mask, shape ``(d, n)``: unstructured or N:M along ``n``.
  ``kept_idx`` has shape ``(d, k_max)``; row ``d`` holds the ``kept_count[d]`` kept indices in
  ascending order followed by padding zeros that kernels must ignore.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

MAX_D_STATE = 256
"""Largest state dimension the kernels support (``n <= 256``)."""

PRUNED_STATES_CHOICES = ("zero_transition", "remove")


def check_pruned_states(pruned_states: str) -> str:
    """Validate the ``pruned_states`` keyword and return it."""
    if pruned_states not in PRUNED_STATES_CHOICES:
        raise ValueError(f"pruned_states: expected one of {PRUNED_STATES_CHOICES}, got {pruned_states!r}")
    return pruned_states


def validate_state_mask(mask: object, name: str = "state_mask") -> torch.Tensor:
    """Check that ``mask`` is a bool ``(n,)`` or ``(d, n)`` tensor with ``1 <= n <= 256``; return it."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected dtype torch.bool (True = kept), got {mask.dtype}")
    if mask.dim() not in (1, 2):
        raise ValueError(
            f"{name}: expected shape (n,) for a column mask or (d, n) for a per-channel mask, "
            f"got shape {tuple(mask.shape)}"
        )
    n = mask.shape[-1]
    if not 1 <= n <= MAX_D_STATE:
        raise ValueError(
            f"{name}: expected 1 <= n <= {MAX_D_STATE} states, got n={n} (shape {tuple(mask.shape)})"
        )
    return mask


class StateLayout:
    """A validated state mask plus the index tables kernels consume.

    Args:
        mask: bool tensor, ``(n,)`` for a column mask or ``(d, n)`` for a per-channel mask.
            ``True`` marks a kept state. A channel may keep no state at all (valid: it then
            only has the zero-transition feed-through, or nothing under ``remove``).

    Attributes:
        mask: the bool mask (``(n,)`` or ``(d, n)``), contiguous.
        kind: ``"column"`` or ``"channel"``.
        d_state: ``n``.
        d_inner: ``d`` for channel masks, ``None`` for column masks.
        kept_idx: int32, ``(k,)`` (column) or ``(d, k_max)`` (channel), ascending, zero-padded.
        kept_count: int32 ``(d,)`` kept states per channel (channel masks), ``None`` for column.
        n_kept: ``k`` (column) or ``k_max`` (channel).
        uniform: every channel keeps the same number of states, so a compact
            ``(b, d, k)`` state cache is possible.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        n = validate_state_mask(mask).shape[-1]
        self.mask = mask.contiguous()
        self.d_state = int(n)
        self._per_device: dict[torch.device, StateLayout] = {}
        if mask.dim() == 1:
            self.kind = "column"
            self.d_inner: int | None = None
            self.kept_idx = torch.nonzero(mask).flatten().to(torch.int32)
            self.kept_count: torch.Tensor | None = None
            self.n_kept = int(self.kept_idx.numel())
            self.uniform = True
        else:
            self.kind = "channel"
            self.d_inner = int(mask.shape[0])
            counts = mask.sum(dim=1)
            self.n_kept = int(counts.max().item()) if counts.numel() else 0
            # Stable descending sort of the bool rows puts kept indices first, in ascending order.
            order = torch.sort(mask.to(torch.uint8), dim=1, descending=True, stable=True).indices
            kept = order[:, : self.n_kept]
            valid = torch.arange(self.n_kept, device=mask.device)[None, :] < counts[:, None]
            self.kept_idx = torch.where(valid, kept, torch.zeros_like(kept)).to(torch.int32).contiguous()
            self.kept_count = counts.to(torch.int32)
            self.uniform = bool((counts == self.n_kept).all().item()) if counts.numel() else True

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.mask.device

    @property
    def sparsity(self) -> float:
        """Fraction of pruned states."""
        return 1.0 - float(self.mask.float().mean().item())

    def channel_mask(self, d_inner: int) -> torch.Tensor:
        """The mask as a ``(d, n)`` bool tensor (a column mask is broadcast to ``d`` rows)."""
        if self.kind == "column":
            return self.mask[None, :].expand(d_inner, self.d_state)
        self.check_d_inner(d_inner)
        return self.mask

    def channel_kept_idx(self, d_inner: int) -> torch.Tensor:
        """Kept indices as a ``(d, k)`` int64 tensor (padding entries are 0)."""
        if self.kind == "column":
            return self.kept_idx.long()[None, :].expand(d_inner, self.n_kept)
        self.check_d_inner(d_inner)
        return self.kept_idx.long()

    def check_d_inner(self, d_inner: int, name: str = "state_mask") -> None:
        if self.kind == "channel" and self.d_inner != d_inner:
            raise ValueError(
                f"{name}: per-channel mask has d={self.d_inner} rows but the layer has d={d_inner} channels"
            )

    def to(self, device: torch.device | str) -> StateLayout:
        """This layout on ``device`` (cached, so repeated calls cost nothing)."""
        device = torch.device(device)
        if device == self.device or (device.type == self.device.type and device.index is None):
            return self
        cached = self._per_device.get(device)
        if cached is None:
            cached = StateLayout.__new__(type(self))
            cached.__dict__.update(self.__dict__)
            cached.mask = self.mask.to(device)
            cached.kept_idx = self.kept_idx.to(device)
            cached.kept_count = None if self.kept_count is None else self.kept_count.to(device)
            cached._per_device = {}
            self._per_device[device] = cached
        return cached

    # ------------------------------------------------------------------ state caches
    def compact_state(self, state: torch.Tensor) -> torch.Tensor:
        """Gather the kept states: ``(..., d, n)`` -> ``(..., d, k)`` (uniform masks only)."""
        self._require_uniform("compact_state")
        if state.shape[-1] != self.d_state:
            raise ValueError(
                f"state: expected last dimension n={self.d_state}, got shape {tuple(state.shape)}"
            )
        idx = self.channel_kept_idx(state.shape[-2]).to(state.device)
        return torch.gather(state, -1, idx.expand(*state.shape[:-1], self.n_kept))

    def expand_state(self, compact: torch.Tensor) -> torch.Tensor:
        """Scatter a compact state back: ``(..., d, k)`` -> ``(..., d, n)``, pruned entries 0."""
        self._require_uniform("expand_state")
        if compact.shape[-1] != self.n_kept:
            raise ValueError(
                f"state: expected a compact state with last dimension k={self.n_kept}, "
                f"got shape {tuple(compact.shape)}"
            )
        idx = self.channel_kept_idx(compact.shape[-2]).to(compact.device)
        full = compact.new_zeros(*compact.shape[:-1], self.d_state)
        return full.scatter(-1, idx.expand(*compact.shape[:-1], self.n_kept), compact)

    def _require_uniform(self, what: str) -> None:
        if not self.uniform:
            raise ValueError(
                f"{what}: a compact (b, d, k) state needs the same number of kept states in every "
                f"channel (column or N:M masks); this mask keeps between "
                f"{int(self.kept_count.min())} and {self.n_kept} states per channel"
            )

    def __repr__(self) -> str:
        shape = tuple(self.mask.shape)
        return (
            f"{type(self).__name__}(kind={self.kind!r}, shape={shape}, n_kept={self.n_kept}, "
            f"uniform={self.uniform}, sparsity={self.sparsity:.3f})"
        )


# Layouts of raw masks passed to the ops, keyed by the mask tensor's identity: (a weak reference
# to the mask, its version counter when the layout was built, the layout). An entry is dropped when
# its mask is freed; an in-place change of the mask bumps its version, so the layout is rebuilt.
_RAW_MASK_LAYOUTS: dict[tuple[int, tuple], tuple[weakref.ref, int, Any]] = {}
"""Layouts built from raw mask tensors: ``(id(mask), shape class) -> (weakref, version, layout)``."""


def _forget_mask(key: tuple[int, tuple], ref: weakref.ref) -> None:
    entry = _RAW_MASK_LAYOUTS.get(key)
    if entry is not None and entry[0] is ref:  # not a newer mask that reuses the same id
        del _RAW_MASK_LAYOUTS[key]


def layout_once_per_mask(
    mask: torch.Tensor, build: Callable[[torch.Tensor], Any], shape_class: tuple = ()
) -> Any:
    """``build(mask)`` once per raw mask tensor (and per in-place change), per ``shape_class``.

    Building a layout validates the mask and reads numbers back to the host (e.g. ``k``): a device
    sync for a CUDA mask. Cached, a mask passed on every call costs that once, not per call. The
    layout is built from a copy, so the cache holds no reference to the mask (it can be freed; its
    entry goes with it). Under ``torch.compile`` the layout is built inline.
    """
    if torch.compiler.is_compiling():
        return build(mask)
    key = (id(mask), shape_class)
    entry = _RAW_MASK_LAYOUTS.get(key)
    if entry is not None and entry[0]() is mask and entry[1] == mask._version:
        return entry[2]
    layout = build(mask.detach().clone())
    ref = weakref.ref(mask, lambda r, key=key: _forget_mask(key, r))
    _RAW_MASK_LAYOUTS[key] = (ref, mask._version, layout)
    return layout


def _layout_of_raw_mask(mask: object) -> StateLayout:
    """The :class:`StateLayout` of a raw mask tensor, built once per mask (:func:`layout_once_per_mask`)."""
    if not isinstance(mask, torch.Tensor):
        return StateLayout(mask)  # type: ignore[arg-type]  (validates and raises on bad input)
    return layout_once_per_mask(mask, StateLayout)


def layout_of(state_mask: torch.Tensor | StateLayout | None) -> StateLayout | None:
    """The layout of the ``state_mask`` argument (a raw mask's cached one), not yet checked against
    the layer's ``d`` and ``n`` (:func:`as_layout` does that)."""
    if state_mask is None or isinstance(state_mask, StateLayout):
        return state_mask
    return _layout_of_raw_mask(state_mask)


def cached_layout(state_mask: object) -> StateLayout | bool | None:
    """The layout of ``state_mask`` when it is known without building anything: None (dense), a
    prebuilt layout, or the cached layout of a raw mask seen before (same tensor, same version).
    ``False`` otherwise (a new or changed raw mask, or not a mask at all): the caller validates."""
    if state_mask is None or isinstance(state_mask, StateLayout):
        return state_mask
    if not isinstance(state_mask, torch.Tensor):
        return False
    entry = _RAW_MASK_LAYOUTS.get((id(state_mask), ()))
    if entry is not None and entry[0]() is state_mask and entry[1] == state_mask._version:
        return entry[2]
    return False


def as_layout(
    state_mask: torch.Tensor | StateLayout | None, d_inner: int, d_state: int
) -> StateLayout | None:
    """Turn the ``state_mask`` argument of the ops into a validated :class:`StateLayout`.

    Args:
        state_mask: ``None`` (dense), a bool ``(n,)`` / ``(d, n)`` tensor, or a prebuilt layout
            (for example a :class:`~sparsessm_kernels.sparsity.StateSparsity`).
        d_inner: ``d`` of the layer.
        d_state: ``n`` of the layer (``A.shape[1]``).
    """
    layout = layout_of(state_mask)
    if layout is None:
        return None
    if layout.d_state != d_state:
        raise ValueError(
            f"state_mask: expected {d_state} states (A has shape (d, {d_state})), "
            f"got a mask of shape {tuple(layout.mask.shape)}"
        )
    layout.check_d_inner(d_inner)
    return layout
