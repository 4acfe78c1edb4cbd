"""State masks of the Mamba-2 (SSD) ops.

In Mamba-2 ``A`` is one scalar per head and ``B`` / ``C`` are ``(b, l, ngroups, d_state)``, shared
by the ``nheads // ngroups`` heads of a group. A state mask therefore says which of the ``d_state``
columns of ``B`` / ``C`` each group (or each head) keeps:

* **per group**, bool ``(ngroups, d_state)``: what structured pruning of the ``B`` / ``C`` rows of
  ``in_proj`` gives (the heads of a group share the kept columns);
* **per head**, bool ``(nheads, d_state)``: every head keeps its own columns.

``True`` = kept. A per-head mask whose heads agree within every group is the per-group mask (the
backends then slice ``B`` / ``C`` once per group). :class:`SSDStateLayout` validates a mask once and
precomputes the index tables, reusing the Mamba-1 :class:`~sparsessm_kernels.ops.layout.StateLayout`
for them (its "channels" are the heads here).
"""

from __future__ import annotations

import torch

from ..layout import StateLayout, layout_once_per_mask, validate_state_mask


def _mask_shape_error(mask: torch.Tensor, nheads: int, ngroups: int, d_state: int) -> ValueError:
    return ValueError(
        f"state_mask: expected shape (ngroups, d_state) = ({ngroups}, {d_state}) (per group) or "
        f"(nheads, d_state) = ({nheads}, {d_state}) (per head), got {tuple(mask.shape)}"
    )


class SSDStateLayout:
    """A validated Mamba-2 state mask plus the index tables the backends consume.

    Args:
        state_mask: bool ``(ngroups, d_state)`` (per group) or ``(nheads, d_state)`` (per head),
            ``True`` = kept. A group or head may keep no state at all.
        nheads, ngroups: the layer's heads and ``B`` / ``C`` groups (``nheads % ngroups == 0``).

    Attributes:
        mask: the mask as given, contiguous. d_state, nheads, ngroups: sizes.
        head_mask: ``(nheads, d_state)`` bool, one row per head.
        group_mask: ``(ngroups, d_state)`` bool when every group's heads share their kept states
            (always for a per-group mask), else None.
        heads: :class:`StateLayout` of ``head_mask``: ``kept_idx`` ``(nheads, k_max)`` ascending,
            zero-padded past ``kept_count[h]``.
        groups: :class:`StateLayout` of ``group_mask`` (None when there is none).
        n_kept: ``k_max``, the most states any head keeps. uniform: every head keeps ``n_kept``
            states, so a compact ``(b, nheads, headdim, k)`` state is possible.
    """

    def __init__(self, state_mask: torch.Tensor, *, nheads: int, ngroups: int) -> None:
        if not isinstance(state_mask, torch.Tensor):
            raise TypeError(f"state_mask: expected a bool torch.Tensor, got {type(state_mask).__name__}")
        if ngroups < 1 or nheads % ngroups != 0:
            raise ValueError(f"ngroups: expected a divisor of nheads={nheads}, got {ngroups}")
        if state_mask.dtype == torch.bool and state_mask.dim() != 2:
            raise _mask_shape_error(
                state_mask, nheads, ngroups, state_mask.shape[-1] if state_mask.dim() else 0
            )
        validate_state_mask(state_mask)
        rows, n = state_mask.shape
        if rows not in (ngroups, nheads):
            raise _mask_shape_error(state_mask, nheads, ngroups, n)
        self.mask = state_mask.contiguous()
        self.d_state, self.nheads, self.ngroups = int(n), int(nheads), int(ngroups)
        per_group = rows == ngroups
        heads_per_group = nheads // ngroups
        self.head_mask = self.mask.repeat_interleave(heads_per_group, dim=0) if per_group else self.mask
        if per_group:
            self.group_mask: torch.Tensor | None = self.mask
        else:
            grouped = self.mask.view(ngroups, heads_per_group, n)
            shared = bool((grouped == grouped[:, :1]).all().item())
            self.group_mask = grouped[:, 0].contiguous() if shared else None
        self.heads = StateLayout(self.head_mask)
        self.groups = None if self.group_mask is None else StateLayout(self.group_mask)
        self.n_kept = self.heads.n_kept
        self.uniform = self.heads.uniform

    @property
    def device(self) -> torch.device:
        return self.mask.device

    @property
    def sparsity(self) -> float:
        """Fraction of pruned (head, state) pairs."""
        return self.heads.sparsity

    def check(self, nheads: int, ngroups: int, d_state: int) -> None:
        """Raise ``ValueError`` unless this layout was built for these sizes."""
        if (self.nheads, self.ngroups, self.d_state) != (nheads, ngroups, d_state):
            raise ValueError(
                f"state_mask: a layout built for nheads={self.nheads}, ngroups={self.ngroups}, "
                f"d_state={self.d_state} was given to a layer with nheads={nheads}, ngroups={ngroups}, "
                f"d_state={d_state}"
            )

    def kept_index(self, device: torch.device) -> torch.Tensor:
        """``(nheads, k_max)`` int64 kept state indices per head (padding entries 0) on ``device``."""
        return self.heads.to(device).kept_idx.long()

    def valid(self, device: torch.device) -> torch.Tensor:
        """``(nheads, k_max)`` bool: which slots of :meth:`kept_index` are real (not padding)."""
        heads = self.heads.to(device)
        return torch.arange(self.n_kept, device=device)[None, :] < heads.kept_count[:, None]

    # ------------------------------------------------------------------ state caches
    def compact_state(self, state: torch.Tensor) -> torch.Tensor:
        """Gather the kept states: ``(..., nheads, headdim, n)`` -> ``(..., nheads, headdim, k)``."""
        self._require_uniform("compact_state")
        if state.dim() < 3 or state.shape[-3] != self.nheads or state.shape[-1] != self.d_state:
            raise ValueError(
                f"state: expected shape (..., nheads, headdim, d_state) with nheads={self.nheads}, "
                f"d_state={self.d_state}, got {tuple(state.shape)}"
            )
        idx = self.kept_index(state.device)[:, None, :].expand(*state.shape[:-1], self.n_kept)
        return torch.gather(state, -1, idx)

    def expand_state(self, compact: torch.Tensor) -> torch.Tensor:
        """Scatter a compact state back: ``(..., nheads, headdim, k)`` -> ``(..., nheads, headdim, n)``,
        pruned entries 0."""
        self._require_uniform("expand_state")
        if compact.dim() < 3 or compact.shape[-3] != self.nheads or compact.shape[-1] != self.n_kept:
            raise ValueError(
                f"state: expected a compact state (..., nheads, headdim, k) with nheads={self.nheads}, "
                f"k={self.n_kept}, got {tuple(compact.shape)}"
            )
        idx = self.kept_index(compact.device)[:, None, :].expand(*compact.shape[:-1], self.n_kept)
        return compact.new_zeros(*compact.shape[:-1], self.d_state).scatter(-1, idx, compact)

    def _require_uniform(self, what: str) -> None:
        if not self.uniform:
            counts = self.heads.kept_count
            raise ValueError(
                f"{what}: a compact (b, nheads, headdim, k) state needs the same number of kept states in "
                f"every head; this mask keeps between {int(counts.min())} and {self.n_kept} states per head"
            )

    def __repr__(self) -> str:
        kind = "per-group" if self.mask.shape[0] == self.ngroups else "per-head"
        return (
            f"{type(self).__name__}({kind}, shape={tuple(self.mask.shape)}, nheads={self.nheads}, "
            f"n_kept={self.n_kept}, uniform={self.uniform}, sparsity={self.sparsity:.3f})"
        )


