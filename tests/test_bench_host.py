"""Smoke test of benchmarks/bench_host.py: it runs, checks both sides agree and writes valid JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_host_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "host.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_host.py"), "--out", str(out), "--rounds", "3"]
    result = subprocess.run([*cmd, "--inner", "5"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "host" and data["device"] and data["date"] and data["versions"]
    rows = {row["comparison"]: row for row in data["rows"]}
    assert set(rows) == {"step", "raw_mask"}
    for row in rows.values():
        assert row["ours_us"] > 0 and row["baseline_us"] > 0 and row["ratio"] > 0
        assert row["met"] == (row["ratio"] <= row["goal"])
