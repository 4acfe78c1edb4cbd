"""Neural-network modules on top of the ops: 2:4 semi-structured linear layers.

Layering: imports only :mod:`sparsessm_kernels.ops` and :mod:`sparsessm_kernels.sparsity`
(plus torch).

* :class:`SemiStructuredLinear` -- an ``nn.Linear`` whose weight is 2:4 sparse along the input
  dimension, run by ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt or CUTLASS) on CUDA
  sm80+ with float16/bfloat16 weights, and as a masked dense matmul (identical results)
  elsewhere.
  On cuSPARSELt the weight is compressed once into a plain buffer and each forward is one
  ``torch._cslt_sparse_mm`` call, used per token-count bucket only where it timed faster than
  dense (:class:`BucketChoice`).
* :func:`sparsify_` / :func:`densify_` -- swap every eligible linear of a model in place, and back.
* :func:`semi_structured_status` -- which path this machine uses, and why (``sparsessm env``).
* :func:`check_2to4` / :func:`is_2to4` / :func:`prune_2to4_` -- validate or impose the pattern.
"""

from .semi_structured import (
    DEFAULT_M_BUCKETS,
    PATHS,
    BucketChoice,
    NotSemiStructuredError,
    SemiStructuredLinear,
    SparsifyReport,
    Timer,
    check_2to4,
    cuda_event_timer,
    densify_,
    is_2to4,
    prune_2to4_,
    semi_structured_status,
    sparsify_,
)

__all__ = [
    "DEFAULT_M_BUCKETS",
    "PATHS",
    "BucketChoice",
    "NotSemiStructuredError",
    "SemiStructuredLinear",
    "SparsifyReport",
    "Timer",
    "check_2to4",
    "cuda_event_timer",
    "densify_",
    "is_2to4",
    "prune_2to4_",
    "semi_structured_status",
    "sparsify_",
]
