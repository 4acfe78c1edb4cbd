"""Helpers shared by the Triton kernel families: jit math helpers, launch configuration.

Everything here uses Triton APIs that exist in Triton 3.6 (the oldest version the GPU machines
carry) as well as in newer releases.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..checks import math_dtype
from . import interpret_requested

INTERPRETED = interpret_requested()
"""Whether the kernels of this package were built for Triton's interpreter.

``triton.jit`` decides at decoration time, i.e. when these modules are first imported, so this
is fixed for the life of the process.
"""


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


@functools.cache
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (1 under the interpreter or on CPU tensors)."""
    if device.type != "cuda" or INTERPRETED:
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


@dataclass
class Launch:
    """One kernel launch of a call: ``kernel[grid](*args, **kwargs)`` (``kwargs``: compile-time
    constants and ``num_warps``). Built by the ``plan_*`` functions of the kernel modules, so the
    launches a call makes can also be compiled ahead of time for a GPU this machine lacks."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.kwargs)


_INT_DUMMIES: dict[torch.device, torch.Tensor] = {}


def int_dummy(device: torch.device) -> torch.Tensor:
    """A cached int32 tensor standing in for an integer-pointer argument a kernel never reads.

    Cached per device so no call allocates (nor launches a fill) for it.
    """
    dummy = _INT_DUMMIES.get(device)
    if dummy is None:
        dummy = _INT_DUMMIES[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return dummy


def device_guard(device: torch.device):
    """Make ``device`` current while kernels launch (Triton launches on the current device)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return _NullContext()


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}
"""Triton dtype of each math dtype."""


def acc_dtype(*tensors: torch.Tensor | None) -> tuple[torch.dtype, tl.dtype]:
    """Math precision (:func:`sparsessm_kernels.ops.checks.math_dtype`) in torch and in Triton."""
    dtype = math_dtype(*tensors)
    return dtype, TL_DTYPES[dtype]


def bc_strides(t: torch.Tensor, grouped: bool) -> tuple[int, int, int, int]:
    """B or C, ``(b, n, ...)`` or grouped ``(b, g, n, ...)``: ``(g, stride_b, stride_g, stride_n)``.

    A time stride, if any, is ``t.stride(-1)``.
    """
    if not grouped:
        return 1, t.stride(0), 0, t.stride(1)
    return t.shape[1], t.stride(0), t.stride(1), t.stride(2)


def time_invariant_as_grouped(t: torch.Tensor, b: int, l: int) -> torch.Tensor:
    """A time-invariant ``(d, n)`` B / C as the grouped ``(b, g = d, n, l)`` view the kernels read
    (stride 0 over batch and time: no copy); any other layout unchanged."""
    if t.dim() != 2:
        return t
    d, n = t.shape
    return t[None, :, :, None].expand(b, d, n, l)


LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)

if INTERPRETED:  # the interpreter has no libdevice: NumPy's log2 and division (exact)

    @triton.jit
    def fast_log2(x):
        return tl.log2(x)

    @triton.jit
    def fast_div(x, y):
        return x / y

else:
    from triton.language.extra import libdevice

    @triton.jit
    def fast_log2(x):
        """``log2`` on the hardware's approximation (``lg2.approx``) for float32, where
        ``tl.log2`` is a software polynomial; exact ``log2`` for float64."""
        if x.dtype == tl.float32:
            return libdevice.fast_log2f(x)
        else:
            return tl.log2(x)

    @triton.jit
    def fast_div(x, y):
        """``x / y`` as ``div.approx`` for float32 (a reciprocal and a product, 2 ulp), where
        ``/`` is the IEEE division's instruction sequence; exact for float64."""
        if x.dtype == tl.float32:
            return libdevice.fast_dividef(x, y)
        else:
            return x / y


@triton.jit
def softplus(x):
    """PyTorch's softplus (beta 1, threshold 20) on the hardware's base-2 exp / log and a fast
    division. ``log1p(e)`` is ``e * log(1 + e) / ((1 + e) - 1)`` (Kahan's trick: the
    rounding of ``1 + e`` cancels), 1 in the limit ``(1 + e) == 1``."""
    e = tl.exp2(tl.minimum(x, 20.0) * LOG2E)
    u1 = e + 1.0
    d1 = u1 - 1.0
    tiny = d1 == 0.0
    ratio = tl.where(tiny, 1.0, fast_div(fast_log2(u1) * LN2, tl.where(tiny, 1.0, d1)))
    return tl.where(x > 20.0, x, e * ratio)


@triton.jit
def silu(x):
    """``x * sigmoid(x)`` with a base-2 exp and a fast division."""
    return fast_div(x, 1.0 + tl.exp2(-x * LOG2E))
