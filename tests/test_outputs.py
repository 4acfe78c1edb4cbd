"""Safe outputs: atomic directories (and their interruption), output checks before work, warnings
that point at the caller, progress bars that do not flood a non-terminal stderr."""

from __future__ import annotations

import io
import os
import stat
import sys
import warnings
from pathlib import Path

import pytest
import torch

from sparsessm_kernels import _io, _progress
from sparsessm_kernels._io import (
    OutputPathError,
    atomic_directory,
    check_output_dir,
    check_output_file,
    check_writable_dir,
)
from sparsessm_kernels.models import MambaLM, MambaLMConfig, read_checkpoint

KEYS = ("config.json",)


def _fill(directory: Path, **files: str) -> None:
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")


def _contents(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir())}


def _hidden(parent: Path) -> list[str]:
    """Leftovers of a staging or replaced directory."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def _deny_writes_in(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Make ``denied`` refuse new entries, the way a read-only directory does (tests run as root,
    where permission bits do not stop anything)."""
    real = _io.tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        if Path(kwargs.get("dir", "")).resolve() == denied.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(_io.tempfile, "mkdtemp", mkdtemp)


class Interrupted(Exception):
    pass


# ---------------------------------------------------------------------- atomic_directory
@pytest.mark.parametrize("exists", [False, True], ids=["new", "empty-existing"])
def test_atomic_directory_writes_a_whole_directory(tmp_path: Path, exists: bool) -> None:
    target = tmp_path / "sub" / "out"
    if exists:
        target.mkdir(parents=True)
        target.chmod(0o750)
    with atomic_directory(target, key_files=KEYS) as staging:
        assert staging.parent == target.parent and staging.name.startswith(".out.partial-")
        assert not target.exists() or list(target.iterdir()) == []  # nothing visible before the end
        _fill(staging, **{"config.json": "{}", "weights": "w"})
    assert _contents(target) == {"config.json": "{}", "weights": "w"}
    assert _hidden(target.parent) == []
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == (0o750 if exists else 0o777 & ~_io._UMASK)  # not mkdtemp's 0700


