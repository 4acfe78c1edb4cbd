"""The quality benchmark (benchmarks/quality/run.py) and the report generator (benchmarks/report.py).

The quality script runs ``--quick`` in a subprocess, as a user runs it, and its JSON schema is
checked; nothing asserts on perplexity values beyond sanity bounds, nor on timings. The WikiText
column is exercised only when the shared WikiText-2 test file is present next to the repository
(``../shared/data/wikitext-2/test.txt``); otherwise that test skips.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
QUALITY = REPO / "benchmarks" / "quality" / "run.py"
REPORT = REPO / "benchmarks" / "report.py"
RESULTS = REPO / "benchmarks" / "results"
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2" / "test.txt"
HANG_TIMEOUT_S = 120  # a hang guard only (the quick run takes seconds), never a performance bound

TOP_KEYS = {
    "benchmark",
    "device",
    "date",
    "versions",
    "config",
    "model",
    "data",
    "dense",
    "results",
    "skipped",
}
ROW_KEYS = {
    "method",
    "aggregation",
    "label",
    "pattern",
    "structure",
    "sparsity",
    "scope",
    "projection_method",
    "allocation",
    "alpha",
    "ppl_heldout",
    "ppl_wikitext",
    "achieved_sparsity",
    "passes",
    "prune_s",
    "eval_s",
}
CLI_METHODS = {"sparsessm", "magnitude", "sparsegpt", "wanda", "random"}


def _run_quality(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(QUALITY), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
        check=False,
    )


def _check_quality_json(data: dict, wikitext: bool) -> None:
    assert set(data) >= TOP_KEYS
    assert data["benchmark"] == "quality"
    assert data["device"]["type"] in ("cpu", "cuda") and data["device"]["name"]
    parsed = dt.datetime.fromisoformat(data["date"].replace("Z", "+00:00"))
    assert parsed.utcoffset() == dt.timedelta(0)
    assert data["versions"]["torch"] and data["versions"]["sparsessm_kernels"]
    assert data["model"]["vocab_size"] == 256
    held = data["data"]["heldout"]
    assert held["windows"] >= 1 and held["bytes_evaluated"] == held["windows"] * held["seqlen"]
    assert 1.0 < data["dense"]["ppl_heldout"] < 256.0
    if wikitext:
        assert data["dense"]["ppl_wikitext"] > 1.0
        assert data["data"]["wikitext"]["sha256"] and not Path(data["data"]["wikitext"]["path"]).is_absolute()
    else:
        assert data["dense"]["ppl_wikitext"] is None
        assert any("WikiText" in s["what"] for s in data["skipped"])
    assert not Path(data["config"]["out"]).is_absolute()  # never this machine's absolute path
    assert not any(Path(a.partition("=")[2] or a).is_absolute() for a in data["config"]["argv"])
    rows = data["results"]
    assert rows
    for row in rows:
        assert set(row) >= ROW_KEYS, set(ROW_KEYS) - set(row)
        assert row["method"] in CLI_METHODS
        assert row["scope"] in ("ssm", "whole")
        assert row["structure"] in ("unstructured", "N:M", "column")
        assert 1.0 < row["ppl_heldout"] < 256.0 and math.isfinite(row["ppl_heldout"])
        assert (row["ppl_wikitext"] is not None) == wikitext
        if row["scope"] == "ssm":
            assert row["projection_method"] is None and row["allocation"] is False
            assert row["achieved_sparsity"]["ssm"] == pytest.approx(row["sparsity"], abs=0.01)
        else:
            assert row["projection_method"] in ("sparsegpt", "wanda", "magnitude")
            assert row["achieved_sparsity"]["total"] == pytest.approx(row["sparsity"], abs=0.02)
        if row["structure"] == "N:M":
            n, m = (int(x) for x in row["pattern"].split(":"))
            assert 1 - n / m == pytest.approx(row["sparsity"])


@pytest.fixture(scope="module")
def quick_quality(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("quality") / "quality.json"
    proc = _run_quality("--quick", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "held-out ppl" in proc.stdout and "skipped: WikiText" in proc.stdout
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # atomic write, no temp file left
    return json.loads(out.read_text(encoding="utf-8"))


def test_quality_quick_schema(quick_quality):
    _check_quality_json(quick_quality, wikitext=False)
    rows = quick_quality["results"]
    assert {r["scope"] for r in rows} == {"ssm", "whole"}
    assert {r["pattern"] for r in rows if r["scope"] == "ssm"} == {"unstructured", "2:4", "column"}
    assert {r["allocation"] for r in rows if r["scope"] == "whole"} == {False, True}


@pytest.mark.skipif(not WIKITEXT.is_file(), reason="the shared WikiText-2 test file is not present")
def test_quality_quick_with_wikitext(tmp_path):
    out = tmp_path / "q.json"
    proc = _run_quality(
        "--quick", "--device", "cpu", "--no-whole", "--out", str(out), "--wikitext", str(WIKITEXT)
    )
    assert proc.returncode == 0, proc.stderr
    _check_quality_json(json.loads(out.read_text(encoding="utf-8")), wikitext=True)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--sparsities", "1.5"], "--sparsities"),
        (["--sparsities", "abc"], "--sparsities"),
        (["--wikitext", "no/such/file.txt"], "--wikitext"),
        (["--eval-windows", "0"], "--eval-windows"),
    ],
)
def test_quality_bad_input_names_the_argument(tmp_path, args, flag):
    proc = _run_quality("--quick", "--out", str(tmp_path / "q.json"), *args)
    assert proc.returncode == 2
    assert flag in proc.stderr
    assert not (tmp_path / "q.json").exists()


def _load(path: Path, name: str) -> ModuleType:
    """Import a script as a module (registered first: dataclasses look their module up)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_nm_pattern_for_sparsity():
    module = _load(QUALITY, "_bench_quality_run")
    assert module.nm_pattern(0.25) == "3:4"
    assert module.nm_pattern(0.5) == "2:4"
    assert module.nm_pattern(0.75) == "1:4"
    assert module.nm_pattern(0.3) is None


