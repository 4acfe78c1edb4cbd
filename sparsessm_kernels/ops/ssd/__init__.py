"""Mamba-2 (SSD) ops: the chunked scan and the decode step, with sparse states.

One folder per op: ``reference.py`` (the float64-capable oracle), ``torch_backend.py`` (chunked
SSD), ``checks.py`` (argument validation), ``layout.py`` (state masks), ``dispatch.py`` (the public
ops). Semantics: ``docs/semantics.md``, section "Mamba-2 (SSD)".
"""

from .dispatch import DEFAULT_CHUNK_SIZE, ssd_scan, ssd_state_update
from .layout import SSDStateLayout
from .reference import ssd_scan_ref, ssd_state_update_ref

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "SSDStateLayout",
    "ssd_scan",
    "ssd_scan_ref",
    "ssd_state_update",
    "ssd_state_update_ref",
]
