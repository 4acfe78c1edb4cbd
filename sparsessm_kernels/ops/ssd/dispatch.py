"""Public Mamba-2 (SSD) ops: validate, pick a backend, run it.

Backends with SSD kernels: ``"torch"`` (:mod:`.torch_backend`, any device, differentiable) and
``"triton"`` (:mod:`.triton_scan`, :mod:`.triton_step`: forward-only kernels for CUDA tensors, or
CPU tensors under Triton's interpreter, ``TRITON_INTERPRET=1``, for testing). ``"auto"`` (the
default; ``SPARSESSM_BACKEND`` overrides it as for the Mamba-1 ops) picks triton for CUDA tensors
when it is usable and no gradient is needed (and not while ``torch.compile`` traces), else torch
-- saying once through the ``sparsessm_kernels`` logger when the slow PyTorch path runs on CUDA
tensors. ``"cuda"`` raises
:class:`~sparsessm_kernels.ops.dispatch.BackendUnavailableError`: the CUDA extension has no SSD
kernel. Semantics: ``docs/semantics.md``, section "Mamba-2 (SSD)".
"""

from __future__ import annotations

import os

import torch

from ..checks import check_pad_slot_id
from ..dispatch import BACKENDS, BackendUnavailableError, _statuses, _triton_probe, _warn_once
from ..layout import check_pruned_states
from ..library import needs_grad
from .checks import (
    check_chunk_size,
    check_dt_limit,
    check_ssd_out,
    check_ssd_scan_inputs,
    check_ssd_state,
    check_ssd_step_inputs,
)
from .layout import SSDStateLayout, as_ssd_layout, check_head_transition_mask, compact_width
from .torch_backend import ssd_scan_torch, ssd_state_update_torch

INF = float("inf")
DEFAULT_CHUNK_SIZE = 64
"""Timesteps per chunk of the chunked scan (results do not depend on it beyond rounding)."""

SSD_BACKENDS = ("torch", "triton")
"""The backends that have SSD kernels."""


def resolve_ssd_backend(backend: str, device: torch.device, op: str, grad: bool = False) -> str:
    """The backend (``"torch"`` or ``"triton"``) that runs the SSD op ``op`` for tensors on
    ``device``; ``grad``: autograd will record the call (only the torch backend differentiates)."""
    from_env = backend == "auto"
    if from_env:
        backend = os.environ.get("SPARSESSM_BACKEND", "auto") or "auto"
    source = " (from SPARSESSM_BACKEND)" if from_env else ""
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend: expected one of {('auto', *BACKENDS)}, got {backend!r}{source}")
    if backend == "cuda":
        raise BackendUnavailableError(
            f"backend='cuda'{source} is not usable for {op}: the CUDA extension has no Mamba-2 (SSD) "
            f"kernel; the backends with SSD kernels are {SSD_BACKENDS} ('auto' picks between them)"
        )
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    usable, reason = _statuses()["triton"]
    if backend == "triton":
        if not usable:
            raise BackendUnavailableError(f"backend='triton'{source} is not usable for {op}: {reason}")
        if device.type != "cuda" and not _triton_probe()[2]:
            raise ValueError(f"backend='triton'{source} needs CUDA tensors for {op}, got tensors on {device}")
        if grad:
            raise ValueError(
                f"backend='triton'{source}: the Triton {op} kernels are forward-only, but autograd would "
                "record this call (an input requires grad); use backend='torch' or torch.no_grad()"
            )
        return "triton"
    if torch.compiler.is_compiling():  # traced code keeps the plain PyTorch ops
        return "torch"
    if usable and not grad:
        return "triton"
    why = "an input requires grad (the Triton kernels are forward-only)" if usable else reason
    _warn_once(
        f"ssd-auto-torch-on-cuda-{'grad' if usable else 'no-triton'}",
        f"sparsessm_kernels: running the pure PyTorch backend of the Mamba-2 (SSD) ops on CUDA "
        f"tensors (slow path): {why}",
    )
    return "torch"


