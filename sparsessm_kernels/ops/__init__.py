"""Functional ops: reference semantics, backends and dispatch.

This layer imports nothing from ``sparsity``, ``models``, ``prune`` or ``cli``.
"""

from .dispatch import available_backends, selective_scan, selective_state_update
from .layout import MAX_D_STATE, StateLayout
from .reference import selective_scan_ref, selective_state_update_ref

__all__ = [
    "MAX_D_STATE",
    "StateLayout",
    "available_backends",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
]

# Mamba-2 (SSD) ops: sparsessm_kernels/ops/ssd/
from .ssd import SSDStateLayout, ssd_scan, ssd_scan_ref, ssd_state_update, ssd_state_update_ref

__all__ += ["SSDStateLayout", "ssd_scan", "ssd_scan_ref", "ssd_state_update", "ssd_state_update_ref"]

# The Mamba-1 mixer forward in stages (models, pruning capture, integrations, compat): ops/mixer.py
from .mixer import MIXER_STAGES, MixerConstants, SSMParams, mixer_forward, mixer_step, split_x_dbl  # noqa: E402

__all__ += ["MIXER_STAGES", "MixerConstants", "SSMParams", "mixer_forward", "mixer_step", "split_x_dbl"]
