"""``A_log`` entries stored as exactly 0: pruned states in the SparseSSM authors' checkpoints.

The SparseSSM research code (github.com/CFinTech/SparseSSM) prunes a state by multiplying its
``A_log`` entry by 0, so ``A = -exp(0) = -1``, and saves the model like that (mamba_ssm layout:
``config.json`` + ``pytorch_model.bin``). Its perplexity and zero-shot evaluation multiply the
discrete transition ``exp(delta * A)`` by ``(A != -1)``: a pruned state's transition is 0 while
its feed-through ``delta * B * u`` stays -- this package's ``zero_transition``. Loaded as a plain
checkpoint (stock kernels, or :class:`~.mamba.MambaLM` without masks) those states run with
``A = -1``, a real transition ``exp(-delta)``.

* :func:`zeroed_a_log_mask` -- the entries the authors' evaluation treats as pruned.
* :func:`find_zeroed_a_log_layers` -- layers with more exact zeros than an initial value explains;
  :meth:`MambaLM.from_pretrained <.mamba.MambaLM.from_pretrained>` warns about them
  (:class:`ZeroedALogWarning`), naming ``sparsessm convert --zero-a-log-pruned``.
* :func:`zeroed_a_log_layouts` -- per-layer masks that mark those entries pruned.

Why a threshold and why state 0 is left out: Mamba's S4D-real initialisation sets
``A_log[:, s] = log(s + 1)``, so ``A_log[:, 0] = log(1) = 0`` exactly in an untrained or briefly
trained model, and every other state starts at ``log(2)`` or more. A layer is reported when the
zeros in states ``1 .. n-1`` (not already pruned by the checkpoint's own masks) are at least
:data:`ZEROED_A_LOG_MIN_FRACTION` of those entries: SparseSSM checkpoints have tens of percent
there, a trained or freshly initialised model none.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..ops import StateLayout

__all__ = [
    "ZEROED_A_LOG_MIN_FRACTION",
    "ZeroedALogWarning",
    "find_zeroed_a_log_layers",
    "zeroed_a_log_layouts",
    "zeroed_a_log_mask",
    "zeroed_a_log_message",
]

ZEROED_A_LOG_MIN_FRACTION = 0.01
"""Share of a layer's ``A_log`` entries outside state 0 that must be exact zeros to report it."""


class ZeroedALogWarning(UserWarning):
    """A checkpoint's ``A_log`` holds exact zeros the way the SparseSSM authors' code stores pruned states."""


def zeroed_a_log_mask(a_log: torch.Tensor) -> torch.Tensor:
    """Where the SparseSSM authors' evaluation zeroes the transition.

    Args:
        a_log: ``(d_inner, n)`` ``A_log`` of one layer, any float dtype and device.

    Returns:
        ``(d_inner, n)`` bool, ``True`` where ``A = -exp(A_log)`` computed in float32 is exactly
        ``-1`` -- their test ``A != -1``. That is ``A_log == 0``, and also ``|A_log|`` below about
        ``6e-8``, where float32 ``exp`` rounds to 1.
    """
    return torch.exp(a_log.detach().float()) == 1.0


def _unmasked(a_log: torch.Tensor, layout: StateLayout | None) -> torch.Tensor:
    """Zeroed entries the layer's own mask does not prune already: ``(d_inner, n)`` bool."""
    zero = zeroed_a_log_mask(a_log).cpu()
    if layout is not None:
        zero &= layout.to("cpu").channel_mask(a_log.shape[0])
    return zero


def find_zeroed_a_log_layers(
    a_logs: Mapping[int, torch.Tensor],
    layouts: Mapping[int, StateLayout | None] | None = None,
) -> dict[int, tuple[int, int]]:
    """Layers whose ``A_log`` zeros look like SparseSSM-pruned states (see the module docstring).

    Args:
        a_logs: ``{layer index: (d_inner, n) A_log}``.
        layouts: the layers' existing masks (entries they prune are not counted).

    Returns:
        ``{layer index: (zeroed entries not already masked, entries)}`` for the reported layers
        only; the counts include state 0.
    """
    found: dict[int, tuple[int, int]] = {}
    for i, a_log in sorted(a_logs.items()):
        zero = _unmasked(a_log, (layouts or {}).get(i))
        d, n = zero.shape
        if n < 2:
            continue
        beyond_init = int(zero[:, 1:].sum())
        if beyond_init > 0 and beyond_init >= ZEROED_A_LOG_MIN_FRACTION * d * (n - 1):
            found[i] = (int(zero.sum()), d * n)
    return found


def zeroed_a_log_layouts(
    a_logs: Mapping[int, torch.Tensor],
    layouts: Mapping[int, tuple[StateLayout | None, str]] | None = None,
) -> dict[int, StateLayout]:
    """Per-layer masks that prune every zeroed entry (``zero_transition``), kept states elsewhere.

    Args:
        a_logs: ``{layer index: (d_inner, n) A_log}``.
        layouts: ``{layer index: (existing layout or None, pruned_states)}``; an existing
            ``zero_transition`` mask is combined (an entry is kept only if both keep it).

    Returns:
        ``{layer index: (d_inner, n) StateLayout}`` for the layers with at least one zeroed entry
        that is not already pruned (other layers are left out: nothing changes for them).

    Raises:
        ValueError: a layer whose existing mask uses ``pruned_states="remove"`` has zeroed entries
            among its kept states (one layer has one kind of pruned state).
    """
    out: dict[int, StateLayout] = {}
    for i, a_log in sorted(a_logs.items()):
        layout, mode = (layouts or {}).get(i, (None, "zero_transition"))
        zero = _unmasked(a_log, layout)
        if not bool(zero.any()):
            continue
        if layout is not None and mode == "remove":
            raise ValueError(
                f"layer {i}: its mask removes states (pruned_states='remove') and its A_log has "
                f"{int(zero.sum())} exact zero(s) among the kept states; a layer holds one kind of pruned "
                "state, so these cannot be marked zero_transition as well"
            )
        keep = ~zeroed_a_log_mask(a_log).cpu()
        if layout is not None:
            keep &= layout.to("cpu").channel_mask(a_log.shape[0])
        out[i] = StateLayout(keep.contiguous())
    return out


def zeroed_a_log_message(source: str, found: Mapping[int, tuple[int, int]], convert_hint: str) -> str:
    """The warning text for :func:`find_zeroed_a_log_layers`'s result.

    Args:
        source: the checkpoint as the user named it.
        found: ``{layer: (zeroed, entries)}``.
        convert_hint: the command that converts the checkpoint.
    """
    listed = ", ".join(f"{i} ({z} of {t})" for i, (z, t) in found.items())
    return (
        f"{source}: A_log has exact zeros (A = -1) in layers {listed}, the way the SparseSSM authors' code "
        "stores pruned states. They run here as ordinary states with A = -1 (transition exp(-delta)), not "
        "as pruned states; the authors' evaluation zeroes their transition instead. To run them as "
        f"pruned states (zero_transition, sparse kernels), convert the checkpoint once: {convert_hint}"
    )
