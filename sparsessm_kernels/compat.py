"""mamba_ssm-compatible entry points: import these instead of mamba_ssm's.

::

    # before
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, mamba_inner_fn
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    # after
    from sparsessm_kernels.compat import selective_scan_fn, mamba_inner_fn, selective_state_update
    # Mamba-2 (SSD): mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined
    from sparsessm_kernels.compat import mamba_chunk_scan_combined

Same names, positional signatures and return conventions as mamba_ssm 2.x, run by
:func:`sparsessm_kernels.ops.selective_scan` / :func:`~sparsessm_kernels.ops.selective_state_update`
(Mamba-1) and :func:`~sparsessm_kernels.ops.ssd_scan` / :func:`~sparsessm_kernels.ops.ssd_state_update`
(Mamba-2, in :mod:`sparsessm_kernels._compat_ssd`) on the best backend for the tensors' device.
Every function also takes the keyword-only ``state_mask``, ``pruned_states`` and ``backend`` of the
ops (the Mamba-2 ones also ``head_transition_mask``; see ``docs/semantics.md``), so a stack that
already calls mamba_ssm's functions gets sparse states by passing one more keyword.

Differences from mamba_ssm, all deliberate:

* gradients come from the ops' backward, which recomputes through the reference (exact, slow);
* real ``A``, ``B`` and ``C`` only (complex ones raise ``TypeError``; mamba_ssm also takes complex
  ``A`` with complex ``(d, n)`` / interleaved ``(b, n, 2l)`` B and C);
* a time-invariant ``(d, n)`` ``B`` or ``C`` (mamba_ssm's ``is_variable_B=False``) may be of any
  float dtype (mamba_ssm requires float32), and may be combined with a grouped input-dependent
  other one (mamba_ssm's CUDA kernel then requires a single group);
* ``selective_state_update``: Mamba-1 shapes (``state (b, d, n)``, ``x (b, d)``) and the multi-head
  layout (``state (b, nheads, dim, n)``, ``x (b, nheads, dim)``, ``A (nheads, dim, n)``): tied head dims
  (the Mamba2 module's call) run the Mamba-2 step with SSD masks and ``head_transition_mask``, a full
  ``A`` runs the Mamba-1 step on ``nheads * dim`` channels. With a uniform mask the state may be compact.
* ``mamba_chunk_scan_combined``: ``return_varlen_states=True`` raises ``ValueError``.
* ``mamba_inner_fn`` ignores ``checkpoint_lvl`` (a backward-pass setting) and runs its causal
  convolution and the optional B / C / dt RMS norms in PyTorch.

Layering: imports only :mod:`sparsessm_kernels.ops`.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ._compat_ssd import mamba_chunk_scan_combined, multi_head_state_update
from .ops import SSDStateLayout, SSMParams, StateLayout, mixer_forward
from .ops import selective_scan as _selective_scan
from .ops import selective_state_update as _selective_state_update

__all__ = ["mamba_chunk_scan_combined", "mamba_inner_fn", "selective_scan_fn", "selective_state_update"]

_MaskArg = torch.Tensor | StateLayout | None
# The ops take state_batch_indices natively from this release on; older ops get gather / scatter.


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    state_mask: _MaskArg = None,
    pruned_states: str = "zero_transition",
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """mamba_ssm's ``selective_scan_fn`` (forward).

    ``u``, ``delta``, ``z``: ``(b, d, l)``; ``A``: ``(d, n)`` float32; ``B``, ``C``: each
    input-dependent ``(b, n, l)``, grouped ``(b, g, n, l)``, or time-invariant ``(d, n)``
    (mamba_ssm's ``is_variable_B`` / ``is_variable_C`` false: the same ``B[c]`` at every batch row
    and timestep); ``D``, ``delta_bias``: ``(d,)``.

    Returns ``out`` ``(b, d, l)`` in ``u.dtype`` (already gated by ``silu(z)`` when ``z`` is
    given), or ``(out, last_state)`` with ``last_state`` ``(b, d, n)`` float32 when
    ``return_last_state`` -- as mamba_ssm.
    """
    return _selective_scan(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        delta_softplus,
        return_last_state,
        state_mask=state_mask,
        pruned_states=pruned_states,
        backend=backend,
    )


def _reject_mixed_layouts(state: object, x: object, A: object) -> None:
    """A 3-D (Mamba-1) state with multi-head ``x`` or ``A``: say what each layout needs."""
    dims = {
        name: t.dim() for name, t in (("state", state), ("x", x), ("A", A)) if isinstance(t, torch.Tensor)
    }
    if dims.get("state", 3) > 3 or dims.get("x", 2) > 2 or dims.get("A", 2) > 2:
        shapes = {
            name: tuple(t.shape)
            for name, t in (("state", state), ("x", x), ("A", A))
            if isinstance(t, torch.Tensor)
        }
        raise ValueError(
            "selective_state_update: mixed layouts -- Mamba-1: state (batch, dim, dstate), x / dt / z "
            "(batch, dim), A (dim, dstate); multi-head (Mamba-2): state (batch, nheads, dim, dstate), x / dt "
            f"/ z (batch, nheads, dim), A (nheads, dim, dstate); got {shapes}"
        )


def selective_state_update(
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
    state_batch_indices: torch.Tensor | None = None,
    *,
    state_mask: _MaskArg | SSDStateLayout = None,
    pruned_states: str | None = None,
    backend: str = "auto",
    head_transition_mask: torch.Tensor | None = None,
    pad_slot_id: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """mamba_ssm's ``selective_state_update``: one decode step, ``state`` in place.

    Mamba-1 shapes below; the multi-head layout (``state (batch, nheads, dim, dstate)``) is
    described in :func:`sparsessm_kernels._compat_ssd.multi_head_state_update`.
    ``pruned_states`` None: the op's default (``"zero_transition"`` for Mamba-1, ``"remove"`` for a
    tied multi-head step). ``head_transition_mask``: bool ``(nheads,)``, tied multi-head steps only.

    Args:
        state: ``(batch, dim, dstate)``, or compact ``(batch, dim, k)`` with a uniform mask; with
            ``state_batch_indices`` it may have more rows than the batch (a slot pool).
        x, dt, z: ``(batch, dim)``. A: ``(dim, dstate)`` float32. B, C: ``(batch, dstate)`` or
            ``(batch, ngroups, dstate)``. D, dt_bias: ``(dim,)``.
        state_batch_indices: optional int ``(batch,)``: row ``i`` of the inputs reads and updates
            ``state[state_batch_indices[i]]`` (as in mamba_ssm; valid indices must be distinct).
            An index outside ``[0, slots)`` -- a pad slot such as -1, as in vLLM -- gives output 0
            and leaves the state alone.
        pad_slot_id, out: keyword-only, as vLLM's ``selective_state_update``: rows whose index
            equals ``pad_slot_id`` are skipped too; ``out`` is a preallocated output shaped like
            ``x``, written (0 on skipped rows) and returned.

    Returns:
        ``out`` ``(batch, dim)`` in ``x.dtype``.

    Raises:
        ValueError: mixed Mamba-1 / multi-head shapes, bad index shapes.
    """
    if isinstance(state, torch.Tensor) and state.dim() == 4:
        return multi_head_state_update(
            state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, state_mask=state_mask,
            pruned_states=pruned_states, head_transition_mask=head_transition_mask, backend=backend,
            pad_slot_id=pad_slot_id, out=out,
        )  # fmt: skip
    _reject_mixed_layouts(state, x, A)
    if head_transition_mask is not None:
        raise ValueError(
            "head_transition_mask: only for the multi-head (Mamba-2) layout, state (batch, nheads, dim, "
            f"dstate); got a Mamba-1 state {tuple(state.shape)}"
        )
    args = (x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    kwargs = {
        "state_mask": state_mask,
        "pruned_states": pruned_states or "zero_transition",
        "backend": backend,
    }
    return _selective_state_update(
        state, *args, **kwargs, state_batch_indices=state_batch_indices, pad_slot_id=pad_slot_id, out=out
    )


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim in float32, output in ``x.dtype`` (mamba_ssm's rms_norm_forward)."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype)


def mamba_inner_fn(
    xz: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    delta_proj_weight: torch.Tensor,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor | None = None,
    C: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    B_proj_bias: torch.Tensor | None = None,
    C_proj_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    checkpoint_lvl: int = 1,
    b_rms_weight: torch.Tensor | None = None,
    c_rms_weight: torch.Tensor | None = None,
    dt_rms_weight: torch.Tensor | None = None,
    b_c_dt_rms_eps: float = 1e-6,
    *,
    state_mask: _MaskArg = None,
    pruned_states: str = "zero_transition",
    backend: str = "auto",
) -> torch.Tensor:
    """mamba_ssm's fused ``mamba_inner_fn`` (forward): conv1d + SiLU, x_proj, dt_proj, scan, out_proj.

    Args:
        xz: ``(b, 2 * d, l)`` output of ``in_proj`` (x and z stacked on dim 1).
        conv1d_weight: ``(d, 1, w)``. x_proj_weight: ``(dt_rank + 2n, d)``.
        delta_proj_weight: ``(d, dt_rank)``. out_proj_weight: ``(d_model, d)``.
        A: ``(d, n)`` float32. B, C: ``None`` (input-dependent, the rows of ``x_proj`` after the
            ``dt_rank`` ones: B first, C last) or given, typically time-invariant ``(d, n)`` (then
            ``x_proj_weight`` has no rows for it: ``dt_rank + n`` rows with one of them given,
            ``dt_rank`` with both), and ``B_proj_bias`` / ``C_proj_bias`` do not apply to it.
        b_rms_weight, c_rms_weight, dt_rms_weight, b_c_dt_rms_eps: FalconMamba's RMS norms (over
            the ``n`` states of B / C at every step: input-dependent B / C only).

    Returns:
        ``(b, l, d_model)``.
    """
    if A.is_complex():
        raise TypeError("A: complex tensors are not supported (only real Mamba-1 SSMs)")
    for name, given, weight in (("B", B, b_rms_weight), ("C", C, c_rms_weight)):
        if weight is not None and isinstance(given, torch.Tensor) and given.dim() == 2:
            raise ValueError(
                f"{name.lower()}_rms_weight: normalises an input-dependent {name} over its states at every "
                f"step, but {name} is time-invariant with shape {tuple(given.shape)} (mamba_ssm fails here "
                f"too); normalise it once before the call instead"
            )
    seqlen = xz.shape[-1]
    delta_rank = delta_proj_weight.shape[1]
    d_state = A.shape[-1]
    width = conv1d_weight.shape[-1]
    w = conv1d_weight.reshape(conv1d_weight.shape[0], 1, width).float()
    conv_bias = None if conv1d_bias is None else conv1d_bias.float()

    def conv(x: torch.Tensor) -> torch.Tensor:  # like causal_conv1d: float32 math, input dtype out
        out = F.conv1d(x.float(), w, conv_bias, padding=width - 1, groups=x.shape[1])[..., :seqlen]
        return F.silu(out).to(xz.dtype)

    def seq_param(
        given: torch.Tensor | None, t: torch.Tensor, bias: torch.Tensor | None, rms: torch.Tensor | None
    ) -> torch.Tensor:
        """B or C: ``given``, or its ``(b, l, n)`` columns of ``x_dbl`` (a view unless biased / normed)."""
        if given is not None:
            return given.transpose(-1, -2) if given.dim() > 2 else given  # the producer's (..., l, n)
        if bias is not None:
            t = t + bias.to(t.dtype)
        return t if rms is None else _rms_norm(t, rms, b_c_dt_rms_eps)

    def split(x_dbl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dt`` and the input-dependent B / C from the rows of ``x_proj`` (B first, C last)."""
        cols = x_dbl.shape[-1]
        dt = x_dbl[..., :delta_rank]
        B_ = seq_param(B, x_dbl[..., delta_rank : delta_rank + d_state], B_proj_bias, b_rms_weight)
        C_ = seq_param(C, x_dbl[..., cols - d_state :], C_proj_bias, c_rms_weight)
        return dt, B_, C_

    def delta(dt: torch.Tensor) -> torch.Tensor:  # (b, l, r) -> (b, d, l), then FalconMamba's dt norm
        out = delta_proj_weight @ dt.transpose(1, 2)
        return _rms_norm(out.transpose(1, 2), dt_rms_weight, b_c_dt_rms_eps).transpose(1, 2)

    projections = SimpleNamespace(
        in_proj=None,
        x_proj=lambda u: F.linear(u, x_proj_weight),
        dt_proj=SimpleNamespace(weight=delta_proj_weight),
        out_proj=lambda y: F.linear(y, out_proj_weight, out_proj_bias),
    )
    return mixer_forward(
        projections,
        None,
        xz=xz,
        conv=conv,
        ssm=SSMParams(A, D, delta_bias, state_mask, pruned_states, backend, bool(delta_softplus)),
        split=split,
        dt_proj=None if dt_rms_weight is None else delta,
    )
