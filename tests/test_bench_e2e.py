"""Smoke test of benchmarks/bench_e2e.py --quick: it runs, guards correctness and writes valid JSON.

Nothing here asserts on timings (see benchmarks/README.md). The script runs in a subprocess, as
a user runs it, so its global settings (threads, grad mode, scratch buffers) stay out of the
test process.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    "speedup_vs_eager": (float, type(None)),
    "speedup_vs_transformers": (float, type(None)),
    "speedup_vs_mamba_ssm": (float, type(None)),
    "max_abs_err_vs_reference": float,
    "tokens_per_s": float,
}
VARIANTS = {"dense", "ssm_col50", "ssm_2:4", "ssm_col50+proj_2:4", "ssm_2:4+proj_2:4"}
DECODERS = {"eager", "cg"}
BASELINES = {"transformers", "mamba_ssm"}


REPO = Path(__file__).resolve().parents[1]
FAKE_MAMBA_SSM = REPO / "tests" / "fake_mamba_ssm"
HANG_TIMEOUT_S = 300  # a hang guard only (the quick run takes seconds), never a performance bound


def _run(*args: str, fake_mamba_ssm: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if fake_mamba_ssm:  # the stand-in mamba_ssm (tests/fake_mamba_ssm/README.md) for the baselines
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAKE_MAMBA_SSM), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_e2e.py"), "--threads", "1", *args],
        cwd=REPO,
        env=env,
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
        if not row.get("baseline"):
            assert row["speedup_vs_dense"] is not None and row["speedup_vs_dense"] > 0
        assert {"b", "l", "d", "n"} <= set(row["shape"])


def test_quick_covers_variants_decoders_batches_and_projections(quick_json: dict) -> None:
    rows = quick_json["results"]
    ours = [r for r in rows if r["kind"] != "proj" and not r.get("baseline")]
    for kind in ("prefill", "decode"):
        assert {(r["mask"], r["decoder"]) for r in ours if r["kind"] == kind} == {
            (v, d) for v in VARIANTS for d in DECODERS
        }
    assert {r["shape"]["b"] for r in ours if r["kind"] == "decode"} == {1, 4}
    decode = {(r["mask"], r["decoder"], r["shape"]["b"]): r for r in ours if r["kind"] == "decode"}
    for decoder in DECODERS:
        dense = decode[("dense", decoder, 1)]
        for variant in VARIANTS - {"dense"}:
            assert decode[(variant, decoder, 1)]["state"] == "compact"
            assert decode[(variant, decoder, 1)]["ssm_cache_bytes"] * 2 == dense["ssm_cache_bytes"]
        assert dense["speedup_vs_dense"] == pytest.approx(1.0)
    for r in ours:  # the static (cg) rows compare with eager ones; eager rows do not
        assert (r["speedup_vs_eager"] is not None) == (r["decoder"] == "cg")
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


def test_quick_reports_missing_baselines(quick_json: dict) -> None:
    """Each baseline is either timed or reported as skipped with its reason, never silently absent."""
    timed = {r["baseline"] for r in quick_json["results"] if r.get("baseline")}
    skipped = {
        s["what"].split()[1]: s["reason"] for s in quick_json["skipped"] if s["what"].startswith("baseline ")
    }
    assert timed | set(skipped) == BASELINES and not timed & set(skipped)
    assert all("not importable" in reason for reason in skipped.values())
    assert quick_json["config"]["baselines"] == ["transformers", "mamba_ssm"]


def test_baselines_run_through_a_stand_in_mamba_ssm(tmp_path: Path) -> None:
    """With mamba_ssm importable (the stand-in), both baselines load the dense weights (checked against
    this model's logits), are timed for prefill and per-token decode, and our rows get speedups vs them."""
    out = tmp_path / "e2e_baselines.json"
    args = ("--quick", "--no-proj", "--variants", "dense", "--decode-batch", "2", "--out", str(out))
    proc = _run(*args, fake_mamba_ssm=True)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["versions"]["mamba_ssm"] == "0.0.0+fake"
    assert not [s for s in data["skipped"] if s["what"].startswith("baseline ")]
    rows = data["results"]
    base = {(r["baseline"], r["kind"]): r for r in rows if r.get("baseline")}
    assert set(base) == {(b, k) for b in BASELINES for k in ("prefill", "decode")}
    assert base[("mamba_ssm", "decode")]["decoder"] == "generate(cg=True)"
    assert "selective_scan_fn" in base[("transformers", "prefill")]["baseline_kernels"]
    for row in base.values():
        assert row["max_abs_err_vs_reference"] <= data["config"]["tolerance"] and row["tokens_per_s"] > 0
    for row in (r for r in rows if not r.get("baseline")):
        assert row["speedup_vs_transformers"] > 0 and row["speedup_vs_mamba_ssm"] > 0
    assert "vs mamba_ssm" in proc.stdout


def test_no_baselines(tmp_path: Path) -> None:
    out = tmp_path / "e2e_none.json"
    args = (
        "--quick",
        "--no-proj",
        "--variants",
        "dense",
        "--decoders",
        "cg",
        "--baselines",
        "--out",
        str(out),
    )
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["config"]["baselines"] == [] and data["config"]["decoders"] == ["cg"]
    assert not [s for s in data["skipped"] if s["what"].startswith("baseline ")]
    assert {r["decoder"] for r in data["results"]} == {"cg"}


def _bench_module():
    """benchmarks/bench_e2e.py imported as a module (registered first: dataclasses look it up)."""
    name = "_bench_e2e_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "bench_e2e.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("agree", [True, False], ids=["agrees", "disagrees"])
def test_slow_transformers_baseline(monkeypatch: pytest.MonkeyPatch, agree: bool) -> None:
    """--slow-baselines times transformers' PyTorch fallback (no mamba_ssm needed) with this model's
    weights; a baseline whose logits disagree with this model's is reported as skipped, not timed."""
    pytest.importorskip("transformers")
    bench_e2e = _bench_module()
    cpu = torch.device("cpu")
    args = bench_e2e.build_parser().parse_args(
        [
            "--quick",
            "--baselines",
            "transformers",
            "--slow-baselines",
            "--decode-batch",
            "2",
            "--repeats",
            "1",
        ]
    )
    bench_e2e.resolve_args(args, cpu)
    bench = bench_e2e.Bench(args, cpu, torch.float32)
    shape = bench_e2e.parse_shape("tiny", None)
    if not agree:
        monkeypatch.setattr(
            bench_e2e.baselines.Baseline,
            "last_logits",
            lambda self, ids: torch.ones(ids.shape[0], args.vocab),
        )
    with torch.no_grad():
        model = bench.build(shape)
        bench.run_baselines(model, shape, {"d_model": 64, "n_layer": 2, "d": 128, "n": 16})
    if agree:
        assert [(r["kind"], r["baseline"], r["decoder"]) for r in bench.results] == [
            ("prefill", "transformers", "generate"),
            ("decode", "transformers", "generate"),
        ]
        assert bench.results[1]["generate_tokens"] == bench_e2e.BASELINE_MIN_STEPS
        assert not bench.skipped
    else:
        assert bench.results == []
        assert len(bench.skipped) == 1 and "differ from this model's" in bench.skipped[0]["reason"]