def test_atomic_directory_refuses_non_empty_before_the_body(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    _fill(target, keep="old")
    ran = []
    refused = r"--save: .*out already exists and is not empty \(keep\); pass --overwrite"
    with (
        pytest.raises(OutputPathError, match=refused),
        atomic_directory(target, option="--save", overwrite_hint="--overwrite"),
    ):
        ran.append(True)
    assert not ran and _contents(target) == {"keep": "old"} and _hidden(tmp_path) == []


def test_atomic_directory_overwrite_replaces_as_a_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    _fill(target, **{"config.json": "old", "stale": "x"})
    (target / "nested").mkdir()
    with atomic_directory(target, overwrite=True, key_files=KEYS) as staging:
        _fill(staging, **{"config.json": "new"})
    assert _contents(target) == {"config.json": "new"} and _hidden(tmp_path) == []


@pytest.mark.parametrize("error", [Interrupted, KeyboardInterrupt])
@pytest.mark.parametrize("exists", [False, True], ids=["new", "replacing"])
def test_atomic_directory_failure_leaves_target_untouched(
    tmp_path: Path, error: type[BaseException], exists: bool
) -> None:
    target = tmp_path / "out"
    if exists:
        target.mkdir()
        _fill(target, **{"config.json": "old"})
    with pytest.raises(error), atomic_directory(target, overwrite=True, key_files=KEYS) as staging:
        _fill(staging, weights="half")
        raise error()
    assert (_contents(target) == {"config.json": "old"}) if exists else not target.exists()
    assert _hidden(tmp_path) == []


def test_atomic_directory_failed_rename_restores_the_old_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    _fill(target, **{"config.json": "old"})
    real = os.rename

    def rename(src, dst):
        if ".partial-" in str(src):  # renaming the new directory in fails
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(_io.os, "rename", rename)
    with pytest.raises(OSError, match="No space"), atomic_directory(target, overwrite=True) as staging:
        _fill(staging, **{"config.json": "new"})
    assert _contents(target) == {"config.json": "old"} and _hidden(tmp_path) == []


def test_atomic_directory_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with atomic_directory(link) as staging:
        _fill(staging, a="1")
    assert link.is_symlink() and _contents(real) == {"a": "1"}


def test_atomic_directory_in_place_when_the_parent_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing directory whose parent refuses new entries (or a mount point) is filled in place."""
    target = tmp_path / "out"
    target.mkdir()
    _fill(target, **{"config.json": "old", "stale": "x"})
    _deny_writes_in(monkeypatch, tmp_path)
    check_output_dir(target, "--save", overwrite=True)  # allowed: the directory itself is writable
    with atomic_directory(target, overwrite=True, key_files=KEYS) as staging:
        assert staging.parent == target
        _fill(staging, **{"config.json": "new", "weights": "w"})
    assert _contents(target) == {"config.json": "new", "weights": "w"}


def test_atomic_directory_in_place_interrupted_leaves_no_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    _fill(target, **{"config.json": "old", "weights": "old"})
    monkeypatch.setattr(_io, "_replace_in_place", lambda path: True)
    real, moved = os.rename, []

    def rename(src, dst):
        if moved:  # the second move never happens
            raise Interrupted()
        moved.append(Path(src).name)
        return real(src, dst)

    monkeypatch.setattr(_io.os, "rename", rename)
    with pytest.raises(Interrupted), atomic_directory(target, overwrite=True, key_files=KEYS) as staging:
        _fill(staging, **{"config.json": "new", "weights": "new"})
    # old entries went first (config.json before anything), new config.json would come last
    assert moved == ["weights"] and not (target / "config.json").exists()


# ---------------------------------------------------------------------- checks
def test_check_output_dir_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "file"
    afile.write_text("x", encoding="utf-8")
    with pytest.raises(OutputPathError, match=r"--save: .*file exists and is not a directory"):
        check_output_dir(afile, "--save")
    with pytest.raises(OutputPathError, match=r"--save: cannot create .*file/out: .*file is not a directory"):
        check_output_dir(afile / "out", "--save")
    check_output_dir(tmp_path / "a" / "b", "--save")  # missing parents are fine
    assert not (tmp_path / "a").exists()  # and a check creates nothing
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_writes_in(monkeypatch, ro)
    denied = r"--save: cannot create .*ro/out: .*ro is not writable \(Permission"
    with pytest.raises(OutputPathError, match=denied):
        check_output_dir(ro / "out", "--save")
    (ro / "full").mkdir()
    _fill(ro / "full", x="1")
    _deny_writes_in(monkeypatch, ro / "full")  # neither a sibling nor an entry inside
    with pytest.raises(OutputPathError, match=r"--save: cannot write .*full: .*not writable"):
        check_output_dir(ro / "full", "--save", overwrite=True)
    (tmp_path / "mount").mkdir()
    _deny_writes_in(monkeypatch, tmp_path / "mount")
    monkeypatch.setattr(_io.os.path, "ismount", lambda path: Path(path).name == "mount")
    with pytest.raises(OutputPathError, match=r"--save: cannot write .*mount: .*not writable"):
        check_output_dir(tmp_path / "mount", "--save")  # a mount point is filled in place: needs writes
    with pytest.raises(OutputPathError, match=r"--out: cannot create .*ro/demo: .*not writable"):
        check_writable_dir(ro / "demo", "--out")
    with pytest.raises(OutputPathError, match=r"--out: cannot write .*ro/r\.json: .*not writable"):
        check_output_file(ro / "r.json", "--out")
    with pytest.raises(OutputPathError, match="is a directory"):
        check_output_file(tmp_path, "--out")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits")
def test_check_output_dir_real_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_dir(ro / "out", "--save")
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------------- model directories
def _masked_model() -> MambaLM:
    model = MambaLM.from_config(MambaLMConfig(vocab_size=40, d_model=16, n_layer=2, d_state=8), seed=0)
    mask = torch.ones(8, dtype=torch.bool)
    mask[::2] = False
    model.set_state_mask(0, mask, pruned_states="zero_transition")
    return model


def test_save_pretrained_interrupted_before_the_masks_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure this guards against: weights and config written, masks not -- a directory that
    would load as the dense model."""
    import sparsessm_kernels.sparsity.io as sio

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sio, "save_masks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _masked_model().save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

    dense = MambaLM.from_config(MambaLMConfig(vocab_size=40, d_model=16, n_layer=2, d_state=8), seed=1)
    monkeypatch.undo()
    dense.save_pretrained(tmp_path / "old")
    before = _contents_bytes(tmp_path / "old")
    monkeypatch.setattr(sio, "save_masks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _masked_model().save_pretrained(tmp_path / "old", overwrite=True)
    assert _contents_bytes(tmp_path / "old") == before and _hidden(tmp_path) == []


def _contents_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_export_interrupted_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsessm_kernels.models import checkpoint

    real = checkpoint.write_text_atomic

    def config_fails(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_text_atomic", config_fails)
    with pytest.raises(OSError, match="No space"):
        _masked_model().export_for_stock_kernels(tmp_path / "stock")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(checkpoint, "write_text_atomic", real)
    _masked_model().export_for_stock_kernels(tmp_path / "stock")
    assert read_checkpoint(tmp_path / "stock").layer_masks == {}
    with pytest.raises(OutputPathError, match="overwrite=True"):
        _masked_model().export_for_stock_kernels(tmp_path / "stock")
    _masked_model().export_for_stock_kernels(tmp_path / "stock", overwrite=True, format="mamba_ssm")
    assert sorted(p.name for p in (tmp_path / "stock").iterdir()) == ["config.json", "pytorch_model.bin"]


# ---------------------------------------------------------------------- warnings
def test_tokenizer_warning_points_at_the_caller(tmp_path: Path) -> None:
    from sparsessm_kernels.prune import load_tokenizer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_tokenizer(tmp_path, 300)
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]


def test_warning_through_the_pipeline_points_at_the_caller(tmp_path: Path) -> None:
    """Reached through run_prune -> load_tokenizer, the warning still names this file, not run.py."""
    from sparsessm_kernels.prune.run import PruneJob, run_prune

    model = MambaLM.from_config(MambaLMConfig(vocab_size=260, d_model=16, n_layer=1, d_state=4), seed=0)
    model.save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("state space models " * 40, encoding="utf-8")
    job = PruneJob(
        model_dir=str(tmp_path / "model"),
        save=str(tmp_path / "out"),
        calib=str(corpus),
        nsamples=2,
        seqlen=16,
        progress=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_prune(job)
    assert [(Path(w.filename).name, w.category) for w in caught] == [(Path(__file__).name, UserWarning)]


def test_cli_warning_format_has_no_source_line() -> None:
    from sparsessm_kernels.cli import format_cli_warning

    text = format_cli_warning("prune", UserWarning("bytes"), UserWarning, "/x/run.py", 3, "tok = f()")
    assert text == "sparsessm prune: warning: bytes\n"
    other = format_cli_warning("eval", "old", FutureWarning, "/x/y.py", 1)
    assert other == "sparsessm eval: warning: old (FutureWarning)\n"


# ---------------------------------------------------------------------- progress
class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _run_bar(monkeypatch: pytest.MonkeyPatch, tty: bool, n: int = 400) -> str:
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    assert sum(_progress.progress(range(n), desc="work")) == n * (n - 1) // 2
    return stream.getvalue()


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _run_bar(monkeypatch, tty=True)
    assert "\r" in out and "work" in out and "400/400" in out


def test_progress_off_a_terminal_prints_rare_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPARSESSM_PROGRESS_INTERVAL", raising=False)
    out = _run_bar(monkeypatch, tty=False)
    lines = out.splitlines()
    assert "\r" not in out and 1 <= len(lines) <= 2  # the first and the last, not one per update
    assert lines[-1].startswith("work: 100%") and "400/400" in lines[-1]


def test_progress_interval_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSESSM_PROGRESS_INTERVAL", "0")
    assert _run_bar(monkeypatch, tty=False) == ""
    assert "\r" in _run_bar(monkeypatch, tty=True)  # terminals are unaffected
    monkeypatch.setenv("SPARSESSM_PROGRESS_INTERVAL", "0.5")
    assert _progress.progress_interval() == 0.5
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("SPARSESSM_PROGRESS_INTERVAL", bad)
        with pytest.raises(ValueError, match=f"SPARSESSM_PROGRESS_INTERVAL: expected seconds >= 0.*{bad}"):
            _progress.progress_interval()
    assert _progress.progress(range(3), desc="x", enabled=False) == range(3)  # --no-progress: no bar at all