def _tables(layout: SSDStateLayout | None, device: torch.device):
    """``(head_mask (h, n) bool, kept_idx (h, k_max) int32, kept_count (h,) int32)`` on ``device``,
    or three Nones without a mask."""
    if layout is None:
        return None, None, None
    heads = layout.heads.to(device)  # cached per device: no copy per call (CUDA-graph capturable)
    return heads.mask, heads.kept_idx, heads.kept_count


def _contiguous(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.contiguous() for t in tensors]


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, INF),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    *,
    seq_idx: torch.Tensor | None = None,
    state_mask: torch.Tensor | SSDStateLayout | None = None,
    pruned_states: str = "remove",
    head_transition_mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD scan with optional sparse states, like mamba_ssm's ``mamba_chunk_scan_combined``.

    Differentiable through the torch backend's own (autograd) ops.

    Args:
        x: ``(b, l, nheads, headdim)`` (fp16, bf16, fp32 or fp64).
        dt: ``(b, l, nheads)`` time step before ``dt_bias`` / softplus / clamp.
        A: ``(nheads,)`` float32 (``-exp(A_log)``), one scalar per head.
        B, C: ``(b, l, ngroups, d_state)``, ``nheads % ngroups == 0``; head ``h`` uses group
            ``h // (nheads // ngroups)``. ``d_state <= 256``.
        D: ``(nheads,)`` or ``(nheads, headdim)`` skip. z: ``(b, l, nheads, headdim)`` gate:
            ``out * silu(z)`` (what ``mamba_chunk_scan_combined`` does; the Mamba2 module's gated
            RMSNorm is not part of the op). dt_bias: ``(nheads,)``.
        dt_softplus, dt_limit: ``dt = clamp(softplus(dt + dt_bias), *dt_limit)``; the clamp always
            applies (the default ``(0, inf)`` maps a negative ``dt`` to 0).
        initial_states: ``(b, nheads, headdim, d_state)``, or compact ``(b, nheads, headdim, k)``
            with a mask keeping ``k`` states in every head.
        return_final_states: also return the final state.
        seq_idx: ``(b, l)`` int32/int64, non-decreasing along ``l``: several sequences packed in one
            row; the state restarts from 0 where the index changes, and ``initial_states`` only
            reaches a first sequence with index 0 (as in mamba_ssm).
        state_mask: None, bool ``(ngroups, d_state)`` (per group) or ``(nheads, d_state)`` (per
            head), True = kept, or a prebuilt :class:`SSDStateLayout`.
        pruned_states: ``"remove"`` (default: a pruned state contributes nothing, exactly zeroing
            its ``B`` / ``C`` columns) or ``"zero_transition"`` (its transition is 0, its
            feed-through ``C * dt * B * x`` stays).
        head_transition_mask: None or bool ``(nheads,)``; False zeroes the head's transition
            ``exp(dt * A)`` (SparseSSM's ``A_log`` pruning on Mamba-2): ``h_t = dt_t B_t x_t``.
        chunk_size: timesteps per chunk (speed and rounding only); the Triton backend rounds it up
            to a power of two in ``[16, 256]``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (``"cuda"`` has no SSD kernel).

    Returns:
        ``out`` ``(b, l, nheads, headdim)`` in ``x.dtype``; with ``return_final_states``
        ``(out, final_states)``, ``final_states`` ``(b, nheads, headdim, d_state)`` float32
        (float64 when an input is float64), pruned entries 0.
    """
    check_pruned_states(pruned_states)
    limits = check_dt_limit(dt_limit)
    check_chunk_size(chunk_size)
    shape = check_ssd_scan_inputs(x, dt, A, B, C, D, z, dt_bias, seq_idx)
    layout = as_ssd_layout(state_mask, shape.nheads, shape.ngroups, shape.d_state)
    check_ssd_state(
        "initial_states", initial_states, shape.batch, shape, compact_width(layout), x, optional=True
    )
    heads_kept = check_head_transition_mask(head_transition_mask, shape.nheads, x.device)
    grad = needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_states)
    if resolve_ssd_backend(backend, x.device, "ssd_scan", grad) == "triton":
        from .triton_scan import ssd_scan_triton

        A, D, dt_bias = _contiguous(A, D, dt_bias)
        out, final = ssd_scan_triton(
            x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), limits, initial_states,
            bool(return_final_states), seq_idx, *_tables(layout, x.device), heads_kept, pruned_states,
            chunk_size,
        )  # fmt: skip
    else:
        out, final = ssd_scan_torch(
            x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), limits, initial_states,
            bool(return_final_states), seq_idx, layout, heads_kept, pruned_states, chunk_size,
        )  # fmt: skip
    return (out, final) if return_final_states else out


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    *,
    dt_limit: tuple[float, float] = (0.0, INF),
    state_mask: torch.Tensor | SSDStateLayout | None = None,
    pruned_states: str = "remove",
    head_transition_mask: torch.Tensor | None = None,
    backend: str = "auto",
    state_batch_indices: torch.Tensor | None = None,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Mamba-2 decode step, like mamba_ssm's multi-head ``selective_state_update`` with tied
    head dims; ``state`` is updated in place.

    Args:
        state: ``(b, nheads, headdim, d_state)``, or compact ``(b, nheads, headdim, k)`` (kept states
            in ascending order) with a mask keeping ``k`` states in every head; pruned entries of a
            dense state become 0.
        x: ``(b, nheads, headdim)``. dt: ``(b, nheads)``. A: ``(nheads,)`` float32.
        B, C: ``(b, ngroups, d_state)``. D: ``(nheads,)`` or ``(nheads, headdim)``.
        z: ``(b, nheads, headdim)``. dt_bias: ``(nheads,)``.
        dt_softplus, dt_limit: as in :func:`ssd_scan` (same default, so chained steps reproduce the
            scan; mamba_ssm's step has no clamp: pass ``(-inf, inf)`` for that).
        state_mask, pruned_states, head_transition_mask, backend: as in :func:`ssd_scan`.
        state_batch_indices: optional ``(b,)`` int32/int64: row ``i`` updates
            ``state[state_batch_indices[i]]`` of a state pool with any number ``S`` of rows; an index
            outside ``[0, S)`` (a pad such as -1) gives output 0 and changes no state. Valid indices
            must be distinct.
        pad_slot_id: optional int: rows whose ``state_batch_indices`` entry equals it are skipped
            like out-of-range ones (vLLM's pad slot), even when it is a valid row of the pool.
        out: optional preallocated ``(b, nheads, headdim)`` output in ``x.dtype`` (written and
            returned; skipped rows get 0).

    Returns:
        ``out`` ``(b, nheads, headdim)`` in ``x.dtype``.
    """
    check_pruned_states(pruned_states)
    limits = check_dt_limit(dt_limit)
    shape = check_ssd_step_inputs(x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    layout = as_ssd_layout(state_mask, shape.nheads, shape.ngroups, shape.d_state)
    rows = None if state_batch_indices is not None else shape.batch
    check_ssd_state("state", state, rows, shape, compact_width(layout), x)
    heads_kept = check_head_transition_mask(head_transition_mask, shape.nheads, x.device)
    pad = check_pad_slot_id(pad_slot_id)
    check_ssd_out(out, x)
    grad = needs_grad(state, x, dt, A, B, C, D, z, dt_bias)
    if resolve_ssd_backend(backend, x.device, "ssd_state_update", grad) == "triton":
        from .triton_step import ssd_state_update_triton

        A, D, dt_bias = _contiguous(A, D, dt_bias)
        return ssd_state_update_triton(
            state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), limits, *_tables(layout, x.device),
            heads_kept, pruned_states, state_batch_indices, pad, out,
        )  # fmt: skip
    if pad is not None and state_batch_indices is not None:
        state_batch_indices = torch.where(state_batch_indices == pad, -1, state_batch_indices)
    result = ssd_state_update_torch(
        state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), limits, layout, heads_kept, pruned_states,
        state_batch_indices,
    )  # fmt: skip
    return result if out is None else out.copy_(result)
