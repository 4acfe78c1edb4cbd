"""Safe outputs: atomic files, atomic directories, and output checks made before any work.

* :func:`atomic_path` / :func:`write_text_atomic`: a file is written to a temporary sibling and
  renamed onto its name only when complete, so a crash never leaves a half-written file.
* :func:`atomic_directory`: a directory (a model checkpoint: config, weights, masks, ...) is
  built in a temporary sibling directory and renamed into place only when complete, so an
  interrupted write never leaves a directory that loads as something else (say, the dense model
  because ``sparsity.safetensors`` is missing). Replacing an existing directory renames the old
  one aside, the new one in, then removes the old one.
* :func:`check_output_dir` / :func:`check_writable_dir` / :func:`check_output_file`: the checks
  a command runs on its output locations before it starts working, raising
  :class:`OutputPathError` (a ``ValueError``) that names the option, the path and the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger("sparsessm_kernels")

__all__ = [
    "OutputPathError",
    "atomic_directory",
    "atomic_path",
    "check_output_dir",
    "check_output_file",
    "check_writable_dir",
    "write_text_atomic",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

STAGING_TAG = ".partial-"
"""Part of the name of a directory being built (``.<name>.partial-<random>``)."""

ASIDE_TAG = ".replaced-"
"""Part of the name of a replaced directory while it is removed (``.<name>.replaced-<random>``)."""


class OutputPathError(ValueError):
    """An output location cannot be written, or holds something that must not be replaced."""


# ---------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Usage::

        with atomic_path("out/model.safetensors") as tmp:
            save_file(tensors, tmp)

    The temporary file lives in the same directory, so the final ``os.replace`` is atomic on
    POSIX and Windows. On any exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------- checks
def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest existing ancestor (``path`` made absolute first)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _cannot_write(directory: Path) -> str | None:
    """Why a new entry cannot be created in ``directory`` (``None`` when it can).

    Probes by creating and removing an empty directory, which catches what permission bits miss
    (read-only file systems, ACLs, quotas on entries).
    """
    if not directory.is_dir():
        return f"{directory} is not a directory"
    try:
        probe = tempfile.mkdtemp(prefix=".sparsessm-write-check-", dir=directory)
    except OSError as exc:
        return f"{directory} is not writable ({exc.strerror or exc})"
    os.rmdir(probe)
    return None


def _entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _listing(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def check_writable_dir(path: str | os.PathLike, option: str) -> None:
    """Check that files can be written into directory ``path`` (created when missing).

    For outputs written file by file into a directory that may already hold other files (a
    report directory). Raises :class:`OutputPathError` naming ``option``, the path and the reason.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{option}: {p} exists and is not a directory")
    where = _existing_ancestor(p)
    reason = _cannot_write(where)
    if reason is not None:
        verb = "write into" if where == Path(os.path.abspath(p)) else "create"
        raise OutputPathError(f"{option}: cannot {verb} {p}: {reason}")


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Check that file ``path`` can be written atomically (its directory is created when missing).

    Raises :class:`OutputPathError` naming ``option``, the path and the reason.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{option}: {p} is a directory; expected a file path")
    where = _existing_ancestor(p.parent)
    reason = _cannot_write(where)
    if reason is not None:
        raise OutputPathError(f"{option}: cannot write {p}: {reason}")


def _replace_in_place(target: Path) -> bool:
    """Whether an existing ``target`` must be filled in place rather than renamed: it is a mount
    point, or its parent does not accept new entries (both rule out a temporary sibling)."""
    return os.path.ismount(target) or _cannot_write(target.parent) is not None


def check_output_dir(
    path: str | os.PathLike,
    option: str,
    *,
    overwrite: bool = False,
    overwrite_hint: str = "overwrite=True",
) -> None:
    """Check that :func:`atomic_directory` can write directory ``path``; raises before any work.

    Refused (:class:`OutputPathError`, naming ``option``, the path and the reason): ``path`` is
    a file; ``path`` is a non-empty directory and ``overwrite`` is false (the message tells to
    pass ``overwrite_hint``); neither a temporary sibling nor (for an existing directory that is a
    mount point or whose parent is read-only) an entry inside ``path`` can be created.
    """
    p = Path(path)
    real = Path(os.path.realpath(p))
    if real.exists() and not real.is_dir():
        raise OutputPathError(f"{option}: {p} exists and is not a directory")
    if not real.exists():
        where = _existing_ancestor(real)
        reason = _cannot_write(where)
        if reason is not None:
            raise OutputPathError(f"{option}: cannot create {p}: {reason}")
        return
    try:
        entries = _entries(real)
    except OSError as exc:
        raise OutputPathError(f"{option}: cannot read {p} ({exc.strerror or exc})") from exc
    if entries and not overwrite:
        raise OutputPathError(
            f"{option}: {p} already exists and is not empty ({_listing(entries)}); pass {overwrite_hint} "
            "to replace it (everything in it is removed), or choose another directory"
        )
    if not _replace_in_place(real):
        return
    inside_reason = _cannot_write(real)
    if inside_reason is not None:
        raise OutputPathError(f"{option}: cannot write {p}: {inside_reason}")


