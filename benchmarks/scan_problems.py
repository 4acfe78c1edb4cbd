"""The problems ``bench_scan.py`` times: shapes, masks, inputs, byte counts and call helpers."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

import torch

import sparsessm_kernels as ssk
from sparsessm_kernels import StateLayout
from sparsessm_kernels.sparsity import column_mask, nm_mask, unstructured_mask

# d_inner of each Mamba-1 size (d_model * expand 2); all use d_state n = 16.
PRESETS: dict[str, int] = {"130m": 1536, "370m": 2048, "790m": 3072, "1.4b": 4096, "2.8b": 5120}
DEFAULT_SEQLEN = 2048
DEFAULT_STATE = 16
DEFAULT_MASKS = ("dense", "column50", "2:4", "unstructured50")
# Bounds on the relative error max|out - ref| / max|ref| against the float64 reference.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TF_BACKEND = "transformers-fallback"
MAMBA_BACKEND = "mamba_ssm"

# The GPU grid (GPU only): Mamba-1 layers 130M / 370M / 1.4B / 2.8B, l in {512, 2048, 8192},
# batch {1, 8}, n = 16, bf16; dense vs column 50% vs 2:4 vs unstructured 50%; decode at batch 1, 64, 256.
GPU_GRID = {
    "shapes": [
        f"{b}x{PRESETS[size]}x{DEFAULT_STATE}x{l}"
        for size in ("130m", "370m", "1.4b", "2.8b")
        for l in (512, 2048, 8192)
        for b in (1, 8)
    ],
    "decode_batch": [1, 64, 256],
    "pruned_states": "zero_transition",
    "dtype": "bfloat16",
}
PRESET_CHOICES = ("gpu-grid",)

# Peak DRAM bandwidth (GB/s, vendor figures) by GPU name fragment, most specific first.
PEAK_GBPS: list[tuple[str, float]] = [
    ("h200", 4800.0),
    ("h100 nvl", 3900.0),
    ("h100 pcie", 2000.0),
    ("h100", 3350.0),  # SXM5 80GB HBM3
    ("gh200", 4000.0),
    ("a100-sxm4-80gb", 2039.0),
    ("a100 80gb pcie", 1935.0),
    ("a100", 1555.0),  # 40GB
    ("l40s", 864.0),
    ("l4", 300.0),
    ("a10g", 600.0),
    ("rtx 4090", 1008.0),
    ("v100", 900.0),
]


def known_peak_gbps(device: torch.device) -> float | None:
    """The vendor peak memory bandwidth of this GPU when it is in ``PEAK_GBPS``, else ``None``."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for fragment, gbps in PEAK_GBPS:
        if fragment in name:
            return gbps
    return None


def pattern_of(mask: MaskSpec) -> str:
    """The result row's ``pattern`` field: ``dense``, ``column``, ``N:M`` or ``unstructured``."""
    if mask.kind == "nm" and mask.nm is not None:
        return f"{mask.nm[0]}:{mask.nm[1]}"
    return mask.kind


def scan_bytes(shape: Shape, itemsize: int, with_z: bool = True) -> int:
    """Bytes of ``u``, ``delta``, ``z``, ``B``, ``C`` read and ``out`` written by one scan."""
    big = shape.b * shape.d * shape.l * itemsize
    return big * (4 if with_z else 3) + 2 * shape.b * shape.n * shape.l * itemsize


def decode_bytes(b: int, d: int, n: int, k: int, itemsize: int, state_itemsize: int) -> int:
    """Bytes of one decode step: the ``(b, d, k)`` state read and written, ``x``, ``dt``, ``z``,
    ``out`` ``(b, d)`` and ``B``, ``C`` ``(b, n)``."""
    return 2 * b * d * k * state_itemsize + 4 * b * d * itemsize + 2 * b * n * itemsize


# Quick smoke configuration (tests / CI): everything runs, nothing is big.
QUICK = {
    "shapes": ["1x64x16x128"],
    "repeats": 2,
    "warmup": 1,
    "decode_batch": [1, 4],
    "decode_steps": 2,
    "check_len": 32,
    "pruned_states": "both",
}


class CorrectnessError(RuntimeError):
    """A backend disagrees with the reference by more than the tolerance."""


