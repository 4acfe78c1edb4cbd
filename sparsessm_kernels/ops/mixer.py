"""The Mamba-1 mixer forward, in stages, shared by every caller of the selective-scan ops.

One implementation of ``in_proj -> conv1d + SiLU -> x_proj -> dt_proj -> selective scan (D, silu(z)
gate, dt bias + softplus) -> out_proj`` and of its one-token decode step, used by
``models.MambaMixer``, the pruning capture (``prune.mixer_intermediates``), both drop-in
integrations (transformers, mamba_ssm) and ``compat.mamba_inner_fn``. What differs between them is
passed in: the projections (any callables: ``nn.Linear``, 2:4 ``SemiStructuredLinear``, a bare
``F.linear``), the causal convolution with its cache handling, and optionally how the ``x_proj``
output splits into ``dt, B, C`` (FalconMamba's norms, mamba_ssm's given or biased B / C).

Producer layouts go to the ops as they are, without copies: ``z`` is a view of the ``in_proj``
output (``(b, d, l)`` with stride ``2 d`` along ``l``), ``B`` and ``C`` are views of the ``x_proj``
output ``x_dbl`` (``(b, n, l)`` with stride ``dt_rank + 2 n`` along ``l``; ``(b, n)`` rows in a
decode step). Every backend reads those strides itself (see ``docs/models.md``).

Stages (:data:`MIXER_STAGES`) are named after the module whose *input* they produce; a caller that needs
intermediate activations (the pruning capture) passes a ``record`` dict and an ``upto`` stage, and
:func:`mixer_forward` fills the dict and stops as soon as the input of ``upto`` is known.

``A = -exp(A_log)``, ``D`` and the ``dt`` bias are used in float32 (:class:`MixerConstants`: built
once per layer and rebuilt when a parameter changes, never cached while autograd records them; the
Mamba-2 mixer keeps its per-layer constants in the same cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from . import selective_scan, selective_state_update
from .layout import StateLayout

__all__ = [
    "MIXER_STAGES",
    "MixerConstants",
    "MixerModules",
    "SSMParams",
    "mixer_forward",
    "mixer_step",
    "split_x_dbl",
]

MIXER_STAGES = ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "out_proj", "out")
"""The stages of :func:`mixer_forward`, in data-flow order: each is named after the module whose input
it produces (``"A_log"``: the scan inputs; ``"out"``: the mixer output)."""

Projection = Callable[[torch.Tensor], torch.Tensor]


class MixerModules(Protocol):
    """The projections of a Mamba-1 mixer as every framework names them (transformers, mamba_ssm, this
    package's ``MambaMixer``): callables on the last dimension, and ``dt_proj`` with its ``weight``."""

    in_proj: Projection | None
    x_proj: Projection
    dt_proj: Any
    out_proj: Projection


class SSMParams(NamedTuple):
    """The per-layer inputs of the selective scan besides the activations.

    Attributes:
        A: ``(d, n)`` float32 (``-exp(A_log)``). D, dt_bias: ``(d,)`` or None.
        layout: the layer's state mask (``None`` = dense; a prebuilt :class:`StateLayout`, or a raw mask
            as the ops take it). pruned_states: its semantics. backend: passed to the ops.
        dt_softplus: softplus on ``delta + dt_bias`` (Mamba always; ``compat.mamba_inner_fn`` may say no).
    """

    A: torch.Tensor
    D: torch.Tensor | None
    dt_bias: torch.Tensor | None
    layout: StateLayout | torch.Tensor | None = None
    pruned_states: str = "zero_transition"
    backend: str = "auto"
    dt_softplus: bool = True


def _key(t: torch.Tensor | None) -> tuple[Any, ...] | None:
    return None if t is None else (id(t), t.data_ptr(), t._version)


def _as_float(t: torch.Tensor | None, keep_float64: bool = False) -> torch.Tensor | None:
    if t is None:
        return None
    return t if keep_float64 and t.dtype == torch.float64 else t.float()


def _capturing(t: torch.Tensor) -> bool:
    """Whether a CUDA graph is being captured on ``t``'s device: a captured graph must recompute the
    constants from the parameters' memory at every replay (and a value made during capture is no value
    until a replay), so nothing is cached or reused then."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


class MixerConstants:
    """``A = -exp(A_log)``, ``D`` and the ``dt`` bias of one layer in float32, built once.

    Shapes are the parameters' own: Mamba-1 ``A_log`` ``(d, n)``, ``D`` / bias ``(d,)``; Mamba-2
    ``A_log`` / bias ``(nheads,)``, ``D`` ``(nheads,)`` or ``(d,)``. With ``keep_float64`` (Mamba-2,
    whose SSD ops compute in float64 when an input is float64) a float64 ``D`` and bias stay float64;
    ``A`` is always float32.

    The values are rebuilt when a parameter changes: the cache is keyed on each parameter object, its
    ``data_ptr`` (new memory after ``.to()``, a new dtype or device) and its version counter (bumped by
    every in-place write: ``copy_``, optimizer steps, ``load_state_dict``), and holds the source tensors
    so that neither their memory nor their ``id`` can be reused by another tensor. Writes through
    ``param.data`` bypass the version counter: call :meth:`clear` after them. Nothing is cached while
    autograd records the parameters (grad mode on and one of them requires grad), under
    ``torch.compile`` tracing or during a CUDA graph capture: those calls compute the values afresh,
    so gradients reach ``A_log``, ``D`` and the bias, and a traced or captured graph reads the
    parameters themselves (later in-place updates reach it).
    """

    __slots__ = ("_cached", "keep_float64")

    def __init__(self, keep_float64: bool = False) -> None:
        self.keep_float64 = keep_float64
        self._cached: tuple[tuple[Any, ...], tuple[torch.Tensor | None, ...], tuple] | None = None

    def clear(self) -> None:
        """Forget the cached values (they are rebuilt on the next call)."""
        self._cached = None

    def __deepcopy__(self, memo: dict) -> MixerConstants:  # a copied model has other parameters
        return MixerConstants(self.keep_float64)

    def __getstate__(self) -> tuple[bool]:  # never the cached tensors (a non-empty tuple: see pickle)
        return (self.keep_float64,)

    def __setstate__(self, state: tuple[bool]) -> None:
        self.keep_float64 = bool(state[0])
        self._cached = None

    def _float(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return _as_float(t, self.keep_float64)

    def get(
        self, A_log: torch.Tensor, D: torch.Tensor | None, dt_bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(A, D, dt_bias)``: ``-exp(A_log.float())``, ``D.float()``, ``dt_bias.float()`` (shapes of the
        parameters; see the class docstring for ``keep_float64``)."""
        recording = torch.is_grad_enabled() and (
            A_log.requires_grad
            or (D is not None and D.requires_grad)
            or (dt_bias is not None and dt_bias.requires_grad)
        )
        if recording or torch.compiler.is_compiling() or A_log.is_inference() or _capturing(A_log):
            return -torch.exp(A_log.float()), self._float(D), self._float(dt_bias)
        # The held sources keep their objects and memory alive, so an id or address seen again is the
        # same (host and device pointers share one address space); A's shape catches a parameter whose
        # data was replaced by a view of its old memory.
        key = (id(A_log), A_log.data_ptr(), A_log._version, A_log.shape, _key(D), _key(dt_bias))
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[2]
        values = (
            -torch.exp(A_log.detach().float()),
            self._float(None if D is None else D.detach()),
            self._float(None if dt_bias is None else dt_bias.detach()),
        )
        held = tuple((t, t.detach()) for t in (A_log, D, dt_bias) if t is not None)  # objects and memory
        self._cached = (key, held, values)
        return values


def split_x_dbl(
    x_dbl: torch.Tensor, dt_rank: int, d_state: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dt, B, C`` as views of the ``x_proj`` output ``(..., dt_rank + 2 n)`` (no copies)."""
    return torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)


def _stop(
    record: dict[str, torch.Tensor] | None, upto: str | None, stage: str, **values: torch.Tensor
) -> bool:
    if record is not None:
        record.update(values)
    return upto == stage


def mixer_forward(
    mixer: MixerModules,
    hidden: torch.Tensor | None,
    *,
    conv: Projection,
    ssm: SSMParams,
    xz: torch.Tensor | None = None,
    split: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    dt_proj: Projection | None = None,
    ssm_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    record: dict[str, torch.Tensor] | None = None,
    upto: str | None = None,
) -> Any:
    """The mixer over a whole sequence (or a prefill), stage by stage.

    Args:
        mixer: the layer's projections (:class:`MixerModules`: ``in_proj`` ``(b, l, d_model) -> (b, l, 2 d)``,
            ``x_proj`` ``(b, l, d) -> (b, l, dt_rank + 2 n)``, ``dt_proj.weight`` ``(d, dt_rank)`` --
            ``delta = dt_proj.weight @ dt``, the bias goes into the scan -- and ``out_proj``
            ``(b, l, d) -> (b, l, d_model)``).
        hidden: ``(b, l, d_model)`` input of ``in_proj`` (None when ``xz`` is given).
        conv: the causal convolution + SiLU with the caller's cache handling, ``x (b, d, l) -> u (b, d, l)``
            (``x`` is a view of the ``in_proj`` output).
        ssm: the scan's per-layer inputs (``n`` is ``ssm.A.shape[-1]``).
        xz: the ``in_proj`` output ``(b, 2 d, l)`` when already computed (then ``in_proj`` is not called).
        split: ``x_dbl -> (dt (b, l, r), B, C)``, each of B / C ``(b, l, n)``, grouped ``(b, g, l, n)`` or
            time-invariant ``(d, n)``; default :func:`split_x_dbl` with ``r = dt_proj.weight.shape[1]``.
        dt_proj: ``dt (b, l, r) -> delta (b, d, l)`` without the bias, for a ``dt_proj`` whose weight is
            no plain tensor (a quantized module); default ``dt_proj.weight @ dt``.
        ssm_state: continue from this cached state ``(b, d, n or k)`` (updated in place) one token at a
            time with the decode step, instead of scanning from zero.
        return_last_state: also return the scan's final state ``(b, d, n)`` float32.
        record: filled with the intermediates (see below) as far as computed.
        upto: stop once the input of this stage (:data:`MIXER_STAGES`) is known; returns None.

    Returns:
        ``out_proj`` of the gated scan output cast to ``hidden.dtype`` (``xz.dtype`` when no ``hidden``
        is given), ``(b, l, d_model)``; with ``return_last_state``, ``(out, last_state)``.

    ``record`` keys: ``in_proj`` (``hidden``), ``conv1d`` (pre-conv ``x`` ``(b, d, l)``), ``z``
    ``(b, d, l)``, ``u`` ``(b, d, l)``, ``x_proj`` ``(b, l, d)``, ``dt_proj`` ``(b, l, r)``, ``B``, ``C``
    ``(b, n, l)`` (views), ``delta`` ``(b, d, l)`` (before bias and softplus), ``out_proj`` ``(b, l, d)``
    (gated scan output) and ``out``.
    """
    if _stop(record, upto, "in_proj", in_proj=hidden):
        return None
    if xz is None:
        xz = mixer.in_proj(hidden).transpose(1, 2)  # (b, 2 d, l), a view
    dtype = xz.dtype if hidden is None else hidden.dtype
    x, z = xz.chunk(2, dim=1)  # (b, d, l) views
    if _stop(record, upto, "conv1d", conv1d=x, z=z):
        return None
    u = conv(x)
    u_t = u.transpose(1, 2)  # (b, l, d)
    if _stop(record, upto, "x_proj", u=u, x_proj=u_t):
        return None
    x_dbl = mixer.x_proj(u_t)
    weight = mixer.dt_proj.weight if dt_proj is None or split is None else None
    dt, B, C = split_x_dbl(x_dbl, weight.shape[1], ssm.A.shape[-1]) if split is None else split(x_dbl)
    B = B if B.dim() == 2 else B.transpose(-1, -2)  # (b, [g,] n, l) views, or time-invariant (d, n)
    C = C if C.dim() == 2 else C.transpose(-1, -2)
    if _stop(record, upto, "dt_proj", dt_proj=dt, B=B, C=C):
        return None
    delta = weight @ dt.transpose(1, 2) if dt_proj is None else dt_proj(dt)  # (b, d, l)
    if _stop(record, upto, "A_log", delta=delta):
        return None
    last_state = None
    if ssm_state is not None:  # several tokens against a cached state: one decode step per token
        steps = [
            _step_op(ssm_state, u[..., t], delta[..., t], B[..., t], C[..., t], z[..., t], ssm)
            for t in range(u.shape[-1])
        ]
        y = steps[0].unsqueeze(-1) if len(steps) == 1 else torch.stack(steps, dim=-1)
    else:
        kwargs = {"state_mask": ssm.layout, "pruned_states": ssm.pruned_states, "backend": ssm.backend}
        args = (u, delta, ssm.A, B, C, ssm.D, z, ssm.dt_bias, ssm.dt_softplus, return_last_state)
        y = selective_scan(*args, **kwargs)
        if return_last_state:
            y, last_state = y
    y_t = y.transpose(1, 2).to(dtype)
    if _stop(record, upto, "out_proj", out_proj=y_t):
        return None
    out = mixer.out_proj(y_t)
    _stop(record, upto, "out", out=out)
    return (out, last_state) if return_last_state else out


def _step_op(
    state: torch.Tensor,
    u: torch.Tensor,
    dt: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    z: torch.Tensor,
    ssm: SSMParams,
) -> torch.Tensor:
    return selective_state_update(
        state,
        u,
        dt,
        ssm.A,
        B,
        C,
        ssm.D,
        z,
        ssm.dt_bias,
        ssm.dt_softplus,
        state_mask=ssm.layout,
        pruned_states=ssm.pruned_states,
        backend=ssm.backend,
    )


def mixer_step(
    mixer: MixerModules,
    hidden: torch.Tensor,
    ssm_state: torch.Tensor,
    *,
    conv_step: Projection,
    ssm: SSMParams,
) -> torch.Tensor:
    """One decode step of the mixer; ``ssm_state`` (and the caller's conv cache) updated in place.

    Args:
        mixer: the layer's projections, as in :func:`mixer_forward` (on ``(b, features)`` rows).
        hidden: ``(b, d_model)`` input of the new token.
        ssm_state: ``(b, d, n)``, or compact ``(b, d, k)`` for a uniform mask, float32.
        conv_step: pushes ``x (b, d)`` into the caller's conv cache and returns ``silu(conv)`` ``(b, d)``.
        ssm: the step's per-layer inputs.

    Returns:
        ``(b, d_model)``: ``out_proj`` of the gated step output cast to ``hidden.dtype``.
    """
    x, z = mixer.in_proj(hidden).chunk(2, dim=-1)  # (b, d) views
    u = conv_step(x)
    weight = mixer.dt_proj.weight
    dt, B, C = split_x_dbl(mixer.x_proj(u), weight.shape[1], ssm.A.shape[-1])  # (b, r), (b, n), (b, n) views
    y = _step_op(ssm_state, u, F.linear(dt, weight), B, C, z, ssm)
    return mixer.out_proj(y.to(hidden.dtype))