def compact_width(layout: SSDStateLayout | None) -> int | None:
    """``k`` of a compact state this layout allows (uniform masks), else None."""
    return layout.n_kept if layout is not None and layout.uniform else None


def as_ssd_layout(
    state_mask: torch.Tensor | SSDStateLayout | None, nheads: int, ngroups: int, d_state: int
) -> SSDStateLayout | None:
    """Turn the ``state_mask`` argument of the SSD ops into a validated :class:`SSDStateLayout`."""
    if state_mask is None:
        return None
    if isinstance(state_mask, SSDStateLayout):
        state_mask.check(nheads, ngroups, d_state)
        return state_mask
    is_bool = isinstance(state_mask, torch.Tensor) and state_mask.dtype == torch.bool
    if is_bool and (state_mask.dim() != 2 or state_mask.shape[1] != d_state):
        raise _mask_shape_error(state_mask, nheads, ngroups, d_state)
    if not isinstance(state_mask, torch.Tensor):
        return SSDStateLayout(state_mask, nheads=nheads, ngroups=ngroups)  # validates and raises
    build = lambda mask: SSDStateLayout(mask, nheads=nheads, ngroups=ngroups)  # noqa: E731
    return layout_once_per_mask(state_mask, build, ("ssd", nheads, ngroups))


def check_head_transition_mask(mask: object, nheads: int, device: torch.device) -> torch.Tensor | None:
    """``head_transition_mask``: None or bool ``(nheads,)`` (True = the head keeps its transition);
    returned on ``device`` (like a state mask, it may live on another device than the inputs)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"head_transition_mask: expected a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"head_transition_mask: expected dtype torch.bool (True = kept), got {mask.dtype}")
    if tuple(mask.shape) != (nheads,):
        raise ValueError(
            f"head_transition_mask: expected shape (nheads,) = ({nheads},), got {tuple(mask.shape)}"
        )
    return mask.to(device)
