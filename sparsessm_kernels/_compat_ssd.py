"""The Mamba-2 half of :mod:`sparsessm_kernels.compat`: ``mamba_chunk_scan_combined`` and the
multi-head layout of ``selective_state_update``, with mamba_ssm 2.x's signatures.

Layering: imports only :mod:`sparsessm_kernels.ops`.
"""

from __future__ import annotations

import torch

from .ops import SSDStateLayout, StateLayout, ssd_scan, ssd_state_update
from .ops import selective_state_update as _selective_state_update

INF = float("inf")
_SSDMaskArg = torch.Tensor | SSDStateLayout | None


def mamba_chunk_scan_combined(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, INF),
    return_final_states: bool = False,
    return_varlen_states: bool = False,
    state_dtype: torch.dtype | None = None,
    *,
    state_mask: _SSDMaskArg = None,
    pruned_states: str = "remove",
    head_transition_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """mamba_ssm's ``mamba_chunk_scan_combined`` (forward), run by :func:`sparsessm_kernels.ssd_scan`.

    Args:
        x: ``(batch, seqlen, nheads, headdim)``. dt: ``(batch, seqlen, nheads)``. A: ``(nheads,)``
            float32. B, C: ``(batch, seqlen, ngroups, dstate)``. chunk_size: timesteps per chunk.
        D: ``(nheads, headdim)`` or ``(nheads,)``. z: ``(batch, seqlen, nheads, headdim)``:
            ``out * silu(z)``. dt_bias: ``(nheads,)``. initial_states: ``(batch, nheads, headdim,
            dstate)``. seq_idx: ``(batch, seqlen)`` int, non-decreasing.
        cu_seqlens: only read by mamba_ssm when ``return_varlen_states``; ignored otherwise, as there.
        return_varlen_states: not supported (``ValueError``): per-sequence final states of a
            packed batch; pack with ``seq_idx`` and scan each sequence's last chunk instead.
        state_dtype: dtype of the returned final states (default ``C.dtype``, as mamba_ssm).
        state_mask, pruned_states, head_transition_mask, backend: as :func:`sparsessm_kernels.ssd_scan`.

    Returns:
        ``out`` ``(batch, seqlen, nheads, headdim)`` in ``x.dtype``, or ``(out, final_states)`` with
        ``return_final_states`` (final states ``(batch, nheads, headdim, dstate)``).
    """
    if return_varlen_states:
        raise ValueError(
            "return_varlen_states: per-sequence final states of a cu_seqlens-packed batch are not supported "
            "by sparsessm_kernels; got return_varlen_states=True (scan the sequences separately, or pack "
            "them with seq_idx and return_final_states)"
        )
    result = ssd_scan(
        x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_states, return_final_states,
        seq_idx=seq_idx, state_mask=state_mask, pruned_states=pruned_states,
        head_transition_mask=head_transition_mask, chunk_size=chunk_size, backend=backend,
    )  # fmt: skip
    if not return_final_states:
        return result
    out, final_states = result
    return out, final_states.to(state_dtype if state_dtype is not None else C.dtype)


def _tied(t: torch.Tensor | None, dims: tuple[int, ...]) -> bool:
    """Whether ``t`` is broadcast (stride 0, or size 1) along ``dims``: mamba_ssm's tied head dims."""
    return t is None or all(t.shape[d] == 1 or t.stride(d) == 0 for d in dims)


def _check_multi_head(state, x, dt, A, B, C, D, z, dt_bias) -> tuple[int, int, int]:
    """Shapes of mamba_ssm's multi-head step; return ``(batch, nheads, headdim)``."""
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(
            "x: expected shape (batch, nheads, dim) with a multi-head state (batch, nheads, dim, dstate) "
            f"= {tuple(state.shape)}, got {tuple(x.shape)}"
        )
    b, h, p = x.shape
    expected = {"dt": (dt, (b, h, p)), "z": (z, (b, h, p)), "D": (D, (h, p)), "dt_bias": (dt_bias, (h, p))}
    for name, (t, want) in expected.items():
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"{name}: expected shape {want} (multi-head layout), got {tuple(t.shape)}")
    if A.dim() != 3 or A.shape[:2] != (h, p):
        raise ValueError(
            f"A: expected shape (nheads, dim, dstate) = {(h, p, 'dstate')}, got {tuple(A.shape)}"
        )
    return b, h, p


