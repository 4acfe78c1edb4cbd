"""State sparsity: validated masks with patterns, mask builders and mask files.

Layering: this package imports only :mod:`sparsessm_kernels.ops` and
:mod:`sparsessm_kernels._io` (plus torch and safetensors).

* :class:`StateSparsity` -- a :class:`~sparsessm_kernels.ops.StateLayout` validated against a
  pattern (``"column"``, ``"unstructured"``, ``"N:M"``).
* :func:`unstructured_mask`, :func:`nm_mask`, :func:`column_mask`, :func:`build_sparsity` --
  masks from importance scores (higher score = kept).
* :func:`save_masks`, :func:`load_masks`, :func:`load_sparsities`, :func:`head_mask_names` --
  safetensors mask files (state masks, and Mamba-2 head transition masks).
"""

from .builders import build_sparsity, column_mask, kept_count, nm_mask, unstructured_mask
from .io import MASKS_FORMAT, MaskFileError, head_mask_names, load_masks, load_sparsities, save_masks
from .state_sparsity import PATTERNS, StateSparsity, parse_pattern

__all__ = [
    "MASKS_FORMAT",
    "PATTERNS",
    "MaskFileError",
    "StateSparsity",
    "build_sparsity",
    "column_mask",
    "head_mask_names",
    "kept_count",
    "load_masks",
    "load_sparsities",
    "nm_mask",
    "parse_pattern",
    "save_masks",
    "unstructured_mask",
]
