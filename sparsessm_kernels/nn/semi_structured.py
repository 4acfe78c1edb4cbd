"""2:4 semi-structured sparse linear layers.

A weight is **2:4 along the input dimension** when every group of 4 consecutive input columns
``W[r, 4g : 4g + 4]`` of every output row ``r`` holds at most 2 nonzeros. NVIDIA GPUs from sm80
(Ampere) on multiply such weights at up to twice the dense rate through
``torch.sparse.to_sparse_semi_structured``, which stores the kept half of the values plus metadata.

:class:`SemiStructuredLinear` runs one of three paths (``SemiStructuredLinear.path``):

* ``"cusparselt"``: cuSPARSELt called directly (CUDA sm80+, float16 / bfloat16 weights, cuSPARSELt
  available in this torch build). The weight is compressed once, at conversion, into a plain
  buffer (``torch._cslt_compress``); each forward is one ``torch._cslt_sparse_mm(packed, x.t(), bias,
  transpose_result=True, alg_id=...)`` -- no tensor subclass, no transposed copy. The algorithm is
  searched once per M bucket (``torch._cslt_sparse_mm_search``), and per M bucket the layer runs
  2:4 only where timing at conversion showed it faster than the masked dense ``F.linear`` (see
  :class:`BucketChoice`);
* ``"cutlass"``: ``torch.sparse.SparseSemiStructuredTensorCUTLASS`` (CUDA sm80+, float16 /
  bfloat16, when cuSPARSELt is missing or does not work here);
* ``"masked_dense"``: the dense weight, whose pruned entries are exactly zero, in a plain
  ``F.linear`` -- CPU, GPUs older than sm80, float32 weights. Bit-identical to the original
  ``nn.Linear``.

Shapes that miss the kernels' minimums (rows and columns must be multiples of 32 x 64 for
CUTLASS and 16 x 16 for cuSPARSELt in half precision; e.g. Mamba's ``x_proj`` with
``dt_rank + 2n = 80`` or 96 rows) are padded with zero rows / columns once, at conversion; the
output is sliced back, so the module always has the original ``in_features`` / ``out_features``.

Layering: this module imports nothing from the rest of the package except what ``nn`` may use.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_M_BUCKETS",
    "PATHS",
    "BucketChoice",
    "NotSemiStructuredError",
    "SemiStructuredLinear",
    "SparsifyReport",
    "Timer",
    "bucket_of",
    "check_2to4",
    "cuda_event_timer",
    "densify_",
    "is_2to4",
    "prune_2to4_",
    "semi_structured_status",
    "sparsify_",
]

logger = logging.getLogger("sparsessm_kernels")

PATHS = ("cusparselt", "cutlass", "masked_dense")
"""Execution paths of :class:`SemiStructuredLinear` (``path="auto"`` picks one)."""

SPARSE_DTYPES = (torch.float16, torch.bfloat16)
"""Weight dtypes the semi-structured kernels run (others use the masked dense path)."""

_MIN_CC = (8, 0)

DEFAULT_M_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
"""Token-count buckets of the ``cusparselt`` path: a forward with ``M`` tokens (all leading dims
flattened) uses the choice of the smallest bucket ``>= M`` (the largest bucket above that)."""

SELECT_CHOICES = ("timed", "sparse")
"""``select`` of :meth:`SemiStructuredLinear.from_linear`: time 2:4 against masked dense per bucket
and keep the faster, or run 2:4 in every bucket."""

_CSLT_DENSE_MULTIPLE = 8
"""cuSPARSELt (half precision) needs the dense operand's dimensions to be multiples of 8; the token
count of an input is padded up to one (torch's own subclass does the same)."""

Timer = Callable[[str, int, Callable[[], object]], float]
"""``timer(kind, m, fn) -> milliseconds per call`` of ``fn`` (``kind`` is ``"sparse"`` or
``"dense"``, ``m`` the bucket's token count): how :meth:`SemiStructuredLinear.from_linear` times
the two candidates of a bucket. Tests inject fixed timings through it."""


@dataclass(frozen=True)
class BucketChoice:
    """What a ``cusparselt`` layer runs for inputs of up to ``bucket`` tokens.

    Attributes:
        bucket: the largest token count ``M`` of the bucket (the timed size).
        sparse: run ``torch._cslt_sparse_mm`` (else the masked dense ``F.linear``).
        alg_id: the cuSPARSELt algorithm found by ``torch._cslt_sparse_mm_search`` at ``M = bucket``.
        sparse_ms, dense_ms: the timings the choice rests on (``None`` when not timed).
    """

    bucket: int
    sparse: bool
    alg_id: int = 0
    sparse_ms: float | None = None
    dense_ms: float | None = None


def bucket_of(m: int, buckets: tuple[int, ...]) -> int:
    """Index of the smallest bucket ``>= m`` in ascending ``buckets`` (the last one above them)."""
    for i, b in enumerate(buckets):
        if m <= b:
            return i
    return len(buckets) - 1


def _check_buckets(buckets: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    out = tuple(buckets)
    if (
        not out
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in out)
        or list(out) != sorted(set(out))
    ):
        raise ValueError(f"buckets: expected strictly ascending positive integers, got {buckets!r}")
    return out


class NotSemiStructuredError(ValueError):
    """A weight does not follow the 2:4 pattern along its input dimension."""


# ------------------------------------------------------------------------------ the pattern
def _violation(weight: torch.Tensor) -> tuple[int, int, int] | None:
    """``(row, group, nonzeros)`` of the first group of 4 with more than 2 nonzeros, else None."""
    out_f, in_f = weight.shape
    counts = (weight.detach().reshape(out_f, in_f // 4, 4) != 0).sum(dim=-1)
    bad = torch.nonzero(counts > 2)
    if bad.numel() == 0:
        return None
    row, group = (int(v) for v in bad[0].tolist())
    return row, group, int(counts[row, group])


def check_2to4(weight: torch.Tensor, name: str = "weight") -> None:
    """Raise :class:`NotSemiStructuredError` unless ``weight`` ``(out, in)`` is 2:4 along ``in``.

    The message names ``name``, the first offending output row and group of 4 input columns,
    and the values found there.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise NotSemiStructuredError(
            f"{name}: expected a 2-D (out_features, in_features) weight, got {shape}"
        )
    if weight.is_meta:
        raise NotSemiStructuredError(f"{name}: the weight is on the meta device (no values to check)")
    in_f = weight.shape[1]
    if in_f % 4:
        raise NotSemiStructuredError(
            f"{name}: in_features={in_f} is not a multiple of 4, so the weight cannot be 2:4 along the "
            "input dimension"
        )
    found = _violation(weight)
    if found is not None:
        row, group, count = found
        values = [float(v) for v in weight[row, 4 * group : 4 * group + 4].detach().float().tolist()]
        raise NotSemiStructuredError(
            f"{name}: weight is not 2:4 sparse along the input dimension: row {row}, group {group} "
            f"(input columns {4 * group}..{4 * group + 3}) has {count} nonzeros {values}; at most 2 "
            "of every 4 consecutive weights per row may be nonzero"
        )


def is_2to4(weight: torch.Tensor) -> bool:
    """Whether ``weight`` ``(out, in)`` is 2:4 sparse along the input dimension."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.is_meta or weight.shape[1] % 4:
        return False
    return _violation(weight) is None


@torch.no_grad()
def prune_2to4_(module_or_weight: nn.Linear | torch.Tensor) -> torch.Tensor:
    """Impose 2:4 along the input dimension by magnitude, in place; return the bool keep mask.

    In every group of 4 consecutive input columns the 2 entries of largest ``|w|`` are kept (ties:
    the lower index). A helper for tests, demos and benchmarks -- not a pruning method.
    """
    weight = module_or_weight.weight if isinstance(module_or_weight, nn.Linear) else module_or_weight
    if weight.dim() != 2 or weight.shape[1] % 4:
        raise ValueError(
            f"prune_2to4_: expected an (out, in) weight with in % 4 == 0, got {tuple(weight.shape)}"
        )
    out_f, in_f = weight.shape
    groups = weight.reshape(out_f, in_f // 4, 4)
    order = torch.sort(groups.abs().float(), dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :2], True)
    groups.mul_(keep.to(weight.dtype))
    return keep.reshape(out_f, in_f)


# ------------------------------------------------------------------------------ availability
def _sparse_class(path: str) -> type:
    if path == "cusparselt":
        return torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    return torch.sparse.SparseSemiStructuredTensorCUTLASS


def _min_shape(path: str, dtype: torch.dtype) -> tuple[int, int]:
    """``(rows, cols)`` the compressed weight's shape must be a multiple of."""
    cfg = _sparse_class(path)._DTYPE_SHAPE_CONSTRAINTS[dtype]
    return int(cfg.sparse_min_rows), int(cfg.sparse_min_cols)


def _cusparselt_available() -> tuple[bool, str]:
    try:
        mod = torch.backends.cusparselt
        if mod.is_available():
            return True, f"cuSPARSELt {mod.version()}"
        return False, "this torch build has no cuSPARSELt"
    except Exception as exc:  # very old torch, odd builds
        return False, f"cuSPARSELt unavailable ({type(exc).__name__}: {exc})"


@functools.cache
def _probe(path: str, device_index: int, dtype: torch.dtype) -> tuple[bool, str]:
    """Compress a small 2:4 matrix with ``path`` on ``cuda:device_index`` and multiply by it."""
    device = torch.device("cuda", device_index)
    try:
        rows, cols = _min_shape(path, dtype)
        rows, cols = max(rows, 64), max(cols, 64)
        gen = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(rows, cols, generator=gen)
        prune_2to4_(w)
        w = w.to(device=device, dtype=dtype)
        x = torch.randn(8, cols, generator=gen).to(device=device, dtype=dtype)
        if path == "cusparselt":
            got = _cslt_linear(torch._cslt_compress(w), x, None, 0).float()
        else:
            got = F.linear(x, _sparse_class(path).from_dense(w)).float()
        want = F.linear(x, w).float()
        err = float((got - want).abs().max())
        scale = float(want.abs().max()) + 1.0
        if not err <= 2e-2 * scale:
            return False, f"{path} probe gave wrong results (max abs err {err:.3g})"
        return True, "probe ok"
    except Exception as exc:
        return False, f"{path} failed on this GPU ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


def _gpu_name(device: torch.device) -> tuple[str, tuple[int, int]]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return props.name, (props.major, props.minor)


def _resolve(device: torch.device, dtype: torch.dtype, requested: str = "auto") -> tuple[str, str]:
    """``(path, reason)`` for a weight of ``dtype`` on ``device``; ``requested`` may force a path.

    Raises ``ValueError`` when a sparse path is requested explicitly but cannot run.
    """
    if requested not in ("auto", *PATHS):
        raise ValueError(f"path: expected one of {('auto', *PATHS)}, got {requested!r}")
    if requested == "masked_dense":
        return "masked_dense", "requested explicitly (path='masked_dense')"

    def refuse(reason: str) -> tuple[str, str]:
        if requested != "auto":
            raise ValueError(f"path={requested!r} cannot run here: {reason}")
        return "masked_dense", reason

    if device.type != "cuda":
        return refuse(
            f"{device.type}: the semi-structured (2:4) kernels of torch.sparse need a CUDA GPU of compute "
            "capability 8.0+; running a masked dense matmul (same results, no speedup)"
        )
    if not torch.cuda.is_available():
        return refuse("CUDA is not available")
    index = device.index if device.index is not None else torch.cuda.current_device()
    name, cc = _gpu_name(torch.device("cuda", index))
    if cc < _MIN_CC:
        return refuse(
            f"{name} is sm{cc[0]}{cc[1]}; 2:4 semi-structured kernels need sm80+ (masked dense matmul)"
        )
    if dtype not in SPARSE_DTYPES:
        return refuse(
            f"{dtype} weights: torch's 2:4 kernels run float16/bfloat16 here (masked dense matmul instead; "
            "cast the model to half precision for the sparse path)"
        )
    cslt_ok, cslt_reason = _cusparselt_available()
    candidates = [requested] if requested != "auto" else (["cusparselt"] if cslt_ok else []) + ["cutlass"]
    notes = [] if cslt_ok else [cslt_reason]
    for cand in candidates:
        if cand == "cusparselt" and not cslt_ok:
            return refuse(cslt_reason)
        ok, why = _probe(cand, index, dtype)
        if ok:
            what = cslt_reason if cand == "cusparselt" else "CUTLASS 2:4 kernels"
            extra = f" ({'; '.join(notes)})" if notes else ""
            return cand, f"{what} on {name} (sm{cc[0]}{cc[1]}), {str(dtype).replace('torch.', '')}{extra}"
        notes.append(why)
    return refuse("; ".join(notes) + " -- masked dense matmul instead")


def semi_structured_status(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16
) -> tuple[str, str]:
    """Which path 2:4 linears of ``dtype`` take on ``device``, and why: ``(path, reason)``.

    ``path`` is one of :data:`PATHS`. ``device=None`` means the current CUDA device when one is
    visible, else the CPU. On CUDA the first call compresses and multiplies a small matrix to
    make sure the kernels really run here (cached afterwards). Never raises.
    """
    try:
        if device is None:
            device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return _resolve(torch.device(device), dtype)
    except Exception as exc:
        return "masked_dense", f"could not determine ({type(exc).__name__}: {exc})"


# ------------------------------------------------------------------------------ direct cuSPARSELt
def _cslt_linear(
    packed: torch.Tensor, x2: torch.Tensor, bias: torch.Tensor | None, alg_id: int
) -> torch.Tensor:
    """``x2 @ W.T + bias`` with the compressed ``W``: one ``torch._cslt_sparse_mm`` call.

    Args:
        packed: ``torch._cslt_compress(W)`` of the (padded) ``(out, in)`` weight, a plain tensor.
        x2: ``(M, in)`` contiguous, ``M`` a multiple of :data:`_CSLT_DENSE_MULTIPLE`.
        bias: ``(out,)`` in the weight dtype, or ``None``.

    Returns:
        ``(M, out)``: ``transpose_result=True`` makes cuSPARSELt write the product row-major, so
        no transposed copy follows. Only the keywords shared by every torch since 2.1 are passed
        (the split-k arguments changed between releases).
    """
    return torch._cslt_sparse_mm(packed, x2.t(), bias, transpose_result=True, alg_id=alg_id)


def _pad_tokens(x2: torch.Tensor, in_padded: int) -> torch.Tensor:
    """``(M, in)`` -> ``(M', in_padded)``, zero-padded; ``M'`` the next multiple of 8 (no copy when
    nothing is padded)."""
    pad_m = (-x2.shape[0]) % _CSLT_DENSE_MULTIPLE
    pad_k = in_padded - x2.shape[1]
    if pad_m or pad_k:
        x2 = F.pad(x2, (0, pad_k, 0, pad_m))
    return x2.contiguous()


def cuda_event_timer(warmup: int = 3, repeats: int = 10) -> Timer:
    """A :data:`Timer` timing ``fn`` eagerly with CUDA events: ``warmup`` calls, then the median of
    ``repeats`` single calls (ms). Eager timing includes the host cost per call (cuSPARSELt's plan
    set-up in released torch), which is what an eager forward pays."""

    def timer(kind: str, m: int, fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        samples.sort()
        return samples[len(samples) // 2]

    return timer


# ------------------------------------------------------------------------------ the module
class SemiStructuredLinear(nn.Module):
    """A linear layer whose weight is 2:4 sparse along the input dimension.

    Build it with :meth:`from_linear`; :meth:`to_linear` gives the plain ``nn.Linear`` back.

    Attributes:
        in_features, out_features: as in ``nn.Linear`` (never the padded sizes).
        path: ``"cusparselt"``, ``"cutlass"`` or ``"masked_dense"`` (see the module docstring).
        reason: why that path was chosen.
        name: the module's name (for messages).
        weight: ``masked_dense`` and ``cusparselt``: the original dense ``Parameter`` (shared, not
            copied; ``cusparselt`` runs it in the buckets where dense won); ``cutlass``: the
            compressed ``SparseSemiStructuredTensor`` (padded shape).
        bias: the original bias ``Parameter`` (or ``None``).
        buckets: ``cusparselt``: the ascending token-count buckets; ``plan``: one
            :class:`BucketChoice` per bucket (empty on the other paths).

    ``cusparselt`` keeps its compressed weight in the non-persistent buffer ``packed`` (compressed
    once, in the weight dtype): ``state_dict`` holds only the dense weight, but the model must not
    be cast to another dtype afterwards (the forward refuses). The ``cutlass`` weight cannot be
    moved between devices or saved as a regular tensor: move the model first, and :func:`densify_`
    before ``save_pretrained`` / ``state_dict``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight: torch.Tensor,
        bias: nn.Parameter | None,
        *,
        path: str,
        reason: str = "",
        name: str = "linear",
        padded: tuple[int, int] | None = None,
        weight_requires_grad: bool = False,
        packed: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.path, self.reason, self.name = path, reason, name
        self.padded_out, self.padded_in = (
            padded if padded is not None else (self.out_features, self.in_features)
        )
        self._weight_requires_grad = weight_requires_grad
        if isinstance(weight, nn.Parameter):
            self.weight = weight
        else:
            self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        sparse_bias = None
        if path != "masked_dense" and bias is not None:
            sparse_bias = bias.detach().to(dtype=weight.dtype)
            if self.padded_out > self.out_features:
                sparse_bias = F.pad(sparse_bias, (0, self.padded_out - self.out_features))
        self.register_buffer("_sparse_bias", sparse_bias, persistent=False)
        self.register_buffer("packed", packed, persistent=False)
        self._packed_dtype = None if packed is None else packed.dtype
        self.buckets: tuple[int, ...] = ()
        self.plan: tuple[BucketChoice, ...] = ()

    # -------------------------------------------------------------- conversion
    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        name: str | None = None,
        path: str = "auto",
        buckets: tuple[int, ...] | list[int] = DEFAULT_M_BUCKETS,
        select: str = "timed",
        timer: Timer | None = None,
        _timings: dict | None = None,
    ) -> SemiStructuredLinear:
        """Wrap ``linear`` (its weight must already be 2:4 along the input dimension).

        Args:
            linear: an ``nn.Linear`` whose pruned weights are exactly zero.
            name: used in error messages (default: ``"linear"``).
            path: ``"auto"`` (best available, see :func:`semi_structured_status`) or one of
                :data:`PATHS` to force it (a sparse path that cannot run here raises ``ValueError``).
            buckets: ``cusparselt``: token-count buckets (:data:`DEFAULT_M_BUCKETS`).
            select: ``cusparselt``: ``"timed"`` (per bucket, 2:4 only where it times faster than
                the masked dense matmul) or ``"sparse"`` (2:4 in every bucket).
            timer: a :data:`Timer` for ``select="timed"`` (default :func:`cuda_event_timer`).

        Raises:
            NotSemiStructuredError: the weight is not 2:4; the message names the module, the row
                and the group of 4 input columns.
        """
        name = name or "linear"
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name}: expected an nn.Linear, got {type(linear).__name__}")
        buckets = _check_buckets(buckets)
        if select not in SELECT_CHOICES:
            raise ValueError(f"select: expected one of {SELECT_CHOICES}, got {select!r}")
        weight = linear.weight
        check_2to4(weight, name)
        chosen, reason = _resolve(weight.device, weight.dtype, path)
        out_f, in_f = weight.shape
        if chosen == "masked_dense":
            return cls(in_f, out_f, weight, linear.bias, path=chosen, reason=reason, name=name)
        min_rows, min_cols = _min_shape(chosen, weight.dtype)
        pad_out, pad_in = (-out_f) % min_rows, (-in_f) % min_cols
        with torch.no_grad():
            dense = F.pad(weight.detach(), (0, pad_in, 0, pad_out)).contiguous()
            if chosen == "cusparselt":
                stored, packed = weight, torch._cslt_compress(dense)
            else:
                stored, packed = _sparse_class(chosen).from_dense(dense), None
        module = cls(
            in_f,
            out_f,
            stored,
            linear.bias,
            path=chosen,
            reason=reason,
            name=name,
            padded=(out_f + pad_out, in_f + pad_in),
            weight_requires_grad=weight.requires_grad,
            packed=packed,
        )
        if chosen == "cusparselt":
            module._plan_buckets(buckets, select, timer, {} if _timings is None else _timings)
        return module

    @torch.no_grad()
    def _plan_buckets(
        self, buckets: tuple[int, ...], select: str, timer: Timer | None, timings: dict
    ) -> None:
        """Fill :attr:`plan`: per bucket, search the cuSPARSELt algorithm once and (``"timed"``) time
        this module's own 2:4 and dense forwards on random inputs of ``bucket`` tokens; 2:4 is kept
        only where strictly faster. ``timings`` caches the measurements per (shape, dtype, device,
        bias, bucket), so layers of one shape are timed once per conversion call."""
        if select == "timed" and timer is None:
            if self.weight.device.type != "cuda":
                raise ValueError(f"{self.name}: select='timed' needs a CUDA weight or an explicit timer")
            timer = cuda_event_timer()
        gen = torch.Generator(device="cpu").manual_seed(0)
        w = self.weight
        self.buckets = buckets
        plan = []
        for bucket in buckets:
            key = (tuple(w.shape), w.dtype, w.device, self.bias is not None, bucket)
            if key in timings:
                plan.append(timings[key])
                continue
            x = torch.randn(bucket, self.in_features, generator=gen).to(w.device, w.dtype)
            try:
                xp = _pad_tokens(x, self.padded_in)
                alg_id = int(
                    torch._cslt_sparse_mm_search(
                        self.packed, xp.t(), self._sparse_bias, transpose_result=True
                    )
                )
            except (RuntimeError, AttributeError) as exc:  # a torch without a working search
                logger.info(
                    "%s: cuSPARSELt algorithm search failed at M=%d (%s); alg_id=0", self.name, bucket, exc
                )
                alg_id = 0
            if select == "sparse":
                choice = BucketChoice(bucket, True, alg_id)
            else:
                assert timer is not None
                sparse_ms = float(timer("sparse", bucket, lambda x=x, a=alg_id: self._sparse_forward(x, a)))
                dense_ms = float(timer("dense", bucket, lambda x=x: F.linear(x, w, self.bias)))
                choice = BucketChoice(bucket, sparse_ms < dense_ms, alg_id, sparse_ms, dense_ms)
            timings[key] = choice
            plan.append(choice)
        self.plan = tuple(plan)
        n_sparse = sum(c.sparse for c in plan)
        self.reason += f"; 2:4 in {n_sparse} of {len(plan)} token buckets ({select})"

    def dense_weight(self) -> torch.Tensor:
        """The dense ``(out_features, in_features)`` weight (a new tensor on the ``cutlass`` path)."""
        if self.path != "cutlass":
            return self.weight
        with torch.no_grad():
            return self.weight.to_dense()[: self.out_features, : self.in_features].contiguous()

    def to_linear(self) -> nn.Linear:
        """The equivalent ``nn.Linear``; ``masked_dense`` / ``cusparselt`` reuse the original parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        if self.path != "cutlass":
            linear.weight = self.weight
        else:
            linear.weight = nn.Parameter(self.dense_weight(), requires_grad=self._weight_requires_grad)
        linear.bias = self.bias
        return linear

    # -------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: expected input (..., {self.in_features}), got {tuple(x.shape)}")
        if x.dtype != self.weight.dtype:
            raise TypeError(
                f"{self.name}: input dtype {x.dtype} does not match the {self.path} 2:4 weight dtype "
                f"{self.weight.dtype}"
            )

    def _sparse_forward(self, x: torch.Tensor, alg_id: int) -> torch.Tensor:
        """``(..., in)`` -> ``(..., out)`` through one ``torch._cslt_sparse_mm`` call."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        y = _cslt_linear(self.packed, _pad_tokens(x2, self.padded_in), self._sparse_bias, alg_id)
        if y.shape != (m, self.out_features):
            y = y[:m, : self.out_features]
        return y.reshape(*lead, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path == "masked_dense":
            return F.linear(x, self.weight, self.bias)
        self._check_input(x)
        if self.path == "cusparselt":
            if self.packed.dtype != self._packed_dtype:
                raise RuntimeError(
                    f"{self.name}: the compressed 2:4 weight was cast from {self._packed_dtype} to "
                    f"{self.packed.dtype}; densify_ the model before changing its dtype, then sparsify_ again"
                )
            m = x.numel() // self.in_features
            choice = self.plan[bucket_of(m, self.buckets)]
            if m == 0 or not choice.sparse:
                return F.linear(x, self.weight, self.bias)
            return self._sparse_forward(x, choice.alg_id)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 0:
            return x.new_zeros(*lead, self.out_features)
        if self.padded_in > self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        y = F.linear(x2, self.weight, self._sparse_bias)
        if self.padded_out > self.out_features:
            y = y[:, : self.out_features]
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        pad = ""
        if (self.padded_out, self.padded_in) != (self.out_features, self.in_features):
            pad = f", padded=({self.padded_out}, {self.padded_in})"
        sparse_buckets = ""
        if self.plan:
            sparse_buckets = f", sparse_buckets={[c.bucket for c in self.plan if c.sparse]}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, path={self.path!r}{pad}{sparse_buckets}"
        )


# ------------------------------------------------------------------------------ model-level
@dataclass
class SparsifyReport:
    """What :func:`sparsify_` did.

    Attributes:
        swapped: ``{module name: path}`` of the linears replaced by :class:`SemiStructuredLinear`.
        skipped: ``{module name: reason}`` of the ``nn.Linear`` modules left alone.
        reasons: ``{path: why}`` for every path used.
    """

    swapped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def paths(self) -> dict[str, int]:
        """How many linears run on each path."""
        counts: dict[str, int] = {}
        for path in self.swapped.values():
            counts[path] = counts.get(path, 0) + 1
        return counts

    def __str__(self) -> str:
        lines = [f"sparsify_: {len(self.swapped)} linear(s) swapped, {len(self.skipped)} skipped"]
        for path, count in sorted(self.paths().items()):
            lines.append(f"  {path}: {count} ({self.reasons.get(path, '')})")
        for name, why in self.skipped.items():
            lines.append(f"  skipped {name}: {why}")
        return "\n".join(lines)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _shared_weight_owners(model: nn.Module) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(pname)
    return owners


def sparsify_(
    model: nn.Module,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    *,
    path: str = "auto",
    strict: bool = False,
    buckets: tuple[int, ...] | list[int] = DEFAULT_M_BUCKETS,
    select: str = "timed",
    timer: Timer | None = None,
) -> SparsifyReport:
    """Replace, in place, every eligible ``nn.Linear`` of ``model`` by a :class:`SemiStructuredLinear`.

    Eligible: exactly ``nn.Linear`` (subclasses are left alone), selected by ``filter_fn(name,
    module)`` when given, with a weight that is 2:4 along the input dimension and not shared with
    another module (tied embeddings stay dense).

    Args:
        model: any module (not itself a linear).
        filter_fn: ``(qualified name, module) -> bool``; ``None`` selects every linear.
        path: ``"auto"`` or one of :data:`PATHS` (see :meth:`SemiStructuredLinear.from_linear`).
        strict: raise :class:`NotSemiStructuredError` for a selected linear that is not 2:4
            instead of skipping it.
        buckets, select, timer: for the ``cusparselt`` path, as in
            :meth:`SemiStructuredLinear.from_linear`; linears of one shape are timed once per call.

    Returns:
        A :class:`SparsifyReport` (names swapped with their path, names skipped with the reason).
    """
    report = SparsifyReport()
    owners = _shared_weight_owners(model)
    timings: dict = {}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        if not name:
            report.skipped["<root>"] = (
                "the model itself is a linear; wrap it or call SemiStructuredLinear.from_linear"
            )
            continue
        if filter_fn is not None and not filter_fn(name, module):
            report.skipped[name] = "excluded by filter_fn"
            continue
        shared = [n for n in owners.get(id(module.weight), []) if n != f"{name}.weight"]
        if shared:
            report.skipped[name] = f"weight is shared with {shared[0]} (tied); left dense"
            continue
        try:
            check_2to4(module.weight, name)
        except NotSemiStructuredError as exc:
            if strict:
                raise
            report.skipped[name] = str(exc).split(": ", 1)[1]
            continue
        new = SemiStructuredLinear.from_linear(
            module, name=name, path=path, buckets=buckets, select=select, timer=timer, _timings=timings
        )
        _set_submodule(model, name, new)
        report.swapped[name] = new.path
        report.reasons.setdefault(new.path, new.reason)
    logger.info("%s", report)
    return report


def densify_(model: nn.Module) -> list[str]:
    """Replace every :class:`SemiStructuredLinear` of ``model`` by its ``nn.Linear``, in place.

    Returns the names of the restored modules. On the ``masked_dense`` path the original weight
    and bias parameters are put back (the model is exactly what it was before :func:`sparsify_`).
    """
    restored = []
    for name, module in list(model.named_modules()):
        if isinstance(module, SemiStructuredLinear) and name:
            _set_submodule(model, name, module.to_linear())
            restored.append(name)
    return restored
