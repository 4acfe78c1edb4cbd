"""The embedded tiny Mamba checkpoint and ``sparsessm demo``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsessm_kernels import cli
from sparsessm_kernels.demo import DEMO_CASES, MODEL_DIR, heldout_tokens
from sparsessm_kernels.models import MambaLM
from sparsessm_kernels.prune import evaluate_perplexity
from sparsessm_kernels.prune.config import METHODS

RESULT_KEYS = {
    "method",
    "pattern",
    "sparsity",
    "ppl",
    "backend",
    "dense_scan_ms",
    "scan_ms",
    "speedup",
    "max_abs_err_vs_reference",
}


def test_checkpoint_files_are_small_and_complete():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "training_config.json", "loss_curve.json"} <= names
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 10 * 2**20
    training = json.loads((MODEL_DIR / "training_config.json").read_text(encoding="utf-8"))
    assert training["data"]["heldout_files"] and training["data"]["train_files"]
    assert not set(training["data"]["heldout_files"]) & set(training["data"]["train_files"])
    curve = json.loads((MODEL_DIR / "loss_curve.json").read_text(encoding="utf-8"))
    assert curve[-1]["loss"] < curve[0]["loss"]


def test_checkpoint_perplexity_well_below_uniform():
    model = MambaLM.from_pretrained(MODEL_DIR)
    assert model.config.vocab_size == 256
    assert model.config.d_state == 16
    tokens = heldout_tokens()
    result = evaluate_perplexity(model, tokens, 256, batch_size=4, max_windows=8)
    assert result["ppl"] < 16.0  # uniform over bytes would be 256


def test_demo_cases_use_cli_names():
    for method, pattern in DEMO_CASES:
        assert method in METHODS
        assert pattern in ("unstructured", "2:4", "column")


def test_demo_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    for flag in ("--out", "--device", "--seqlen", "--nsamples", "--quick", "--scan-seqlen", "--plot"):
        assert flag in text


def test_demo_quick_writes_valid_report(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--quick", "--device", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sparsessm" in printed and "magnitude" in printed
    report = json.loads((out / "demo_report.json").read_text(encoding="utf-8"))
    assert {"model", "device", "dense_ppl", "results"} <= set(report)
    assert 1.0 < report["dense_ppl"] < 256.0
    assert [(r["method"], r["pattern"]) for r in report["results"]] == list(DEMO_CASES)
    for row in report["results"]:
        assert set(row) >= RESULT_KEYS
        assert row["sparsity"] == pytest.approx(0.5, abs=1e-6)
        assert 1.0 < row["ppl"] < 256.0
        assert row["max_abs_err_vs_reference"] < 1e-3
        assert row["dense_scan_ms"] > 0 and row["scan_ms"] > 0 and row["speedup"] > 0
    assert not list(out.glob(".*.tmp"))  # atomic write left no temp file


def test_demo_rejects_bad_out(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert cli.main(["demo", "--quick", "--out", str(blocker)]) == 2
    assert "demo" in capsys.readouterr().err
    assert cli.main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2  # checked before any work
    assert f"--out: cannot create {blocker / 'sub'}: {blocker} is not a directory" in capsys.readouterr().err
