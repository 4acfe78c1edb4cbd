"""Smoke tests of the benchmark scripts: they run, check correctness and write valid JSON.

Nothing here asserts on timings: performance is measured by ``benchmarks/bench_scan.py`` and
recorded in ``benchmarks/results/``, never by tests.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_scan.py"
# A hang guard only (the quick run takes seconds); never a performance assertion.
HANG_TIMEOUT_S = 300

TOP_KEYS = {"device", "date", "versions", "config", "results", "skipped"}
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
    "rel_err_vs_reference": float,
}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
        check=False,
    )


def _has_transformers_fallback() -> bool:
    try:
        from transformers.models.mamba import modeling_mamba
    except Exception:
        return False
    return hasattr(modeling_mamba, "mamba_selective_scan") and hasattr(
        modeling_mamba, "mamba_selective_state_update"
    )


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "scan_quick.json"
    proc = _run("--quick", "--out", str(out))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "median ms" in proc.stdout  # the table was printed
    assert out.is_file()
    # atomic write: no temporary file is left next to the output
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    return json.loads(out.read_text(encoding="utf-8"))


def test_quick_top_level_schema(quick_json):
    data = quick_json
    assert set(data) >= TOP_KEYS
    device = data["device"]
    assert device["type"] in ("cpu", "cuda")
    assert isinstance(device["name"], str) and device["name"]
    assert isinstance(device["torch_threads"], int) and device["torch_threads"] >= 1
    if device["type"] == "cuda":
        assert isinstance(device["compute_capability"], str)
    parsed = dt.datetime.fromisoformat(data["date"].replace("Z", "+00:00"))
    assert parsed.tzinfo is not None and parsed.utcoffset() == dt.timedelta(0)
    assert data["torch"] == data["versions"]["torch"]
    assert data["triton"] == data["versions"].get("triton")
    assert isinstance(data["backend"], str)
    versions = data["versions"]
    for key in ("python", "torch", "sparsessm_kernels"):
        assert isinstance(versions[key], str) and versions[key]
    config = data["config"]
    assert config["quick"] is True
    assert config["repeats"] == 2
    assert isinstance(config["shapes"], list) and config["shapes"]
    assert set(config["masks"]) == {"dense", "column50", "2:4", "unstructured50"}
    for item in data["skipped"]:
        assert set(item) == {"what", "reason"}
        assert isinstance(item["what"], str) and isinstance(item["reason"], str) and item["reason"]


def test_quick_results_schema_and_correctness(quick_json):
    results = quick_json["results"]
    assert results
    for row in results:
        for key, types in RESULT_KEYS.items():
            assert key in row, key
            assert isinstance(row[key], types), (key, row[key])
        assert row["kind"] in ("scan", "decode")
        shape = row["shape"]
        assert set(shape) == {"b", "d", "n", "l", "batch", "d_inner", "seqlen", "d_state"}
        assert all(isinstance(v, int) and v >= 1 for v in shape.values())
        assert (shape["batch"], shape["d_inner"], shape["seqlen"], shape["d_state"]) == (
            shape["b"],
            shape["d"],
            shape["l"],
            shape["n"],
        )
        # the fields every result row carries
        assert row["op"] == {"scan": "selective_scan", "decode": "selective_state_update"}[row["kind"]]
        want_dtype = "float32" if quick_json["device"]["type"] == "cpu" else "bfloat16"
        assert row["dtype"] == want_dtype and row["time_ms"] == row["median_ms"]
        assert row["pattern"] in ("dense", "column", "2:4", "unstructured")
        assert row["gbps"] is None or (math.isfinite(row["gbps"]) and row["gbps"] > 0)
        if quick_json["device"]["type"] == "cpu":
            assert row["peak_fraction"] is None  # no peak bandwidth known for CPUs
        if row["kind"] == "decode":
            assert row["shape"]["l"] == 1
            assert row["state"] in ("full", "compact")
        assert 0 <= row["min_ms"] <= row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] <= row["max_ms"]
        assert row["iqr_ms"] == pytest.approx(row["q3_ms"] - row["q1_ms"])
        for key in ("speedup_vs_dense", "speedup_vs_transformers"):
            assert row[key] is None or (math.isfinite(row[key]) and row[key] > 0)
        assert math.isfinite(row["max_abs_err_vs_reference"])
        assert math.isfinite(row["rel_err_vs_reference"])
        assert row["rel_err_vs_reference"] <= quick_json["config"]["tolerance"], row
        if row["mask"] == "dense":
            assert row["pruned_states"] is None
            assert row["speedup_vs_dense"] == pytest.approx(1.0)
        else:
            assert row["pruned_states"] in ("zero_transition", "remove")


def test_quick_covers_every_config(quick_json):
    results = quick_json["results"]
    ours = {(r["kind"], r["mask"], r["pruned_states"]) for r in results if r["backend"] == "torch"}
    for kind in ("scan", "decode"):
        assert (kind, "dense", None) in ours
        for mask in ("column50", "2:4", "unstructured50"):
            for ps in ("zero_transition", "remove"):
                assert (kind, mask, ps) in ours, (kind, mask, ps)
    # compact decode states for the uniform masks
    for row in results:
        if row["kind"] == "decode" and row["backend"] == "torch" and row["mask"] in ("column50", "2:4"):
            assert row["state"] == "compact"
    decode_batches = {r["shape"]["b"] for r in results if r["kind"] == "decode"}
    assert decode_batches == {1, 4}

    skipped = " ".join(s["what"] for s in quick_json["skipped"])
    backends = {r["backend"] for r in results}
    if _has_transformers_fallback():
        assert "transformers-fallback" in backends
        for row in results:
            if row["backend"] == "torch" and quick_json["device"]["type"] == "cpu":
                assert row["speedup_vs_transformers"] is not None
    else:
        assert "transformers-fallback" in skipped
    if "mamba_ssm" not in backends:
        assert "mamba_ssm" in skipped  # recorded with a reason, not silently dropped


def test_correctness_guard_aborts(tmp_path):
    out = tmp_path / "never.json"
    proc = _run(
        "--quick",
        "--no-decode",
        "--no-baselines",
        "--masks",
        "dense",
        "--tolerance",
        "1e-30",
        "--out",
        str(out),
    )
    assert proc.returncode == 1
    assert "CORRECTNESS FAILURE" in proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_gpu_grid_preset_refuses_cpu_clearly(tmp_path):
    if _cuda_visible():
        pytest.skip("a GPU is visible: the preset would run")
    out = tmp_path / "never.json"
    proc = _run("--preset", "gpu-grid", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 2
    assert "needs a CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_cuda_time_segments_is_refused(tmp_path):
    out = tmp_path / "never.json"
    proc = _run("--quick", "--cuda-time-segments", "48", "--out", str(out))
    assert proc.returncode == 2
    assert "--cuda-time-segments: expected 0 (auto) or a power of two <= 128, got 48" in proc.stderr
    assert not out.exists()


def test_unwritable_out_is_refused_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    proc = _run("--quick", "--out", str(blocker / "r.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--out: cannot write {blocker / 'r.json'}: {blocker} is not a directory" in proc.stderr
    assert "backend" not in proc.stdout  # no table: nothing was benchmarked


def test_graph_timer_needs_cuda(tmp_path, monkeypatch):
    if _cuda_visible():
        pytest.skip("a GPU is visible: the graph timer would run")
    proc = _run("--quick", "--timer", "graph", "--device", "cpu", "--out", str(tmp_path / "never.json"))
    assert proc.returncode != 0 and "--timer graph: needs a CUDA device" in proc.stderr
    common = _load_common(monkeypatch)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        common.time_cuda_graph(lambda: None, torch.device("cpu"), warmup=1, repeats=1)


@pytest.mark.gpu
def test_graph_timer_on_gpu(tmp_path):
    out = tmp_path / "graph.json"
    proc = _run("--quick", "--timer", "graph", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["timer"] == "graph" and data["results"]
    assert all(r["median_ms"] > 0 for r in data["results"])


def test_portable_argv_drops_absolute_paths(monkeypatch):
    common = _load_common(monkeypatch)
    inside = str(REPO / "benchmarks" / "results" / "x.json")
    got = common.portable_argv(["--out", "/elsewhere/y.json", f"--out={inside}", "--shapes", "130m"])
    assert got == ["--out", "y.json", "--out=benchmarks/results/x.json", "--shapes", "130m"]


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def test_help_lists_options():
    proc = _run("--help")
    assert proc.returncode == 0
    for option in (
        "--shapes",
        "--batch",
        "--seqlen",
        "--masks",
        "--pruned-states",
        "--max-baseline-gb",
        "--decode",
        "--decode-batch",
        "--repeats",
        "--quick",
        "--dtype",
        "--out",
        "--preset",
        "--peak-gbps",
        "--timer",
        "--cuda-time-segments",
    ):
        assert option in proc.stdout, option


def _load_common(monkeypatch):
    name = "_bench_common_under_test"
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_common_helpers(tmp_path, monkeypatch):
    common = _load_common(monkeypatch)
    stats = common.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert stats.median_ms == 3.0 and stats.min_ms == 1.0 and stats.max_ms == 5.0
    assert stats.iqr_ms == pytest.approx(2.0)  # inclusive quartiles 2 and 4
    assert common.summarize([7.0]).iqr_ms == 0.0
    assert (stats.q1_ms, stats.q3_ms) == (2.0, 4.0)
    assert common.ratio(10.0, 4.0) == 2.5 and common.ratio(None, 1.0) is None and common.ratio(1.0, 0) is None
    assert common.slugify("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"

    target = tmp_path / "sub" / "x.json"
    common.write_json_atomic(target, {"a": 1, "b": [1.5, None]})
    assert json.loads(target.read_text()) == {"a": 1, "b": [1.5, None]}
    with pytest.raises(ValueError):
        common.write_json_atomic(target, {"a": float("nan")})
    assert json.loads(target.read_text()) == {"a": 1, "b": [1.5, None]}  # untouched
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]

    table = common.format_table([{"a": "x", "b": 1.5}, {"a": "yy", "b": None}], [("a", "A"), ("b", "B")])
    lines = table.splitlines()
    assert lines[0].split() == ["A", "B"] and len(lines) == 4 and lines[3].endswith("-")


def test_kept_state_inputs_is_the_column_mask_under_remove():
    """The mamba_ssm baseline at d_state = k (bench_scan) scans exactly the column mask's kept states."""
    import importlib

    import sparsessm_kernels as ssk

    bs = importlib.import_module("benchmarks.bench_scan")
    shape = bs.Shape(2, 8, 16, 12, "tiny")
    inputs = bs.scan_inputs(shape, torch.float32, torch.device("cpu"), seed=3)
    layout = bs.build_layout(bs.parse_mask("column50"), shape.d, shape.n, torch.device("cpu"), seed=3)
    kept = bs.kept_state_inputs(inputs, layout)
    assert kept["A"].shape == (shape.d, layout.n_kept) and kept["B"].shape == (
        shape.b,
        layout.n_kept,
        shape.l,
    )
    dense_on_kept = ssk.selective_scan_ref(*bs.scan_args(bs._f64(kept)), True)
    removed = ssk.selective_scan_ref(
        *bs.scan_args(bs._f64(inputs)), True, state_mask=layout, pruned_states="remove"
    )
    torch.testing.assert_close(dense_on_kept, removed, rtol=1e-12, atol=1e-12)


def test_common_speedup_significance(monkeypatch):
    common = _load_common(monkeypatch)

    def row(samples):
        return common.timing_row_fields(common.summarize(samples))

    dense = row([10.0, 10.5, 11.0, 11.5, 12.0])
    faster, noisy, few = row([5.0, 5.5, 6.0, 6.5, 7.0]), row([9.0, 10.0, 11.0, 12.0, 13.0]), row([5.0, 6.0])
    assert common.speedup_of(dense, faster) == (pytest.approx(11.0 / 6.0), True)
    assert common.speedup_of(dense, noisy)[1] is False  # quartile ranges overlap
    assert common.speedup_of(dense, few)[1] is False  # two samples say nothing about the spread
    assert common.speedup_of(dense, dense) == (1.0, None) and common.speedup_of(None, faster) == (None, None)
    assert common.fmt_speedup(11.0 / 6.0, True) == "1.83x"
    assert common.fmt_speedup(1.0, False) == "not significant"
    assert common.fmt_speedup(1.0, None) == "1x" and common.fmt_speedup(None, None) == "-"