@dataclass(frozen=True)
class Error:
    """Error against the float64 reference: ``abs`` = max|out - ref|, ``rel`` = abs / max|ref|."""

    abs: float
    rel: float

    @staticmethod
    def of(out: torch.Tensor, ref: torch.Tensor) -> Error:
        diff = float((out.double() - ref.double()).abs().max().item())
        scale = float(ref.double().abs().max().item())
        return Error(diff, diff / max(scale, 1e-12))

    @staticmethod
    def worst(*errors: Error) -> Error:
        return Error(max(e.abs for e in errors), max(e.rel for e in errors))


# ------------------------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class Shape:
    b: int
    d: int
    n: int
    l: int
    name: str

    def as_dict(self) -> dict[str, int]:
        """``{b, d, n, l}`` plus the same sizes under the names of the result schema."""
        return shape_dict(self.b, self.d, self.n, self.l)

    def label(self) -> str:
        return f"b{self.b} d{self.d} n{self.n} l{self.l}"


def shape_dict(b: int, d: int, n: int, l: int) -> dict[str, int]:
    return {"b": b, "d": d, "n": n, "l": l, "batch": b, "d_inner": d, "seqlen": l, "d_state": n}


def parse_shape(text: str, batch: int | None, seqlen: int | None) -> Shape:
    """A preset (``130m`` ... ``2.8b``, see ``PRESETS``) or ``BxDxNxL`` (e.g. ``1x1536x16x2048``)."""
    key = text.strip().lower()
    if key in PRESETS:
        b, d, n, l = 1, PRESETS[key], DEFAULT_STATE, DEFAULT_SEQLEN
        name = key
    else:
        match = re.fullmatch(r"(\d+)x(\d+)x(\d+)x(\d+)", key)
        if not match:
            raise argparse.ArgumentTypeError(
                f"shape {text!r}: expected a preset ({', '.join(PRESETS)}) or BxDxNxL such as 1x1536x16x2048"
            )
        b, d, n, l = (int(v) for v in match.groups())
        name = key
    b = batch if batch is not None else b
    l = seqlen if seqlen is not None else l
    if min(b, d, n, l) < 1:
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: every dimension must be >= 1, got b={b} d={d} n={n} l={l}"
        )
    return Shape(b=b, d=d, n=n, l=l, name=name)


# ------------------------------------------------------------------------------------- masks
@dataclass(frozen=True)
class MaskSpec:
    name: str
    kind: str  # dense | column | unstructured | nm
    sparsity: float = 0.0
    nm: tuple[int, int] | None = None


def parse_mask(text: str) -> MaskSpec:
    """``dense``, ``column<pct>`` / ``unstructured<pct>`` (e.g. ``column50``) or ``N:M`` (e.g. ``2:4``)."""
    key = text.strip().lower()
    if key == "dense":
        return MaskSpec("dense", "dense")
    match = re.fullmatch(r"(column|unstructured)(\d+(?:\.\d+)?)", key)
    if match:
        pct = float(match.group(2))
        if not 0 <= pct < 100:
            raise argparse.ArgumentTypeError(f"mask {text!r}: the percentage must be in [0, 100)")
        return MaskSpec(key, match.group(1), pct / 100.0)
    match = re.fullmatch(r"(\d+):(\d+)", key)
    if match:
        keep, m = int(match.group(1)), int(match.group(2))
        if not 1 <= keep <= m:
            raise argparse.ArgumentTypeError(f"mask {text!r}: N:M needs 1 <= N <= M")
        return MaskSpec(key, "nm", 1.0 - keep / m, (keep, m))
    raise argparse.ArgumentTypeError(
        f"mask {text!r}: expected dense, column<pct>, unstructured<pct> or N:M (e.g. column50, 2:4)"
    )


def build_layout(spec: MaskSpec, d: int, n: int, device: torch.device, seed: int) -> StateLayout | None:
    """The prebuilt layout a model would hold for this mask (random importance scores)."""
    if spec.kind == "dense":
        return None
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(d, n, generator=gen)
    if spec.kind == "column":
        mask = column_mask(scores, spec.sparsity)
    elif spec.kind == "unstructured":
        mask = unstructured_mask(scores, spec.sparsity)
    else:
        assert spec.nm is not None
        mask = nm_mask(scores, *spec.nm)
    return StateLayout(mask.to(device))


