"""Functional ops, one package per op, each with its reference and backends beside it.

* :mod:`.selective_scan`: the prefill scan (``selective_scan``, ``selective_scan_ref``);
* :mod:`.state_update`: the decode step (``selective_state_update``, ``selective_state_update_ref``);
* :mod:`.saliency`: the SparseSSM calibration statistic (``state_saliency``, ``state_saliency_ref``);
* :mod:`.ssd`: the Mamba-2 (SSD) scan and step.

Shared by the ops: :mod:`.layout` (``StateLayout``), :mod:`.checks` (argument checks, dtype
rules), :mod:`.dispatch` (backend resolution), :mod:`.library` (``torch.library`` registration and
the eager fast path), :mod:`.triton` (probe, kernel helpers, AOT compile) and :mod:`.cuda` (the
compiled extension's loader).

The package ``sparsessm_kernels.ops.selective_scan`` shares its name with the function exported
here: ``ops.selective_scan`` is the function; import its modules with ``from
sparsessm_kernels.ops.selective_scan.<module> import ...``.

This layer imports nothing from ``sparsity``, ``models``, ``prune`` or ``cli``.
"""

from .dispatch import BackendUnavailableError, available_backends, resolve_backend
from .layout import MAX_D_STATE, StateLayout
from .saliency import state_saliency, state_saliency_ref
from .selective_scan import selective_scan, selective_scan_ref
from .state_update import selective_state_update, selective_state_update_ref

__all__ = [
    "MAX_D_STATE",
    "BackendUnavailableError",
    "StateLayout",
    "available_backends",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "state_saliency",
    "state_saliency_ref",
]

# Mamba-2 (SSD) ops: sparsessm_kernels/ops/ssd/
from .ssd import SSDStateLayout, ssd_scan, ssd_scan_ref, ssd_state_update, ssd_state_update_ref

__all__ += ["SSDStateLayout", "ssd_scan", "ssd_scan_ref", "ssd_state_update", "ssd_state_update_ref"]

# The Mamba-1 mixer forward in stages (models, pruning capture, integrations, compat): ops/mixer.py
from .mixer import MIXER_STAGES, MixerConstants, SSMParams, mixer_forward, mixer_step, split_x_dbl  # noqa: E402

__all__ += ["MIXER_STAGES", "MixerConstants", "SSMParams", "mixer_forward", "mixer_step", "split_x_dbl"]
