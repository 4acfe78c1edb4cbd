"""Argument validation shared by every backend of the selective-scan ops.

Each check raises ``TypeError`` or ``ValueError`` naming the argument, what was expected and
what came, so a caller never has to decode a shape error from deep inside a kernel.

Shapes are checked in three steps, so that the error blames the tensor that is wrong:

1. every argument's type, dtype and number of dimensions (which also picks its layout, e.g.
   ``B`` ``(b, n, l)``, grouped ``(b, g, n, l)`` or time-invariant ``(d, n)``);
2. every size (``b``, ``d``, ``l``, ``n``) is the value most of the arguments carrying it agree
   on (a tie goes to the earliest argument in the signature);
3. every argument is compared with those sizes in signature order, and the first one that
   differs is named, with the expected and the actual shape.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from .layout import MAX_D_STATE

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _fmt(values: tuple[object, ...]) -> str:
    """``(2, g, 4)`` / ``(8,)``: a shape with symbolic entries, without quotes."""
    inner = ", ".join(str(v) for v in values)
    return f"({inner},)" if len(values) == 1 else f"({inner})"


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


# ---------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class _Layout:
    """One accepted layout of an argument: symbolic sizes, e.g. ``("b", "g", "n", "l")``.

    ``b``, ``d``, ``l`` and ``n`` are shared by the arguments (and voted on); ``g`` (groups) and
    ``S`` (rows of an indexed state) belong to the argument alone, and so do the shared symbols
    listed in ``free`` (the last size of a decode state, ``n`` or a compact ``k``).
    """

    dims: tuple[str, ...]
    label: str = ""  # "grouped ", "time-invariant ", ...
    free: tuple[str, ...] = ()  # shared symbols this argument neither votes on nor is checked against


_SHARED = ("b", "d", "l", "n")
_Arg = tuple[str, torch.Tensor, _Layout]  # an argument's name, value and layout


def _pick_layout(name: str, t: torch.Tensor, layouts: tuple[_Layout, ...]) -> _Arg:
    """The layout of ``t`` given by its number of dimensions, or a ``ValueError`` listing them."""
    ndim = t.dim()
    for layout in layouts:
        if len(layout.dims) == ndim:
            return name, t, layout
    alternatives = [f"{layout.label}{_fmt(layout.dims)}" for layout in layouts]
    listed = alternatives[0]
    if len(alternatives) > 1:
        listed = ", ".join(alternatives[:-1]) + " or " + alternatives[-1]
    raise ValueError(f"{name}: expected shape {listed}, got {_shape(t)}")


def _agreed_sizes(args: list[_Arg]) -> dict[str, int]:
    """Each shared size as the value most arguments carrying it agree on (ties: earliest argument)."""
    votes: dict[str, Counter] = {}
    for _, t, layout in args:
        for sym, size in zip(layout.dims, t.shape, strict=True):
            if sym in _SHARED and sym not in layout.free:
                votes.setdefault(sym, Counter())[int(size)] += 1
    # most_common orders equal counts by first insertion, i.e. by argument order
    return {sym: counter.most_common(1)[0][0] for sym, counter in votes.items()}


def _mismatch(arg: _Arg, sizes: dict[str, int]) -> bool:
    _, t, layout = arg
    return any(
        sym in _SHARED and sym not in layout.free and size != sizes[sym]
        for sym, size in zip(layout.dims, t.shape, strict=True)
    )


def _agree(args: list[_Arg], *, blame: bool = True) -> dict[str, int]:
    """The majority sizes of ``args``; with ``blame``, a ``ValueError`` naming the first argument
    whose shape disagrees with them, with the expected and the actual shape."""
    sizes = _agreed_sizes(args)
    if blame:
        _blame(args, sizes)
    return sizes


def _blame(args: list[_Arg], sizes: dict[str, int]) -> None:
    for arg in args:
        if _mismatch(arg, sizes):
            name, t, layout = arg
            expected = tuple(sizes[sym] if sym in _SHARED else sym for sym in layout.dims)
            shape = f"{layout.label}shape {_fmt(layout.dims)} = {_fmt(expected)}"
            raise ValueError(f"{name}: expected {shape}, got {_shape(t)}")


def _bc_fits(t: torch.Tensor | None, rows: int, n: int, tail: tuple[int, ...], d: int | None) -> bool:
    """B / C is ``(rows, n, *tail)``, grouped ``(rows, g, n, *tail)``, or ``(d, n)`` when ``d`` is
    given (time-invariant); group divisibility is checked later."""
    if t is None:
        return True
    shape = t.shape
    ndim = len(shape)
    if ndim == 2 + len(tail):
        return shape == (rows, n, *tail)
    if ndim == 3 + len(tail):
        return shape[0] == rows and shape[2:] == (n, *tail)
    return d is not None and shape == (d, n)


def _scan_sizes(u, delta, A, B, C, D, z, delta_bias, time_invariant_BC: bool) -> tuple | None:
    """``(b, d, l, n)`` when every shape is consistent with ``u`` and ``A`` (the fast path of a
    valid call: plain comparisons, no bookkeeping), else None."""
    if u.dim() != 3 or A.dim() != 2:
        return None
    b, d, l = seq = tuple(u.shape)
    n = A.shape[1]
    if delta.shape != seq or A.shape[0] != d or (z is not None and z.shape != seq):
        return None
    if (D is not None and D.shape != (d,)) or (delta_bias is not None and delta_bias.shape != (d,)):
        return None
    fixed_d = d if time_invariant_BC else None
    if not (_bc_fits(B, b, n, (l,), fixed_d) and _bc_fits(C, b, n, (l,), fixed_d)):
        return None
    return b, d, l, n


def _check_groups(name: str, t: torch.Tensor, grouped: _Layout, d: int) -> int:
    """The group count of a grouped B / C (``g`` dividing ``d``), 1 for any other layout."""
    if t.dim() != len(grouped.dims):
        return 1
    g = int(t.shape[1])
    if g < 1 or d % g != 0:
        raise ValueError(
            f"{name}: expected {grouped.label}shape {_fmt(grouped.dims)} with g dividing d={d}, "
            f"got {_shape(t)} (g={g})"
        )
    return g


def _check_A(A: torch.Tensor, n: int) -> None:
    if A.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"A: expected float32 (or float64 for the reference), got {A.dtype}")
    if not 1 <= n <= MAX_D_STATE:
        raise ValueError(f"A: expected 1 <= n <= {MAX_D_STATE} states, got n={n} (shape {_shape(A)})")


def _check_d(name: str, t: torch.Tensor, d: int) -> None:
    if d < 1:
        raise ValueError(f"{name}: expected d >= 1 channels, got shape {_shape(t)}")


def _layouts(specs: tuple[tuple[str, torch.Tensor | None, tuple[_Layout, ...]], ...]) -> list[_Arg]:
    """The layout of every given (already type-checked) argument, by its number of dimensions."""
    return [_pick_layout(name, t, layouts) for name, t, layouts in specs if t is not None]


_A = (_Layout(("d", "n")),)
_PER_CHANNEL = (_Layout(("d",)),)
_SCAN_SEQ = (_Layout(("b", "d", "l")),)
_SCAN_BC_GROUPED = _Layout(("b", "g", "n", "l"), "grouped ")
_SCAN_BC = (_Layout(("b", "n", "l")), _SCAN_BC_GROUPED, _Layout(("d", "n"), "time-invariant "))
_SCAN_BC_VARIABLE = _SCAN_BC[:2]
_STEP_VEC = (_Layout(("b", "d")),)
_STEP_BC_GROUPED = _Layout(("b", "g", "n"), "grouped ")
_STEP_BC = (_Layout(("b", "n")), _STEP_BC_GROUPED)
_INDICES = (_Layout(("b",)),)


@dataclass(frozen=True)
class ScanShape:
    """Sizes of a validated call. ``variable_B`` / ``variable_C``: input-dependent (per batch row
    and timestep) rather than time-invariant ``(d, n)``."""

    batch: int
    d_inner: int
    seqlen: int
    d_state: int
    variable_B: bool = True
    variable_C: bool = True


def _slow_scan_sizes(u, delta, A, B, C, D, z, delta_bias, time_invariant_BC: bool) -> tuple:
    bc = _SCAN_BC if time_invariant_BC else _SCAN_BC_VARIABLE
    args = _layouts(
        (
            ("u", u, _SCAN_SEQ),
            ("delta", delta, _SCAN_SEQ),
            ("A", A, _A),
            ("B", B, bc),
            ("C", C, bc),
            ("D", D, _PER_CHANNEL),
            ("z", z, _SCAN_SEQ),
            ("delta_bias", delta_bias, _PER_CHANNEL),
        )
    )
    sizes = _agree(args)
    return sizes["b"], sizes["d"], sizes["l"], sizes["n"]


def check_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor | None,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    *,
    time_invariant_BC: bool = True,
) -> ScanShape:
    """Validate the arguments of ``selective_scan`` and return their sizes.

    ``B`` / ``C``: ``(b, n, l)``, grouped ``(b, g, n, l)`` or, with ``time_invariant_BC``,
    time-invariant ``(d, n)`` (mamba_ssm's ``is_variable_B=False``). ``C`` may be None for ops
    that do not read it (calibration). The batch may be empty (``b = 0``).
    """
    for i, (name, t) in enumerate((("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D))):
        check_tensor(name, t, optional=i >= 4)
    check_tensor("z", z, optional=True)
    check_tensor("delta_bias", delta_bias, optional=True)
    sizes = _scan_sizes(u, delta, A, B, C, D, z, delta_bias, time_invariant_BC)
    if sizes is None:  # some shape disagrees: find which argument, by majority
        sizes = _slow_scan_sizes(u, delta, A, B, C, D, z, delta_bias, time_invariant_BC)
    b, d, l, n = sizes
    _check_d("u", u, d)
    if l < 1:
        raise ValueError(f"u: expected a sequence length l >= 1, got shape {_shape(u)}")
    _check_A(A, n)
    _check_groups("B", B, _SCAN_BC_GROUPED, d)
    if C is not None:
        _check_groups("C", C, _SCAN_BC_GROUPED, d)
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    return ScanShape(b, d, l, n, B.dim() != 2, C is None or C.dim() != 2)


def _step_sizes(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices) -> tuple | None:
    """``(b, d, n)`` when every shape but the state's last size (checked against the mask) is
    consistent with ``x`` and ``A`` (the fast path of a valid call), else None."""
    if x.dim() != 2 or A.dim() != 2 or state.dim() != 3:
        return None
    b, d = bd = tuple(x.shape)
    n = A.shape[1]
    if dt.shape != bd or A.shape[0] != d or (z is not None and z.shape != bd):
        return None
    if state.shape[1] != d or (state_batch_indices is None and state.shape[0] != b):
        return None
    if state_batch_indices is not None and state_batch_indices.shape != (b,):
        return None
    if (D is not None and D.shape != (d,)) or (dt_bias is not None and dt_bias.shape != (d,)):
        return None
    if not (_bc_fits(B, b, n, (), None) and _bc_fits(C, b, n, (), None)):
        return None
    return b, d, n


def _slow_step_sizes(state, x, dt, A, B, C, D, z, dt_bias, n_kept, state_batch_indices) -> tuple:
    indexed = state_batch_indices is not None
    state_layout = _Layout(("S" if indexed else "b", "d", "n"), free=("n",))  # n, or k when compact
    args = _layouts(
        (
            ("state", state, (state_layout,)),
            ("x", x, _STEP_VEC),
            ("dt", dt, _STEP_VEC),
            ("A", A, _A),
            ("B", B, _STEP_BC),
            ("C", C, _STEP_BC),
            ("D", D, _PER_CHANNEL),
            ("z", z, _STEP_VEC),
            ("dt_bias", dt_bias, _PER_CHANNEL),
            ("state_batch_indices", state_batch_indices, _INDICES),
        )
    )
    agreed = _agree(args, blame=False)
    sizes = agreed["b"], agreed["d"], agreed["n"]
    _check_state(state, *sizes, n_kept, indexed)  # the state (argument 0) has its own rule
    _blame(args[1:], agreed)
    return sizes


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
    B / C are ``(b, n)`` or grouped ``(b, g, n)`` (a time-invariant ``(d, n)`` B of the scan is
    passed to the step as the grouped view ``B[None].expand(b, d, n)``).
    """
    for i, (name, t) in enumerate(
        (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z))
    ):
        check_tensor(name, t, optional=i >= 6)
    check_tensor("dt_bias", dt_bias, optional=True)
    indexed = state_batch_indices is not None
    if indexed:
        if not isinstance(state_batch_indices, torch.Tensor):
            raise TypeError(
                f"state_batch_indices: expected a torch.Tensor, got {type(state_batch_indices).__name__}"
            )
        if state_batch_indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"state_batch_indices: expected int32 or int64, got {state_batch_indices.dtype}")
    sizes = _step_sizes(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    if sizes is None:  # some shape disagrees: find which argument, by majority
        sizes = _slow_step_sizes(state, x, dt, A, B, C, D, z, dt_bias, n_kept, state_batch_indices)
    b, d, n = sizes
    _check_state(state, b, d, n, n_kept, indexed)
    _check_d("x", x, d)
    _check_A(A, n)
    _check_groups("B", B, _STEP_BC_GROUPED, d)
    _check_groups("C", C, _STEP_BC_GROUPED, d)
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
    return ScanShape(b, d, 1, n)


def _check_state(state: torch.Tensor, b: int, d: int, n: int, n_kept: int | None, indexed: bool) -> None:
    """``state`` ``(b, d, n)`` or compact ``(b, d, k)``; any number of rows ``S`` when ``indexed``."""
    r = "S" if indexed else "b"
    rows = state.shape[0] if indexed else b
    allowed = [(rows, d, n)] + ([(rows, d, n_kept)] if n_kept is not None and n_kept != n else [])
    if _shape(state) not in allowed:
        what = f" or compact ({r}, d, k) = {allowed[1]}" if len(allowed) > 1 else ""
        raise ValueError(f"state: expected shape ({r}, d, n) = {allowed[0]}{what}, got {_shape(state)}")


def check_pad_slot_id(pad_slot_id: object) -> int | None:
    """``pad_slot_id`` of a decode step: None or an int (the ``state_batch_indices`` value of rows
    to skip, vLLM's pad slot)."""
    if pad_slot_id is None:
        return None
    if isinstance(pad_slot_id, bool) or not isinstance(pad_slot_id, int):
        raise TypeError(f"pad_slot_id: expected None or an int, got {pad_slot_id!r}")
    return pad_slot_id


def check_out(out: object, like: torch.Tensor, meaning: str) -> None:
    """``out`` of a decode step: None, or a tensor shaped and typed like ``like`` (``x``) on its
    device; ``meaning`` names the shape, e.g. ``"(b, d) like x"``."""
    if out is None:
        return
    check_tensor("out", out)
    check_shape("out", out, _shape(like), meaning)
    if out.dtype != like.dtype:
        raise TypeError(f"out: expected dtype {like.dtype} (x's), got {out.dtype}")
    check_same_device(x=like, out=out)


def math_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64 (reference precision), else float32."""
    return (
        torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    )