def multi_head_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    state_batch_indices: torch.Tensor | None,
    *,
    state_mask: torch.Tensor | StateLayout | SSDStateLayout | None,
    pruned_states: str | None,
    head_transition_mask: torch.Tensor | None,
    backend: str,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """mamba_ssm's ``selective_state_update`` on the multi-head layout (``state (b, nheads, dim, n)``).

    **Tied** inputs -- ``A (nheads, dim, n)`` and ``dt (b, nheads, dim)`` (and ``dt_bias``) broadcast
    over ``dim`` and ``n``, as the Mamba2 module and transformers pass them -- are a Mamba-2 step:
    :func:`sparsessm_kernels.ssd_state_update` with ``A[:, 0, 0]``, ``dt[..., 0]``, no ``dt`` clamp
    (mamba_ssm's step has none), SSD masks (``(ngroups, n)`` / ``(nheads, n)``, default
    ``pruned_states="remove"``) and ``head_transition_mask``.
    **Untied** inputs (a full ``A (nheads, dim, n)``) are a Mamba-1 step on ``nheads * dim`` channels:
    :func:`sparsessm_kernels.selective_state_update` with Mamba-1 masks (``(n,)`` / ``(nheads * dim,
    n)``, default ``"zero_transition"``); ``head_transition_mask`` needs the tied form.
    ``pad_slot_id`` and ``out`` (``(b, nheads, dim)``) as in both ops.
    """
    # (batch, dstate): one group, as mamba_ssm
    B = B.unsqueeze(1) if isinstance(B, torch.Tensor) and B.dim() == 2 else B
    C = C.unsqueeze(1) if isinstance(C, torch.Tensor) and C.dim() == 2 else C
    b, h, p = _check_multi_head(state, x, dt, A, B, C, D, z, dt_bias)
    extra = {} if pruned_states is None else {"pruned_states": pruned_states}
    if _tied(A, (1, 2)) and _tied(dt, (2,)) and _tied(dt_bias, (1,)):
        return ssd_state_update(
            state, x, dt[..., 0], A[:, 0, 0], B, C, D, z, None if dt_bias is None else dt_bias[:, 0],
            dt_softplus, dt_limit=(-INF, INF), state_mask=state_mask,
            head_transition_mask=head_transition_mask, backend=backend,
            state_batch_indices=state_batch_indices, pad_slot_id=pad_slot_id, out=out, **extra,
        )  # fmt: skip
    if head_transition_mask is not None:
        raise ValueError(
            "head_transition_mask: needs the tied multi-head form (A (nheads, dim, dstate) and dt broadcast "
            "over dim and dstate, as the Mamba2 module passes them); these inputs have a full A "
            f"{tuple(A.shape)} with strides {A.stride()}, a Mamba-1 step in head layout"
        )
    rows, k = state.shape[0], state.shape[-1]
    viewable = _viewable(state)
    flat = state.view(rows, h * p, k) if viewable else state.reshape(rows, h * p, k)
    y = _selective_state_update(
        flat, x.reshape(b, h * p), dt.reshape(b, h * p), A.reshape(h * p, A.shape[-1]), B, C,
        None if D is None else D.reshape(h * p), None if z is None else z.reshape(b, h * p),
        None if dt_bias is None else dt_bias.reshape(h * p), dt_softplus,
        state_mask=state_mask, backend=backend, state_batch_indices=state_batch_indices,
        pad_slot_id=pad_slot_id, **extra,
    )  # fmt: skip
    if not viewable:  # the update went to a copy
        state.copy_(flat.view(state.shape))
    return y.view(b, h, p) if out is None else out.copy_(y.view(b, h, p))


def _viewable(state: torch.Tensor) -> bool:
    """Whether ``state (rows, h, p, k)`` can be viewed as ``(rows, h * p, k)`` without a copy."""
    return state.shape[1] == 1 or state.stride(1) == state.stride(2) * state.shape[2]
