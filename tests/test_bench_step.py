"""Smoke test of benchmarks/bench_step.py: it runs on the CPU and writes well-formed JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_step_smoke_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_step.py"), "--smoke", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "step" and data["device"] and data["date"] and data["versions"]
    assert data["timer"] == "perf_counter_rotating"
    assert [(r["variant"], r["k"]) for r in data["rows"]] == [("dense", 16), ("compact_2:4", 8)]
    for row in data["rows"]:
        assert row["median_ms"] > 0 and row["gbps"] > 0 and row["bytes"] > 0
        assert row["sets"] >= 2 and row["rotated_mb"] >= 1.0  # the rotation covers --rotate-mb
        assert row["max_abs_error"] < 1e-4  # checked against the float64 reference first
    assert data["rows"][1]["speedup_vs_dense"] > 0


def test_rotation_touches_every_set_once_per_round() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from bench_step import Problem, sets_for

    assert sets_for(256, 4096, 16, 8, 256, 2) * (256 * 4096 * 8 * 4) >= 256e6 * 0.9
    problem = Problem(2, 8, 16, "compact_2:4", 3, torch.device("cpu"))
    seen = []
    run = problem.rotating(lambda s: seen.append(id(s["state"])))
    for _ in range(6):
        run()
    assert len(set(seen[:3])) == 3 and seen[:3] == seen[3:]


def test_sweep_times_every_candidate_on_the_triton_step() -> None:
    """``--sweep`` (GPU) on the Triton step, here through Triton's CPU interpreter."""
    import argparse

    import pytest

    from sparsessm_kernels.ops.dispatch import available_backends

    usable, reason = available_backends()["triton"]
    if not usable:
        pytest.skip(f"the triton backend is not usable here: {reason}")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from bench_step import SWEEP, Problem, sweep

    problem = Problem(2, 8, 16, "compact_2:4", 2, torch.device("cpu"))
    rows = sweep(problem, torch.device("cpu"), argparse.Namespace(warmup=0, repeats=1))
    assert sorted((r["block_d"], r["num_warps"]) for r in rows) == sorted(SWEEP)
    assert [r["median_ms"] for r in rows] == sorted(r["median_ms"] for r in rows)