# ------------------------------------------------------------------------------------ inputs
def _randn(gen: torch.Generator, *shape: int, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std + mean


def make_A(d: int, n: int) -> torch.Tensor:
    """Mamba's S4D-real init: ``A_log = log(1..n)``, ``A = -exp(A_log)``, so ``A[:, j] = -(j + 1)``."""
    A_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(d, n)
    return -torch.exp(A_log).contiguous()


def scan_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Realistic prefill inputs: raw ``delta ~ N(-2, 0.5)`` (softplus applied by the op, ~0.13)."""
    gen = torch.Generator().manual_seed(seed)
    b, d, n, l = shape.b, shape.d, shape.n, shape.l
    tensors = {
        "u": _randn(gen, b, d, l).to(dtype),
        "delta": _randn(gen, b, d, l, mean=-2.0, std=0.5).to(dtype),
        "A": make_A(d, n),
        "B": _randn(gen, b, n, l).to(dtype),
        "C": _randn(gen, b, n, l).to(dtype),
        "D": torch.ones(d) + 0.1 * _randn(gen, d),
        "z": _randn(gen, b, d, l).to(dtype),
        "delta_bias": 0.1 * _randn(gen, d),
    }
    return {k: v.to(device).contiguous() for k, v in tensors.items()}


def truncate(inputs: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """The first ``length`` timesteps of the sequence tensors (others unchanged)."""
    out = dict(inputs)
    for key in ("u", "delta", "B", "C", "z"):
        out[key] = inputs[key][..., :length].contiguous()
    return out


def decode_inputs(
    d: int, n: int, batch: int, dtype: torch.dtype, device: torch.device, seed: int
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "state": _randn(gen, batch, d, n, std=0.5),  # float32 SSM state, as Mamba keeps it
        "x": _randn(gen, batch, d).to(dtype),
        "dt": _randn(gen, batch, d, mean=-2.0, std=0.5).to(dtype),
        "A": make_A(d, n),
        "B": _randn(gen, batch, n).to(dtype),
        "C": _randn(gen, batch, n).to(dtype),
        "D": torch.ones(d) + 0.1 * _randn(gen, d),
        "z": _randn(gen, batch, d).to(dtype),
        "dt_bias": 0.1 * _randn(gen, d),
    }
    return {k: v.to(device).contiguous() for k, v in tensors.items()}


SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
STEP_ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def scan_args(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Positional ``u, delta, A, B, C, D, z, delta_bias`` (mamba_ssm's selective_scan_fn order)."""
    return tuple(t[k] for k in SCAN_ARGS)


def scan_call(
    t: dict[str, torch.Tensor],
    layout: StateLayout | None,
    pruned_states: str,
    backend: str,
    segments: int = 0,
) -> torch.Tensor:
    """The public scan (``delta_softplus=True``); on the cuda backend with ``segments`` lanes per
    channel (``--cuda-time-segments``; 0: the launcher's choice) the same plan with that launch
    configuration, run through the op body."""
    if backend != "cuda" or not segments:
        return ssk.selective_scan(
            *scan_args(t), True, state_mask=layout, pruned_states=pruned_states, backend=backend
        )
    from sparsessm_kernels.ops.library import eager_shape_class, run_scan
    from sparsessm_kernels.ops.plan import ScanInputs
    from sparsessm_kernels.ops.selective_scan import scan_plan

    inputs = ScanInputs(*scan_args(t))
    plan = scan_plan(inputs, eager_shape_class(inputs), layout, pruned_states, True, False, backend)
    return run_scan(plan._replace(time_segments=segments), inputs)[0]


def step_args(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Positional ``x, dt, A, B, C, D, z, dt_bias`` (after ``state``) of selective_state_update."""
    return tuple(t[k] for k in STEP_ARGS)


def _f64(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in inputs.items()}


def kept_state_inputs(inputs: dict[str, torch.Tensor], layout: StateLayout) -> dict[str, torch.Tensor]:
    """Scan inputs restricted to the kept states of a column mask: ``A[:, kept]``, ``B[:, kept]``,
    ``C[:, kept]`` (d_state = k). A dense scan of them is the column mask under ``remove``: what a
    stock kernel (mamba_ssm) gets from removing the pruned states physically."""
    kept = layout.kept_idx.long().to(inputs["A"].device)
    out = dict(inputs)
    out["A"] = inputs["A"][:, kept].contiguous()
    out["B"] = inputs["B"][:, kept].contiguous()
    out["C"] = inputs["C"][:, kept].contiguous()
    return out
