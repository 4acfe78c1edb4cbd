"""Argument validation of the Mamba-2 (SSD) ops.

Every check raises ``TypeError`` or ``ValueError`` naming the argument, what was expected and what
came. The tensor-level helpers (dtype, shape, device checks) are the Mamba-1 ops' own
(:mod:`sparsessm_kernels.ops.checks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import check_out, check_same_device, check_shape, check_tensor
from ..layout import MAX_D_STATE


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


@dataclass(frozen=True)
class SSDShape:
    """Sizes of one SSD call: ``x`` is ``(batch, seqlen, nheads, headdim)``, ``B`` / ``C``
    ``(batch, seqlen, ngroups, d_state)``."""

    batch: int
    seqlen: int
    nheads: int
    headdim: int
    ngroups: int
    d_state: int


def check_ssd_A(A: object, nheads: int) -> None:
    """``A``: ``(nheads,)`` real float32 (float64 for the reference), one scalar per head."""
    check_tensor("A", A)
    if A.dim() != 1 or A.shape[0] != nheads:
        raise ValueError(
            f"A: expected shape (nheads,) = ({nheads},) (one scalar per head, Mamba-2), got {_shape(A)}"
        )
    if A.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"A: expected float32 (or float64 for the reference), got {A.dtype}")


def check_ssd_BC(
    B: object, C: object, lead: tuple[int, ...], lead_names: str, nheads: int
) -> tuple[int, int]:
    """``B`` and ``C``: ``(*lead, ngroups, d_state)`` with ``ngroups`` dividing ``nheads``; return
    ``(ngroups, d_state)``."""
    dims = len(lead) + 2
    for name, t in (("B", B), ("C", C)):
        check_tensor(name, t)
        if t.dim() != dims or _shape(t)[: len(lead)] != lead:
            raise ValueError(
                f"{name}: expected shape ({lead_names}, ngroups, d_state) = {(*lead, 'ngroups', 'd_state')}, "
                f"got {_shape(t)}"
            )
    g, n = B.shape[-2], B.shape[-1]
    if g < 1 or nheads % g != 0:
        raise ValueError(
            f"B: expected ngroups (dim {len(lead)}) dividing nheads={nheads} (nheads % ngroups == 0), "
            f"got ngroups={g} (shape {_shape(B)})"
        )
    if not 1 <= n <= MAX_D_STATE:
        raise ValueError(f"B: expected 1 <= d_state <= {MAX_D_STATE}, got d_state={n} (shape {_shape(B)})")
    check_shape("C", C, _shape(B), f"({lead_names}, ngroups, d_state) like B")
    return g, n


def check_ssd_D(D: object, nheads: int, headdim: int) -> None:
    check_tensor("D", D, optional=True)
    if D is not None and _shape(D) not in ((nheads,), (nheads, headdim)):
        raise ValueError(
            f"D: expected shape (nheads,) = ({nheads},) or (nheads, headdim) = ({nheads}, {headdim}), "
            f"got {_shape(D)}"
        )


def check_dt_limit(dt_limit: object) -> tuple[float, float]:
    """``dt_limit``: a ``(min, max)`` pair of numbers with ``min <= max``; return it as floats."""
    try:
        lo, hi = (float(v) for v in dt_limit)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"dt_limit: expected a (min, max) pair of numbers, got {dt_limit!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"dt_limit: expected (min, max) with min <= max, got {dt_limit!r}")
    return lo, hi


def check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    return chunk_size


def check_state_batch_indices(idx: object, batch: int) -> None:
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"state_batch_indices: expected a torch.Tensor, got {type(idx).__name__}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"state_batch_indices: expected int32 or int64, got {idx.dtype}")
    check_shape("state_batch_indices", idx, (batch,), "(b,)")


def check_seq_idx(seq_idx: object, batch: int, seqlen: int) -> None:
    if seq_idx is None:
        return
    if not isinstance(seq_idx, torch.Tensor):
        raise TypeError(f"seq_idx: expected a torch.Tensor, got {type(seq_idx).__name__}")
    if seq_idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"seq_idx: expected int32 or int64, got {seq_idx.dtype}")
    check_shape("seq_idx", seq_idx, (batch, seqlen), "(b, l)")


def check_ssd_scan_inputs(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    seq_idx: torch.Tensor | None,
) -> SSDShape:
    """Validate the arguments of ``ssd_scan`` except ``initial_states`` (see :func:`check_ssd_state`,
    which needs the mask) and return their sizes."""
    check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x: expected shape (b, l, nheads, headdim), got {_shape(x)}")
    b, l, h, p = _shape(x)
    if l < 1 or h < 1 or p < 1:
        raise ValueError(f"x: expected l >= 1, nheads >= 1 and headdim >= 1, got shape {_shape(x)}")
    check_tensor("dt", dt)
    check_shape("dt", dt, (b, l, h), "(b, l, nheads)")
    check_ssd_A(A, h)
    g, n = check_ssd_BC(B, C, (b, l), "b, l", h)
    check_ssd_D(D, h, p)
    check_tensor("z", z, optional=True)
    check_shape("z", z, (b, l, h, p), "(b, l, nheads, headdim) like x")
    check_tensor("dt_bias", dt_bias, optional=True)
    check_shape("dt_bias", dt_bias, (h,), "(nheads,)")
    check_seq_idx(seq_idx, b, l)
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, seq_idx=seq_idx)
    return SSDShape(b, l, h, p, g, n)


def check_ssd_step_inputs(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    state_batch_indices: torch.Tensor | None,
) -> SSDShape:
    """Validate the arguments of ``ssd_state_update`` except the state's shape (see
    :func:`check_ssd_state`, which needs the mask); ``seqlen`` is reported as 1."""
    check_tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"x: expected shape (b, nheads, headdim), got {_shape(x)}")
    b, h, p = _shape(x)
    check_tensor("dt", dt)
    check_shape("dt", dt, (b, h), "(b, nheads)")
    check_ssd_A(A, h)
    g, n = check_ssd_BC(B, C, (b,), "b", h)
    check_ssd_D(D, h, p)
    check_tensor("z", z, optional=True)
    check_shape("z", z, (b, h, p), "(b, nheads, headdim) like x")
    check_tensor("dt_bias", dt_bias, optional=True)
    check_shape("dt_bias", dt_bias, (h,), "(nheads,)")
    if state_batch_indices is not None:
        check_state_batch_indices(state_batch_indices, b)
    check_same_device(
        x=x,
        dt=dt,
        A=A,
        B=B,
        C=C,
        D=D,
        z=z,
        dt_bias=dt_bias,
        state_batch_indices=state_batch_indices,
    )
    return SSDShape(b, 1, h, p, g, n)


def check_ssd_state(
    name: str,
    state: object,
    rows: int | None,
    shape: SSDShape,
    n_kept: int | None,
    x: torch.Tensor,
    *,
    optional: bool = False,
) -> None:
    """``state`` / ``initial_states``: ``(rows, nheads, headdim, d_state)``, or compact
    ``(rows, nheads, headdim, k)`` when a uniform mask keeps ``n_kept = k`` states per head.

    ``rows`` None: any number of rows (a slot pool addressed by ``state_batch_indices``). ``x``: the
    input whose device the state must share.
    """
    if state is None and optional:
        return
    check_tensor(name, state)
    h, p, n = shape.nheads, shape.headdim, shape.d_state
    r = "b" if rows is not None else "S"
    count = rows if rows is not None else (state.shape[0] if state.dim() == 4 and state.shape[0] >= 1 else 1)
    allowed = [(count, h, p, n)] + ([(count, h, p, n_kept)] if n_kept is not None and n_kept != n else [])
    if _shape(state) not in allowed:
        what = f" or compact ({r}, nheads, headdim, k) = {allowed[1]}" if len(allowed) > 1 else ""
        raise ValueError(
            f"{name}: expected shape ({r}, nheads, headdim, d_state) = {allowed[0]}{what}, "
            f"got {_shape(state)}"
        )
    check_same_device(x=x, **{name: state})


def check_ssd_out(out: object, x: torch.Tensor) -> None:
    """``out`` of the decode step: None or a tensor shaped and typed like ``x`` ``(b, nheads, headdim)``
    on its device."""
    check_out(out, x, "(b, nheads, headdim) like x")
