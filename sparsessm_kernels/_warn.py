"""Warnings that point at the user's code, not at this package's internals."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def _skipped_by_warnings(filename: str) -> bool:
    """Frames ``warnings.warn`` itself skips when counting ``stacklevel`` (the import machinery)."""
    return "importlib" in filename and "_bootstrap" in filename


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first caller outside this package.

    A fixed ``stacklevel`` is right for one call path only: the same warning reached through
    ``prune_model`` or ``run_prune`` would name a line of this package. Here the stack is walked
    up to the first frame whose file is not under ``sparsessm_kernels/``, so the warning's file,
    line and the default once-per-location filter all refer to the user's call.
    """
    frame = sys._getframe(1)  # the package function that warns; stacklevel 2 names it
    level = 2
    while frame is not None and (
        _in_package(frame.f_code.co_filename) or _skipped_by_warnings(frame.f_code.co_filename)
    ):
        if not _skipped_by_warnings(frame.f_code.co_filename):
            level += 1
        frame = frame.f_back
    warnings.warn(message, category, stacklevel=level)
