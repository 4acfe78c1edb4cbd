"""The ``bench_scan.py`` cases as pytest-benchmark tests, for tracking regressions that way.

    pytest benchmarks --benchmark-only                 # needs pytest-benchmark
    pytest benchmarks --benchmark-only --benchmark-json out.json

On a GPU: the GPU-grid layers (bf16, n=16, 1.4B layer at l=2048, batch 1 and 8; decode at batch
1, 64, 256) on the Triton backend. On CPU: the torch backend at reduced sizes. Not part of the
default test run (``testpaths`` is ``tests``); nothing here asserts on timings, only that every
timed configuration agrees with the reference on a short prefix first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytest_benchmark")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs

import sparsessm_kernels as ssk

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
BACKEND = "triton" if CUDA and ssk.available_backends()["triton"][0] else "torch"
SCAN_SHAPES = (
    [bs.Shape(b, bs.PRESETS["1.4b"], 16, 2048, f"1.4b_b{b}") for b in (1, 8)]
    if CUDA
    else [bs.Shape(1, 256, 16, 256, "cpu_small")]
)
DECODE_BATCHES = (1, 64, 256) if CUDA else (1, 16)
DECODE_D = bs.PRESETS["1.4b"] if CUDA else 256
MASKS = [bs.parse_mask(m) for m in bs.DEFAULT_MASKS]


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.name)
@pytest.mark.parametrize("shape", SCAN_SHAPES, ids=lambda s: s.name)
def test_scan(benchmark, shape: bs.Shape, mask: bs.MaskSpec) -> None:
    inputs = bs.scan_inputs(shape, DTYPE, DEVICE, seed=0)
    layout = bs.build_layout(mask, shape.d, shape.n, DEVICE, seed=0)

    def run(t):
        return ssk.selective_scan(*bs.scan_args(t), True, state_mask=layout, backend=BACKEND)

    check = bs.truncate(inputs, 32)
    ref = ssk.selective_scan_ref(*bs.scan_args(bs._f64(check)), True, state_mask=layout)
    assert float((run(check).double() - ref).abs().max()) <= bs.TOLERANCE[DTYPE]
    benchmark.extra_info.update(
        {"backend": BACKEND, "pattern": bs.pattern_of(mask), "shape": shape.as_dict(), "dtype": str(DTYPE)}
    )
    benchmark(lambda: (run(inputs), _sync()))


@pytest.mark.parametrize("mask", [bs.parse_mask("dense"), bs.parse_mask("2:4")], ids=lambda m: m.name)
@pytest.mark.parametrize("batch", DECODE_BATCHES)
def test_decode(benchmark, batch: int, mask: bs.MaskSpec) -> None:
    inputs = bs.decode_inputs(DECODE_D, 16, batch, DTYPE, DEVICE, seed=0)
    layout = bs.build_layout(mask, DECODE_D, 16, DEVICE, seed=0)
    state = inputs["state"] if layout is None else layout.compact_state(inputs["state"]).contiguous()
    benchmark.extra_info.update({"backend": BACKEND, "pattern": bs.pattern_of(mask), "batch": batch})

    def step():
        ssk.selective_state_update(state, *bs.step_args(inputs), True, state_mask=layout, backend=BACKEND)
        _sync()

    benchmark(step)
