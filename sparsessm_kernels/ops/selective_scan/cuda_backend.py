"""The selective scan on the CUDA kernels of the compiled extension (``csrc/selective_scan``).

:func:`selective_scan_cuda` has exactly the signature of
:func:`~sparsessm_kernels.ops.selective_scan.torch_backend.selective_scan_torch`: arguments are
validated by the caller (:func:`sparsessm_kernels.ops.selective_scan`); this layer adapts them to
what the kernels take (one dtype for the sequence tensors, stride 1 along ``l``, float32
per-channel vectors, int32 layout tables), and the binding (``python/bindings.cpp``) checks
devices, dtypes, shapes and strides again, naming the argument in every error.
"""

from __future__ import annotations

import torch

from .. import cuda as _cuda
from ..plan import ScanInputs, ScanPlan


def _seq(t: torch.Tensor | None, dtype: torch.dtype, unit_stride: bool = True) -> torch.Tensor | None:
    """A sequence tensor in the kernel dtype; with stride 1 along ``l`` when ``unit_stride``.

    ``B`` and ``C`` are staged by the kernel with any strides (a view of the ``x_proj`` output, an
    expanded view), so they are passed as they are; ``u``, ``delta`` and ``z`` are read with
    stride 1 along ``l``.
    """
    if t is None:
        return None
    if t.dtype != dtype:
        t = t.to(dtype)
    if unit_stride and t.shape[-1] != 1 and t.stride(-1) != 1:
        t = t.contiguous()
    return t


def _per_channel_sequence(t: torch.Tensor, dtype: torch.dtype, u: torch.Tensor) -> torch.Tensor:
    """A time-invariant ``(d, n)`` B / C as the grouped ``(b, g = d, n, l)`` layout the kernel reads:
    a stride-0 view over batch and time (no copy; the kernel honours any strides). Other B / C
    tensors are returned as they are."""
    if t.dim() != 2:
        return t
    b, _, l = u.shape
    return t.to(dtype)[None, :, :, None].expand(b, t.shape[0], t.shape[1], l)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _i32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.int32).contiguous()


def selective_scan_cuda(plan: ScanPlan, inputs: ScanInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selective scan on the CUDA kernels; arguments validated by ``ops.selective_scan``.

    Shapes as in :class:`~sparsessm_kernels.ops.plan.ScanInputs` (A float32; a time-invariant ``(d, n)`` B
    / C is passed as a stride-0 ``(b, d, n, l)`` view, one group per channel); the mask tables and the
    kernel's ``time_segments`` come with the plan. Sequence tensors of mixed dtypes are computed in their
    promoted dtype (exact: the math is float32 either way); float64 is not supported by the kernels (use
    the torch backend).

    Returns ``(out (b, d, l) in u.dtype, last_state (b, d, n) float32 or None)``.
    """
    ext = _cuda.extension()
    u, delta, A, B, C, D, z, delta_bias = inputs
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is not None and t.dtype == torch.float64:
            raise TypeError(
                f"{name}: the cuda backend computes in float32 and does not take float64 tensors "
                "(use backend='torch' for a float64 scan)"
            )
    # The sequence tensors share one dtype. A time-invariant (d, n) B / C takes part in the promotion
    # so that its values reach the kernel unrounded (a float32 B with bf16 u computes in float32).
    dtype = u.dtype
    for t in (delta, z, B, C):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in _cuda.KERNEL_DTYPES:
        raise TypeError(f"u: expected float32, float16 or bfloat16 sequence tensors, got {dtype}")

    out, last_state = ext.selective_scan_fwd(
        _seq(u, dtype),
        _seq(delta, dtype),
        _f32(A),
        _seq(_per_channel_sequence(B, dtype, u), dtype, unit_stride=False),
        _seq(_per_channel_sequence(C, dtype, u), dtype, unit_stride=False),
        _f32(D),
        _seq(z, dtype),
        _f32(delta_bias),
        plan.softplus,
        plan.return_last_state,
        _i32(plan.kept_idx),
        _i32(plan.kept_count),
        plan.pruned_states,
        plan.time_segments,
    )
    if out.dtype != u.dtype:
        out = out.to(u.dtype)
    return out, (last_state if plan.return_last_state else None)
