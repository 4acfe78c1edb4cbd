"""Progress bars that do not flood logs.

On a terminal (or in a notebook) :func:`progress` is an ordinary tqdm bar, redrawn in place. When
stderr is not a terminal (redirected to a file, a pipe, a CI log) a bar cannot redraw in place
and every update would become one more line, so there it prints one plain line at most every
``SPARSESSM_PROGRESS_INTERVAL`` seconds (default :data:`DEFAULT_INTERVAL_S`), plus the first and
the last; ``SPARSESSM_PROGRESS_INTERVAL=0`` prints none.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

__all__ = ["DEFAULT_INTERVAL_S", "INTERVAL_ENV", "progress", "progress_interval"]

T = TypeVar("T")

INTERVAL_ENV = "SPARSESSM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 60.0
"""Seconds between progress lines when stderr is not a terminal."""


def progress_interval() -> float | None:
    """Seconds between progress lines on a non-terminal stderr; ``None`` when they are off.

    Raises:
        ValueError: ``SPARSESSM_PROGRESS_INTERVAL`` is not a number of seconds ``>= 0``.
    """
    raw = os.environ.get("SPARSESSM_PROGRESS_INTERVAL", "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(
            f"{INTERVAL_ENV}: expected seconds >= 0 between progress lines when stderr is not a "
            f"terminal (0 = none), got {raw!r}"
        )
    return value or None


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _notebook_tqdm() -> Any | None:
    """tqdm's notebook bar when running in a Jupyter kernel with widgets, else ``None``."""
    from tqdm.autonotebook import tqdm as auto
    from tqdm.std import tqdm as std

    return None if auto is std else auto


class _LineWriter:
    """A file for tqdm that turns its in-place redraws (``"\\r" + bar``) into whole lines."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line and line != self.last:  # the closing redraw often repeats the last line
            self.stream.write(line + "\n")
            self.last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable: Iterable[T], *, desc: str, enabled: bool = True, total: int | None = None
) -> Iterable[T]:
    """Iterate over ``iterable`` with a progress bar on stderr (see the module docstring).

    Args:
        iterable: what to iterate over.
        desc: the bar's label.
        enabled: ``False`` iterates without any bar (``--no-progress``).
        total: the length when ``iterable`` has none.
    """
    if not enabled:
        return iterable
    notebook = _notebook_tqdm()
    if notebook is not None:
        return notebook(iterable, desc=desc, total=total)
    from tqdm.std import tqdm

    stream = sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, file=stream)
    interval = progress_interval()
    if interval is None or stream is None:
        return iterable
    # maxinterval too: tqdm's monitor thread would otherwise force a redraw every 10 s.
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=_LineWriter(stream),
        mininterval=interval,
        maxinterval=interval,
        ascii=True,
        ncols=100,
    )