# ------------------------------------------------------------------------------------ report
@pytest.fixture(scope="module")
def report() -> ModuleType:
    return _load(REPORT, "_bench_report")


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _committed() -> list[Path]:
    paths = [RESULTS / "scan_cpu.json", RESULTS / "e2e_cpu.json", RESULTS / "quality.json"]
    return [p for p in paths if p.is_file()]


def test_report_on_committed_results(report, tmp_path, capsys):
    paths = _committed()
    assert len(paths) == 3
    md_file = tmp_path / "report.md"
    code = report.main(
        ["--inputs", *map(str, paths), "--plots", str(tmp_path / "plots"), "--markdown", str(md_file)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert text == md_file.read_text(encoding="utf-8")
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["date"] in text  # every section is labelled with its date
    assert "### Selective scan:" in text and "### End to end:" in text and "### Pruning quality:" in text
    assert "| sparsessm (weighted) |" in text and "Whole-model pruning" in text
    assert "| scan | torch | b1 d1536 n16 l2048 | column50 |" in text
    pngs = sorted((tmp_path / "plots").glob("*.png")) if (tmp_path / "plots").exists() else []
    if _has_matplotlib():
        assert {p.name for p in pngs} >= {"scan_cpu_speedup.png", "e2e_cpu_speedup.png", "quality_ppl.png"}
        assert all(p.stat().st_size > 1000 for p in pngs)
        assert "![quality_ppl]" in text
    else:
        assert not pngs
        assert "matplotlib is not installed" in text


def _gpu_scan() -> dict:
    data = copy.deepcopy(json.loads((RESULTS / "scan_cpu.json").read_text(encoding="utf-8")))
    data["device"] = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    data["date"] = "2030-01-02T03:04:05Z"
    rows = []
    for length in (512, 2048, 8192):
        for mask, sparsity, ms in (("dense", 0.0, 1.0), ("column50", 0.5, 0.55), ("2:4", 0.5, 0.6)):
            rows.append(
                {
                    "kind": "scan",
                    "backend": "triton",
                    "shape": {"b": 1, "d": 4096, "n": 16, "l": length},
                    "mask": mask,
                    "sparsity": sparsity,
                    "pruned_states": None if mask == "dense" else "zero_transition",
                    "state": None,
                    "median_ms": ms * length / 512,
                    "speedup_vs_dense": 1.0 / ms,
                    "speedup_vs_transformers": None,
                    "max_abs_err_vs_reference": 1e-3,
                }
            )
    rows.append({**rows[0], "backend": "mamba_ssm", "speedup_vs_dense": None})
    rows.append(
        {**rows[0], "kind": "decode", "shape": {"b": 256, "d": 4096, "n": 16, "l": 1}, "state": "compact"}
    )
    data["results"] = rows
    return data


def _gpu_e2e() -> dict:
    data = copy.deepcopy(json.loads((RESULTS / "e2e_cpu.json").read_text(encoding="utf-8")))
    data["device"] = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    data["date"] = "2030-01-02T03:04:05Z"
    data["results"] = [{**r, "backend": "triton"} for r in data["results"][:8]]
    return data


def test_report_on_synthetic_gpu_results(report, tmp_path, capsys):
    scan, e2e = tmp_path / "scan_cuda_h100.json", tmp_path / "e2e_cuda_h100.json"
    scan.write_text(json.dumps(_gpu_scan()), encoding="utf-8")
    e2e.write_text(json.dumps(_gpu_e2e()), encoding="utf-8")
    plots = tmp_path / "plots"
    assert report.main(["--inputs", str(scan), str(e2e), "--plots", str(plots)]) == 0
    text = capsys.readouterr().out
    assert "NVIDIA H100 80GB HBM3 (cuda), 2030-01-02T03:04:05Z" in text
    assert "| scan | triton | b1 d4096 n16 l8192 | column50 | zero_transition | - |" in text
    assert "1.82x" in text  # column50 speedup 1 / 0.55
    if _has_matplotlib():
        names = {p.name for p in plots.glob("*.png")}
        assert {
            "scan_cuda_h100_speedup.png",
            "scan_cuda_h100_seqlen.png",
            "e2e_cuda_h100_speedup.png",
        } <= names


def test_report_quality_table_only(report, capsys):
    path = RESULTS / "quality.json"
    assert report.main(["--inputs", str(path), "--quality-table"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("SSM (`A_log`) pruning")
    assert "**" in text  # the best method per column is marked


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--inputs", "no/such.json"], "--inputs"),
        (["--inputs", str(REPORT)], "--inputs"),  # not JSON
    ],
)
def test_report_bad_input(report, args, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        report.main([*args, "--plots", str(tmp_path / "p")])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


# ------------------------------------------------------------------------------------ Mamba-2
def test_quality_quick_mamba2_runs_every_registered_method(tmp_path, report, capsys):
    """Every entry of MAMBA2_METHODS prunes the tiny Mamba-2 at 0.5 (on a few windows) through the
    library pipeline and gives a finite perplexity; the report renders the result."""
    run = _load(QUALITY, "_bench_quality_run")
    out = tmp_path / "quality_mamba2.json"
    sizes = ["--nsamples", "2", "--seqlen", "64", "--eval-seqlen", "128", "--eval-windows", "2"]
    proc = _run_quality(
        "--arch", "mamba2", "--quick", *sizes, "--device", "cpu", "--threads", "1", "--out", str(out)
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "skipped: WikiText" in proc.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data) >= TOP_KEYS and data["benchmark"] == "quality" and data["arch"] == "mamba2"
    assert data["model"]["name"] == "tiny_mamba2" and data["model"]["ngroups"] == 2
    assert data["config"]["methods"] == list(run.MAMBA2_METHODS)
    assert set(data["data"]["calibration"]["used_by"]) == {
        n for n, m in run.MAMBA2_METHODS.items() if m.method not in ("magnitude", "random")
    }
    assert 1.0 < data["dense"]["ppl_heldout"] < 256.0 and data["dense"]["ppl_wikitext"] is None
    rows = {r["name"]: r for r in data["results"]}
    assert list(rows) == list(run.MAMBA2_METHODS)  # every method once, at 0.5 (2:4: its own 0.5)
    structures = {"states": {"column", "N:M"}, "ssm": {"unstructured"}, "ffn": {"unstructured", "N:M"}}
    for name, row in rows.items():
        method = run.MAMBA2_METHODS[name]
        assert set(row) >= ROW_KEYS, set(ROW_KEYS) - set(row)
        assert (row["scope"], row["method"]) == (method.targets, method.method)
        assert row["structure"] in structures.get(row["scope"], {"structured"})
        assert row["sparsity"] == 0.5 and math.isfinite(row["ppl_heldout"]) and row["ppl_heldout"] > 1.0
        achieved = row["achieved_sparsity"]
        if row["scope"] in ("states", "ssm"):
            assert achieved["ssm"] == pytest.approx(0.5)
        elif row["scope"] == "ffn":
            assert achieved["ffn"] == pytest.approx(0.5, abs=0.01)
        else:  # heads / head channels removed: a share of the mixer's parameters
            assert 0.2 < achieved["heads"] < 0.6
        if row["scope"] == "states":
            assert row["d_state_after"] == [data["model"]["d_state"]] * data["model"]["n_layer"]
        assert row["passes"][0].startswith(f"--method {method.method} --targets {method.targets} ")
    # report.py renders it as one table, a row per target, method and pattern family
    assert report.main(["--inputs", str(out), "--quality-table"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Mamba-2 pruning, perplexity per byte")
    assert "| states | sparsessm | column |" in text and "| heads | flap | removed |" in text
    assert "| ffn | wanda | 2:4 |" in text


def test_mamba2_grid_sparsities():
    """25 / 50 / 75 %: N:4 state patterns 3:4 / 2:4 / 1:4, 2:4 projections once at 0.5, and an N:M
    sparsity with no N:4 pattern goes to ``skipped``."""
    run = _load(QUALITY, "_bench_quality_run")
    skipped: list[dict[str, str]] = []
    cases = run.mamba2_cases(tuple(run.MAMBA2_METHODS), (0.25, 0.5, 0.75), 0, skipped)
    assert not skipped
    got = {(c.scope, c.method, c.pattern, c.sparsity) for c in cases}
    assert {("states", "sparsessm", p, s) for p, s in (("3:4", 0.25), ("2:4", 0.5), ("1:4", 0.75))} <= got
    assert [c.sparsity for c in cases if (c.scope, c.method, c.pattern) == ("ffn", "wanda", "2:4")] == [0.5]
    assert len(cases) == 65
    for case in cases:
        (cfg,) = case.passes
        assert cfg.resolve().sparsity == pytest.approx(case.sparsity)
    cases = run.mamba2_cases(("states/random/N:M", "heads/flap"), (0.3,), 0, skipped)
    assert [(c.scope, c.sparsity) for c in cases] == [("heads", 0.3)]
    assert skipped and skipped[0]["what"] == "states/random/N:M at sparsity 0.3"


def test_quality_methods_flag_needs_mamba2(tmp_path):
    proc = _run_quality("--quick", "--methods", "random", "--out", str(tmp_path / "q.json"))
    assert proc.returncode == 2 and "--methods" in proc.stderr
    proc = _run_quality("--arch", "mamba2", "--quick", "--methods", "nope", "--out", str(tmp_path / "q.json"))
    assert proc.returncode == 2 and "--methods" in proc.stderr and "states/sparsessm/column" in proc.stderr
