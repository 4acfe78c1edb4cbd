"""Smoke test of benchmarks/bench_decode.py: it runs on the CPU and writes well-formed JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_decode_smoke_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_decode.py"), "--smoke", "--out", str(out)]
    result = subprocess.run([*cmd, "--variants", "ssm_2:4"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "decode" and data["device"] and data["date"] and data["versions"]
    assert [(r["variant"], r["batch"]) for r in data["rows"]] == [("ssm_2:4", 1), ("ssm_2:4", 2)]
    for row in data["rows"]:
        assert row["eager_ms"] > 0 and row["static_ms"] > 0 and not row["graphs"]
        assert row["generate_tok_s_eager"] > 0 and row["generate_tok_s_cg"] > 0
