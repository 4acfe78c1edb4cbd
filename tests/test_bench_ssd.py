"""Smoke test of ``benchmarks/bench_ssd.py``: the tiny ``--smoke`` run works on CPU (the Triton
kernels through the interpreter when ``TRITON_INTERPRET=1``, which ``tests/conftest.py`` sets
without a GPU), checks against the oracle and writes valid JSON; nothing asserts on timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_ssd.py"
HANG_TIMEOUT_S = 600  # a hang guard only


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(BENCH), *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=HANG_TIMEOUT_S, check=False,
    )  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run; on a GPU run the grid")
def test_smoke_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "ssd.json"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"benchmark", "device", "date", "versions", "config", "results", "skipped"} <= set(data)
    assert data["benchmark"] == "ssd" and data["timings_meaningful"] is False
    assert "meaningless" in proc.stderr + proc.stdout
    impls = {(r["op"], r["impl"]) for r in data["results"]}
    assert impls == {
        ("prefill", "ours-dense"),
        ("prefill", "ours-group50"),
        ("decode", "ours-dense"),
        ("decode", "ours-compact50"),
    }
    for row in data["results"]:
        assert row["median_ms"] > 0 and row["max_rel_err"] < 1e-3
    compact = next(r for r in data["results"] if r["impl"] == "ours-compact50")
    assert compact["kept"] == compact["d_state"] // 2 and compact["bytes"] > 0
    # the mamba_ssm baselines need a GPU: listed as skipped with the reason
    assert {s["what"].split()[-1] for s in data["skipped"]} == {"mamba_ssm-dense", "mamba_ssm-half-n"}
    assert all("CUDA" in s["reason"] or "mamba_ssm" in s["reason"] for s in data["skipped"])


def test_require_baselines_refuses_without_the_baselines(tmp_path: Path) -> None:
    proc = _run("--smoke", "--no-baselines", "--require-baselines", "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "--require-baselines" in proc.stderr
    assert not (tmp_path / "x.json").exists()
