"""Smoke test of benchmarks/bench_e2e.py --quick: it runs, guards correctness and writes valid JSON.

Nothing here asserts on timings (see benchmarks/README.md). The script runs in a subprocess, as
a user runs it, so its global settings (threads, inference mode, scratch buffers) stay out of the
test process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

TOP_KEYS = {"benchmark", "device", "date", "versions", "backends", "config", "results", "skipped"}
RESULT_KEYS = {
    "kind": str,
    "backend": str,
    "shape": dict,
    "mask": str,
    "pruned_states": (str, type(None)),
    "median_ms": float,
    "min_ms": float,
    "iqr_ms": float,
    "q1_ms": float,
    "q3_ms": float,
    "max_ms": float,
    "speedup_vs_dense": (float, type(None)),
    "speedup_vs_dense_significant": (bool, type(None)),
    "speedup_vs_transformers": (float, type(None)),
    "max_abs_err_vs_reference": float,
    "tokens_per_s": float,
}
VARIANTS = {"dense", "ssm_col50", "ssm_2:4", "ssm_col50+proj_2:4"}


REPO = Path(__file__).resolve().parents[1]
HANG_TIMEOUT_S = 300  # a hang guard only (the quick run takes seconds), never a performance bound


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_e2e.py"), "--threads", "1", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("e2e") / "e2e_quick.json"
    proc = _run("--quick", "--out", str(out))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "tokens/s" in proc.stdout and "vs dense" in proc.stdout  # the tables were printed
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # atomic write
    return json.loads(out.read_text(encoding="utf-8"))


def test_quick_schema(quick_json: dict) -> None:
    assert set(quick_json) >= TOP_KEYS and quick_json["benchmark"] == "e2e"
    config = quick_json["config"]
    assert config["quick"] is True and config["shapes"][0]["name"] == "tiny"
    assert config["semi_structured"]["path"] in ("cusparselt", "cutlass", "masked_dense")
    if quick_json["device"]["type"] == "cpu":
        assert any("CPU run" in note for note in config["notes"])
        assert any("2:4" in s["what"] for s in quick_json["skipped"])
    for row in quick_json["results"]:
        for key, types in RESULT_KEYS.items():
            assert isinstance(row.get(key), types), (key, row.get(key))
        assert row["kind"] in ("prefill", "decode", "proj")
        assert 0 <= row["min_ms"] <= row["median_ms"] and row["tokens_per_s"] > 0
        err = row["max_abs_err_vs_reference"]
        assert math.isfinite(err) and err <= config["tolerance"]
        assert row["speedup_vs_dense"] is not None and row["speedup_vs_dense"] > 0
        assert {"b", "l", "d", "n"} <= set(row["shape"])


def test_quick_covers_variants_batches_and_projections(quick_json: dict) -> None:
    rows = quick_json["results"]
    for kind in ("prefill", "decode"):
        assert {r["mask"] for r in rows if r["kind"] == kind} == VARIANTS
    assert {r["shape"]["b"] for r in rows if r["kind"] == "decode"} == {1, 4}
    decode = {(r["mask"], r["shape"]["b"]): r for r in rows if r["kind"] == "decode"}
    for variant in VARIANTS - {"dense"}:
        assert decode[(variant, 1)]["state"] == "compact"
        assert decode[(variant, 1)]["ssm_cache_bytes"] * 2 == decode[("dense", 1)]["ssm_cache_bytes"]
    assert decode[("dense", 1)]["speedup_vs_dense"] == pytest.approx(1.0)
    proj = [r for r in rows if r["kind"] == "proj"]
    assert {r["projection"] for r in proj} == {"in_proj", "out_proj"}
    assert {r["backend"] for r in proj} >= {"dense"} and len(proj) == 4
    assert all(r["projections"] != "dense" for r in rows if r["mask"] == "ssm_col50+proj_2:4")


def test_correctness_guard_aborts(tmp_path: Path) -> None:
    out = tmp_path / "never.json"
    proc = _run("--quick", "--no-proj", "--variants", "dense", "--tolerance", "1e-30", "--out", str(out))
    assert proc.returncode == 1
    assert "CORRECTNESS FAILURE" in proc.stderr
    assert list(tmp_path.iterdir()) == []
