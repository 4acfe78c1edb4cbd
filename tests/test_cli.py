"""Tests for the ``sparsessm`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import sparsessm_kernels.ops as ops
from sparsessm_kernels import cli
from sparsessm_kernels._version import __version__

ENV_KEYS = {
    "sparsessm_kernels",
    "python",
    "packages",
    "device",
    "cpu",
    "backends",
    "backends_error",
    "cuda_extension",
    "semi_structured",
    "env",
}


def _env_json(capsys, argv=("env", "--json")) -> dict:
    assert cli.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_env_text(capsys, monkeypatch):
    monkeypatch.setenv("SPARSESSM_TEST_VAR", "hello")
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for part in (
        f"sparsessm_kernels  {__version__}",
        "python",
        f"torch              {torch.__version__}",
        "CUDA build:",
        "triton",
        "transformers",
        "safetensors",
        "cuda available",
        "cpu threads",
        "backends:",
        "environment (SPARSESSM_*):",
        "SPARSESSM_TEST_VAR=hello",
    ):
        assert part in out, part
    if not torch.cuda.is_available():
        assert "CPU only" in out


def test_env_json(capsys, monkeypatch):
    monkeypatch.setenv("SPARSESSM_TEST_VAR", "hello")
    monkeypatch.delenv("SPARSESSM_OTHER", raising=False)
    info = _env_json(capsys)
    assert set(info) == ENV_KEYS
    assert info["sparsessm_kernels"]["version"] == __version__
    assert info["packages"]["torch"] == torch.__version__
    assert info["packages"]["torch_cuda"] == torch.version.cuda
    for pkg in ("triton", "transformers", "safetensors"):
        assert isinstance(info["packages"][pkg], str) and info["packages"][pkg]
    assert info["device"]["cuda_available"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert info["device"]["summary"] == "CPU only" and info["device"]["count"] == 0
    else:
        dev = info["device"]["devices"][0]
        assert {"name", "capability", "memory_gib"} <= set(dev)
    assert info["cpu"]["torch_threads"] == torch.get_num_threads()
    assert info["env"]["SPARSESSM_TEST_VAR"] == "hello"
    assert all(k.startswith("SPARSESSM_") for k in info["env"])


def test_env_reports_real_backends(capsys):
    expected = ops.available_backends()
    info = _env_json(capsys)
    assert info["backends_error"] is None
    assert set(info["backends"]) == set(expected)
    for name, (usable, reason) in expected.items():
        assert info["backends"][name] == {"usable": usable, "reason": reason}
    assert info["backends"]["torch"]["usable"] is True


def test_env_backends_from_available_backends(capsys, monkeypatch):
    fake = {"torch": (True, "always"), "triton": (False, "no GPU"), "cuda": (False, "extension not built")}
    monkeypatch.setattr(ops, "available_backends", lambda: fake)
    info = _env_json(capsys)
    assert info["backends"]["triton"] == {"usable": False, "reason": "no GPU"}
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert "triton  not usable (no GPU)" in out
    assert "cuda    not usable (extension not built)" in out
    assert "torch   usable (always)" in out


def test_env_survives_broken_available_backends(capsys, monkeypatch):
    def broken():
        raise RuntimeError("kaboom")

    monkeypatch.setattr(ops, "available_backends", broken)
    info = _env_json(capsys)
    assert info["backends"] == {}
    assert "kaboom" in info["backends_error"]
    assert cli.main(["env"]) == 0
    assert "available_backends() failed: RuntimeError: kaboom" in capsys.readouterr().out


def test_env_no_sparsessm_vars(capsys, monkeypatch):
    for key in list(os.environ):
        if key.startswith("SPARSESSM_"):
            monkeypatch.delenv(key)
    assert cli.main(["env"]) == 0
    assert "(none set)" in capsys.readouterr().out


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for cmd in cli.COMMANDS:
        assert cmd.name in out


def test_commands_registry_is_extensible(capsys, monkeypatch):
    calls = []

    def configure(p):
        p.add_argument("--n", type=int, default=1)

    def run(args):
        calls.append(args.n)
        return 3

    monkeypatch.setattr(
        cli, "COMMANDS", [*cli.COMMANDS, cli.Command("dummy", "a test command", configure, run)]
    )
    assert cli.main(["dummy", "--n", "7"]) == 3
    assert calls == [7]


def test_python_dash_m(tmp_path):
    env = {**os.environ, "SPARSESSM_FROM_SUBPROCESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sparsessm_kernels", "env", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["sparsessm_kernels"]["version"] == __version__
    assert info["env"]["SPARSESSM_FROM_SUBPROCESS"] == "1"


def test_env_reports_cuda_extension_and_2_4_path(capsys) -> None:
    info = _env_json(capsys)
    assert info["cuda_extension"]["built"] in (True, False)
    if not info["cuda_extension"]["built"]:
        assert "SPARSESSM_BUILD_CUDA=1" in info["cuda_extension"]["reason"]
    assert info["semi_structured"]["path"] and info["semi_structured"]["reason"]
