"""The Mamba-2 (SSD) launches the compile-time kernel report covers, on ``meta`` tensors.

:func:`ssd_representative_calls` lists ``(name, launches)`` of the calls whose Triton kernels
``benchmarks/triton_kernel_report.py`` compiles ahead of time for sm_90 (through
:func:`sparsessm_kernels.ops.triton.aot.compile_report`): every row of the scan's configuration
table (:data:`~.triton_scan.SSD_CONFIG_TABLE`) on the layer shapes of the benchmark, dense and at
50% per-group / per-head masks in both ``pruned_states`` modes, head transition pruning,
``seq_idx``, initial states, float32 / float64 inputs, and the decode step's modes. Only shapes,
dtypes and strides matter, so full-size layers need no memory.
"""

from __future__ import annotations

from typing import Any

import torch

SHAPES = {
    # name: (nheads, headdim, ngroups, d_state)
    "Mamba2-370M": (32, 64, 1, 128),
    "Mamba2-780M": (48, 64, 1, 128),
    "Mamba2-2.7B": (80, 64, 1, 128),
    "Nemotron-H-like": (128, 64, 8, 128),
}
"""Layer shapes of the benchmark (``benchmarks/bench_ssd.py`` uses the same table)."""


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _tables(mask: str, h: int, n: int) -> tuple[torch.Tensor | None, ...]:
    """``(head_mask, kept_idx, kept_count)`` shaped like a layout's: ``dense``, ``half`` (50%
    kept per group or head, uniform), ``ragged`` (a non-uniform per-head mask, k_max 3n/4) or
    ``none`` (every state pruned)."""
    if mask == "dense":
        return None, None, None
    k = {"half": n // 2, "ragged": (3 * n) // 4, "none": 0}[mask]
    return _meta(h, n, dtype=torch.bool), _meta(h, k, dtype=torch.int32), _meta(h, dtype=torch.int32)


def ssd_scan_call(
    shape: str = "Mamba2-2.7B",
    b: int = 1,
    l: int = 2048,
    dtype: torch.dtype = torch.bfloat16,
    mask: str = "dense",
    pruned_states: str = "remove",
    head_prune: bool = False,
    seq_idx: bool = False,
    init: bool = False,
    d_state: int | None = None,
    chunk_size: int = 256,
) -> list[Any]:
    """The four launches of one ``ssd_scan`` call on ``meta`` tensors."""
    from .triton_scan import plan_ssd_scan

    h, p, g, n = SHAPES[shape]
    n = d_state or n
    weight = torch.float64 if dtype == torch.float64 else torch.float32
    head_mask, kept_idx, kept_count = _tables(mask, h, n)
    launches, _, _ = plan_ssd_scan(
        _meta(b, l, h, p, dtype=dtype), _meta(b, l, h, dtype=dtype), _meta(h, dtype=weight),
        _meta(b, l, g, n, dtype=dtype), _meta(b, l, g, n, dtype=dtype), _meta(h, dtype=weight),
        _meta(b, l, h, p, dtype=dtype), _meta(h, dtype=weight), True, (0.0, float("inf")),
        _meta(b, h, p, n, dtype=weight) if init else None, True,
        _meta(b, l, dtype=torch.int32) if seq_idx else None, head_mask, kept_idx, kept_count,
        _meta(h, dtype=torch.bool) if head_prune else None, pruned_states, chunk_size,
    )  # fmt: skip
    return launches


def ssd_step_call(
    shape: str = "Mamba2-2.7B",
    b: int = 256,
    dtype: torch.dtype = torch.bfloat16,
    mask: str = "dense",
    compact: bool = True,
    pruned_states: str = "remove",
    batch_indices: bool = True,
    state_dtype: torch.dtype = torch.float32,
) -> list[Any]:
    """The launch of one ``ssd_state_update`` call on ``meta`` tensors."""
    from .triton_step import plan_ssd_state_update

    h, p, g, n = SHAPES[shape]
    head_mask, kept_idx, kept_count = _tables(mask, h, n)
    k = kept_idx.shape[-1] if kept_idx is not None and compact else n
    weight = torch.float64 if dtype == torch.float64 else torch.float32
    launches, _ = plan_ssd_state_update(
        _meta(b, h, p, k, dtype=state_dtype), _meta(b, h, p, dtype=dtype), _meta(b, h, dtype=dtype),
        _meta(h, dtype=weight), _meta(b, g, n, dtype=dtype), _meta(b, g, n, dtype=dtype),
        _meta(h, dtype=weight), _meta(b, h, p, dtype=dtype), _meta(h, dtype=weight), True,
        (0.0, float("inf")), head_mask, kept_idx, kept_count, _meta(h, dtype=torch.bool), pruned_states,
        _meta(b, dtype=torch.int32) if batch_indices else None, -1,
    )  # fmt: skip
    return launches


def ssd_representative_calls() -> list[tuple[str, list[Any]]]:
    """``(name, launches)`` of the SSD calls of the compile-time report (see the module doc)."""
    from .triton_scan import SSD_CONFIG_TABLE

    f32, f64 = torch.float32, torch.float64
    zt = "zero_transition"
    scans: list[tuple[str, dict]] = []
    for cls, width, _ in SSD_CONFIG_TABLE:  # one call per row of the table (its kept width)
        scans.append((f"table {cls}: dense d_state {width}", dict(d_state=width)))
    scans += [
        ("Mamba2-370M dense", dict(shape="Mamba2-370M")),
        ("Mamba2-2.7B dense, batch 8, l 8192", dict(b=8, l=8192)),
        ("Mamba2-2.7B dense, d_state 64 (mamba_ssm at n/2)", dict(d_state=64)),
        ("Mamba2-2.7B per-group 50%", dict(mask="half")),
        ("Mamba2-2.7B per-group 50% zero_transition", dict(mask="half", pruned_states=zt)),
        ("Nemotron-H-like dense (8 groups)", dict(shape="Nemotron-H-like")),
        ("Nemotron-H-like per-head ragged, head pruning", dict(shape="Nemotron-H-like", mask="ragged",
                                                                head_prune=True)),
        ("Mamba2-780M every state pruned, zero_transition", dict(shape="Mamba2-780M", mask="none",
                                                                  pruned_states=zt)),
        ("Mamba2-2.7B seq_idx, initial states, per-group 50%", dict(seq_idx=True, init=True, mask="half")),
        ("Mamba2-2.7B fp32 dense", dict(dtype=f32)),
        ("Mamba2-2.7B fp64 per-group 50%", dict(dtype=f64, mask="half")),
        ("Mamba2-2.7B dense, chunk 64", dict(chunk_size=64)),
    ]  # fmt: skip
    steps = [
        ("decode dense", dict(mask="dense")),
        ("decode per-group 50% compact", dict(mask="half")),
        ("decode per-group 50% compact zero_transition", dict(mask="half", pruned_states=zt)),
        ("decode per-head ragged, masked dense state", dict(mask="ragged", compact=False)),
        ("decode dense, batch 1, no state_batch_indices", dict(b=1, batch_indices=False)),
        ("decode fp64 per-group 50% compact", dict(mask="half", dtype=f64, state_dtype=f64)),
        ("decode bf16 state, per-group 50% compact", dict(mask="half", state_dtype=torch.bfloat16)),
    ]
    calls = [(f"ssd_scan {name}", ssd_scan_call(**kw)) for name, kw in scans]
    calls += [(f"ssd_state_update {name}", ssd_step_call(**kw)) for name, kw in steps]
    return calls
