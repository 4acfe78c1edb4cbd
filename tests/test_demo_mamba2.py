"""The embedded tiny Mamba-2 checkpoint, ``sparsessm demo --arch mamba2`` and the package data that
ships both embedded checkpoints."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from sparsessm_kernels import cli
from sparsessm_kernels.demo import heldout_tokens
from sparsessm_kernels.demo.run import MODEL_DIRS
from sparsessm_kernels.demo.run_mamba2 import DEMO_CASES_MAMBA2
from sparsessm_kernels.models import Mamba2LM, MambaLM
from sparsessm_kernels.prune import evaluate_perplexity

ROOT = Path(__file__).resolve().parents[1]
TINY2 = MODEL_DIRS["mamba2"]
SHIPPED = ("config.json", "model.safetensors", "training_config.json", "loss_curve.json")


def _training(model_dir: Path) -> dict:
    return json.loads((model_dir / "training_config.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ the checkpoint
def test_checkpoint_files_are_small_and_complete():
    assert {p.name for p in TINY2.iterdir()} >= set(SHIPPED)
    assert (TINY2 / "model.safetensors").stat().st_size <= 10 * 2**20
    training = _training(TINY2)
    assert training["data"]["heldout_files"] and training["data"]["train_files"]
    assert not set(training["data"]["heldout_files"]) & set(training["data"]["train_files"])
    # the same text split as the Mamba-1 model: the two are evaluated on the same held-out files
    assert training["data"]["heldout_files"] == _training(MODEL_DIRS["mamba"])["data"]["heldout_files"]
    curve = json.loads((TINY2 / "loss_curve.json").read_text(encoding="utf-8"))
    assert curve[-1]["loss"] < curve[0]["loss"]


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_reproduce_line_reruns_into_the_embedded_directory(arch: str):
    line = _training(MODEL_DIRS[arch])["reproduce"]
    assert line.startswith("python benchmarks/quality/train_tiny.py ")
    assert f"--arch {arch} " in line and "--overwrite" in line and "--stop-step" in line


def test_architecture_and_perplexity():
    model = Mamba2LM.from_pretrained(TINY2)
    c = model.config
    assert (c.vocab_size, c.d_model, c.n_layer) == (256, 128, 4)
    assert (c.nheads, c.headdim, c.ngroups, c.d_state) == (8, 32, 2, 32)
    assert not model.state_masks()  # shipped dense
    result = evaluate_perplexity(model, heldout_tokens(TINY2), 256, batch_size=4, max_windows=4)
    assert result["ppl"] < 16.0  # uniform over bytes would be 256


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_embedded_logits_equal_transformers(arch: str):
    transformers = pytest.importorskip("transformers")
    hf_cls = transformers.Mamba2ForCausalLM if arch == "mamba2" else transformers.MambaForCausalLM
    ours = (Mamba2LM if arch == "mamba2" else MambaLM).from_pretrained(MODEL_DIRS[arch]).eval()
    hf = hf_cls.from_pretrained(MODEL_DIRS[arch]).eval()
    ids = heldout_tokens(MODEL_DIRS[arch])[:140].view(2, 70)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits.float(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the demo
def test_demo_mamba2_quick(tmp_path: Path, capsys):
    out = tmp_path / "demo2"
    args = ["demo", "--arch", "mamba2", "--quick", "--device", "cpu", "--threads", "1"]
    code = cli.main([*args, "--repeats", "3", "--decode-tokens", "4", "--no-plot", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    report = json.loads((out / "demo_report.json").read_text(encoding="utf-8"))
    assert report["arch"] == "mamba2" and report["timed"] == "decode"
    assert report["model"]["name"] == "tiny_mamba2" and report["model"]["ngroups"] == 2
    assert 1.0 < report["dense_ppl"] < 256.0
    assert [(r["method"], r["pattern"]) for r in report["results"]] == list(DEMO_CASES_MAMBA2)
    assert report["settings"]["nsamples"] == 4  # --quick calibration
    for row in report["results"]:
        assert row["sparsity"] == pytest.approx(0.5) and row["kept_per_group"] == 16
        assert 1.0 < row["ppl"] < 256.0
        assert row["max_abs_err_vs_reference"] < 1e-3
        assert row["max_abs_err_decode_vs_forward"] < 1e-3
        assert row["state_cache_bytes"] * 2 == row["dense_state_cache_bytes"]  # compact: k = n / 2
        assert row["decode_ms"] > 0 and row["dense_decode_ms"] > 0
        assert row["decode_spread_ms"]["n"] == 3
        assert row["method"] in printed
    assert "decode ms per token" in printed


def test_demo_rejects_bad_arch(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--arch", "mamba3", "--out", str(tmp_path / "d")])
    assert "--arch" in capsys.readouterr().err


# ------------------------------------------------------------------ package data
def test_package_data_globs_cover_both_checkpoints():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["sparsessm_kernels.demo"]
    demo = ROOT / "sparsessm_kernels" / "demo"
    for arch, model_dir in MODEL_DIRS.items():
        for name in SHIPPED:
            rel = (model_dir / name).relative_to(demo).as_posix()
            assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{arch}: {rel} is not package data"


def test_wheel_ships_both_checkpoints(tmp_path: Path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "sparsessm_kernels", src / "sparsessm_kernels", ignore=shutil.ignore_patterns("__pycache__")
    )
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run([*cmd, "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for model_dir in MODEL_DIRS.values():
        for name in SHIPPED:
            assert f"sparsessm_kernels/demo/{model_dir.name}/{name}" in names


# ------------------------------------------------------------------ the training script
TRAIN = ROOT / "benchmarks" / "quality" / "train_tiny.py"


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_train_tiny_rejects_mamba2_sizes_for_mamba(tmp_path: Path):
    proc = _train("--ngroups", "2", "--out", str(tmp_path / "m1"))
    assert proc.returncode == 2 and "--ngroups" in proc.stderr
    assert not (tmp_path / "m1").exists()