# ---------------------------------------------------------------------- directories
def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as exc:
        logger.warning("could not remove %s (%s); delete it by hand", path, exc)


def _commit_by_rename(staging: Path, target: Path, overwrite: bool, option: str, hint: str) -> None:
    """Rename ``staging`` onto ``target``; an existing ``target`` is renamed aside first."""
    if not target.exists():
        try:
            os.rename(staging, target)
            return
        except OSError:
            if not target.is_dir():  # a real failure, not a directory that appeared meanwhile
                raise
    if _entries(target) and not overwrite:  # appeared (or filled) since the check
        raise OutputPathError(f"{option}: {target} is no longer empty; pass {hint} to replace it")
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}{ASIDE_TAG}", dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _remove_tree(aside)


def _commit_in_place(
    staging: Path, target: Path, overwrite: bool, key_files: Sequence[str], option: str, hint: str
) -> None:
    """Move the entries of ``staging`` (inside ``target``) up into ``target``.

    Old entries go first, ``key_files`` among them before any other; new ``key_files`` come in
    last. So until the end ``target`` lacks its key files, and a directory without them (say,
    without ``config.json``) does not load.
    """
    keys = set(key_files)
    old = [n for n in _entries(target) if n != staging.name]
    if old and not overwrite:
        raise OutputPathError(f"{option}: {target} is no longer empty; pass {hint} to replace it")
    for name in sorted(old, key=lambda n: n not in keys):
        entry = target / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for name in sorted(_entries(staging), key=lambda n: n in keys):
        os.rename(staging / name, target / name)
    os.rmdir(staging)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    key_files: Sequence[str] = (),
    option: str = "directory",
    overwrite_hint: str = "overwrite=True",
) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes ``path``, as a whole.

    Usage::

        with atomic_directory("out/model", key_files=("config.json",)) as tmp:
            write_weights(tmp / "model.safetensors")
            write_config(tmp / "config.json")

    The staging directory is a hidden sibling (``.<name>.partial-<random>``) renamed onto
    ``path`` at the end; an existing ``path`` (empty, or any with ``overwrite=True``) is renamed
    aside (``.<name>.replaced-<random>``), the new directory renamed in, the old one removed. If the
    body raises (or is interrupted: ``KeyboardInterrupt`` too) the staging directory is removed
    and ``path`` is untouched. A hard kill can leave the hidden directories behind, never a
    partial ``path``.

    When ``path`` exists but cannot be renamed (a mount point, or a read-only parent), the
    staging directory is made inside ``path`` and its entries are moved up one by one at the end:
    old entries are removed first (``key_files`` before the rest), ``key_files`` move in last,
    so an interruption leaves a directory without its key files, which does not load.

    Args:
        path: the output directory (symlinks are followed: the directory they point to is
            replaced). Missing parents are created.
        overwrite: replace a non-empty directory (everything in it is removed).
        key_files: names without which the directory is not usable (``config.json`` for a
            checkpoint); only the in-place fallback needs them.
        option, overwrite_hint: how errors name the output and the way to allow replacing it.

    Raises:
        OutputPathError: see :func:`check_output_dir` (raised before the body runs).
    """
    check_output_dir(path, option, overwrite=overwrite, overwrite_hint=overwrite_hint)
    target = Path(os.path.realpath(path))
    in_place = target.exists() and _replace_in_place(target)
    if in_place:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_TAG, dir=target))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_TAG}", dir=target.parent))
    try:
        yield staging
        if in_place:
            _commit_in_place(staging, target, overwrite, key_files, option, overwrite_hint)
        else:
            # mkdtemp makes the directory 0700: give it the old directory's mode, or a plain mkdir's.
            mode = (target.stat().st_mode & 0o7777) if target.exists() else (0o777 & ~_UMASK)
            os.chmod(staging, mode)
            _commit_by_rename(staging, target, overwrite, option, overwrite_hint)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
