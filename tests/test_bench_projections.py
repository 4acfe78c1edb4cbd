"""Smoke tests of benchmarks/bench_projections.py: it runs on the CPU and writes well-formed JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_semi_structured import FakeCusparselt, fake_cslt  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_projections.py"


def test_bench_projections_smoke_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "projections" and data["device"] and data["date"] and data["versions"]
    assert data["config"]["smoke"] and data["config"]["tokens"] == [1, 8, 33]
    assert {r["projection"] for r in data["rows"]} == {"tiny.in_proj", "tiny.out_proj"}
    for row in data["rows"]:
        assert row["dense_ms"] > 0 and row["dense_max_abs_err"] == 0.0
    assert any("direct" in s["what"] for s in data["skipped"])  # no cuSPARSELt on the CPU


def test_bench_projections_direct_rows_with_faked_cusparselt(
    tmp_path: Path,
    fake_cslt: FakeCusparselt,  # noqa: F811  (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_projections_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "p.json"
    assert module.main(["--smoke", "--device", "cpu", "--dtype", "bfloat16", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert fake_cslt.compress_calls == 2  # once per projection
    for row in rows:
        assert row["direct_ms"] > 0 and row["direct_max_abs_err"] < 0.1
        assert row["selected"] in ("2:4", "dense") and row["direct_speedup"] > 0
