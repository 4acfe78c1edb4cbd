"""Argument validation shared by every backend of the selective-scan ops.

Each check raises ``TypeError`` or ``ValueError`` naming the argument, what was expected and
what came, so a caller never has to decode a shape error from deep inside a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import MAX_D_STATE

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_tensor(name: str, t: object, *, optional: bool = False) -> None:
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{name}: complex tensors are not supported (only real Mamba-1 SSMs), got {t.dtype}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}"
        )


def check_shape(name: str, t: torch.Tensor | None, expected: tuple[int, ...], meaning: str) -> None:
    if t is not None and _shape(t) != expected:
        raise ValueError(f"{name}: expected shape {meaning} = {expected}, got {_shape(t)}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{name}: expected a tensor on {first} (the device of {first_name}), got {dev}")


def check_A(A: torch.Tensor, d: int) -> int:
    """Validate ``A`` (d, n) real float32/float64 and return ``n``."""
    check_tensor("A", A)
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A: expected shape (d, n) with d={d}, got {_shape(A)}")
    if A.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"A: expected float32 (or float64 for the reference), got {A.dtype}")
    n = A.shape[1]
    if not 1 <= n <= MAX_D_STATE:
        raise ValueError(f"A: expected 1 <= n <= {MAX_D_STATE} states, got n={n}")
    return n


def check_BC(name: str, t: torch.Tensor, b: int, d: int, n: int, tail: tuple[int, ...]) -> int:
    """Validate B or C: ``(b, n, *tail)`` or grouped ``(b, g, n, *tail)``; return g."""
    check_tensor(name, t)
    dims = "".join(f", {x}" for x in ("l",) * len(tail))
    if t.dim() == 2 + len(tail):
        if _shape(t) != (b, n, *tail):
            raise ValueError(f"{name}: expected shape (b, n{dims}) = {(b, n, *tail)}, got {_shape(t)}")
        return 1
    if t.dim() == 3 + len(tail):
        g = t.shape[1]
        if _shape(t) != (b, g, n, *tail) or g < 1 or d % g != 0:
            raise ValueError(
                f"{name}: expected grouped shape (b, g, n{dims}) = {(b, 'g', n, *tail)} with g dividing "
                f"d={d}, got {_shape(t)}"
            )
        return g
    raise ValueError(
        f"{name}: expected shape (b, n{dims}) or grouped (b, g, n{dims}) (input-dependent {name}), "
        f"got {_shape(t)}"
    )


@dataclass(frozen=True)
class ScanShape:
    batch: int
    d_inner: int
    seqlen: int
    d_state: int
    groups_B: int
    groups_C: int


def check_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> ScanShape:
    """Validate the arguments of ``selective_scan`` and return their sizes."""
    check_tensor("u", u)
    if u.dim() != 3:
        raise ValueError(f"u: expected shape (b, d, l), got {_shape(u)}")
    b, d, l = _shape(u)
    if l < 1:
        raise ValueError(f"u: expected a sequence length l >= 1, got shape {_shape(u)}")
    check_tensor("delta", delta)
    check_shape("delta", delta, (b, d, l), "(b, d, l)")
    n = check_A(A, d)
    gB = check_BC("B", B, b, d, n, (l,))
    gC = check_BC("C", C, b, d, n, (l,))
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        check_tensor(name, t, optional=True)
        check_shape(name, t, (d,), "(d,)")
    check_tensor("z", z, optional=True)
    check_shape("z", z, (b, d, l), "(b, d, l)")
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    return ScanShape(b, d, l, n, gB, gC)


def check_state_update_inputs(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    n_kept: int | None,
    state_batch_indices: torch.Tensor | None = None,
) -> ScanShape:
    """Validate the arguments of ``selective_state_update``.

    ``n_kept`` is the number of kept states when a uniform mask allows a compact state, else None.
    With ``state_batch_indices`` ``(b,)`` the state has any number of rows, ``(S, d, n or k)``.
    """
    check_tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x: expected shape (b, d), got {_shape(x)}")
    b, d = _shape(x)
    check_tensor("dt", dt)
    check_shape("dt", dt, (b, d), "(b, d)")
    n = check_A(A, d)
    check_tensor("state", state)
    rows = b
    if state_batch_indices is not None:
        if not isinstance(state_batch_indices, torch.Tensor):
            raise TypeError(
                f"state_batch_indices: expected a torch.Tensor, got {type(state_batch_indices).__name__}"
            )
        if state_batch_indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"state_batch_indices: expected int32 or int64, got {state_batch_indices.dtype}")
        check_shape("state_batch_indices", state_batch_indices, (b,), "(b,)")
        rows = state.shape[0] if state.dim() == 3 and state.shape[0] >= 1 else b
    allowed = [(rows, d, n)] + ([(rows, d, n_kept)] if n_kept is not None and n_kept != n else [])
    if _shape(state) not in allowed:
        r = "b" if state_batch_indices is None else "S"
        what = f" or compact ({r}, d, k) = " + str(allowed[1]) if len(allowed) > 1 else ""
        raise ValueError(f"state: expected shape ({r}, d, n) = {allowed[0]}{what}, got {_shape(state)}")
    gB = check_BC("B", B, b, d, n, ())
    gC = check_BC("C", C, b, d, n, ())
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        check_tensor(name, t, optional=True)
        check_shape(name, t, (d,), "(d,)")
    check_tensor("z", z, optional=True)
    check_shape("z", z, (b, d), "(b, d)")
    check_same_device(
        state=state,
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
    return ScanShape(b, d, 1, n, gB, gC)


def math_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64 (reference precision), else float32."""
    return (
        torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    )
