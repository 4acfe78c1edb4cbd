"""sparsessm_kernels: sparse selective-scan kernels and SparseSSM pruning for Mamba-1 models.

Public API::

    import sparsessm_kernels as ssk
    out = ssk.selective_scan(u, delta, A, B, C, D, z, delta_bias, True, state_mask=mask)
    out = ssk.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True, state_mask=mask)

Semantics are documented in docs/semantics.md.
"""

from ._version import __version__
from .ops import (
    StateLayout,
    available_backends,
    selective_scan,
    selective_scan_ref,
    selective_state_update,
    selective_state_update_ref,
)

__all__ = [
    "StateLayout",
    "__version__",
    "available_backends",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
]

# Mamba-2 (SSD): ssk.ssd_scan(x, dt, A, B, C, ...) and ssk.ssd_state_update(state, x, dt, A, B, C, ...)
from .ops import SSDStateLayout, ssd_scan, ssd_scan_ref, ssd_state_update, ssd_state_update_ref

__all__ += ["SSDStateLayout", "ssd_scan", "ssd_scan_ref", "ssd_state_update", "ssd_state_update_ref"]
