"""Repeated timings as a median with its spread, and when a speedup between two of them means something.

A speedup is quoted only when the interquartile ranges (Q1..Q3) of the two timings do not overlap,
i.e. when its own range ``[base Q1 / new Q3, base Q3 / new Q1]`` lies entirely above or below 1,
and each timing has at least :data:`MIN_SAMPLES` samples; otherwise it is "not significant". Used
by ``sparsessm demo`` and the benchmarks (``benchmarks/_common.py``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MIN_SAMPLES = 3
"""Fewer samples than this say nothing about the spread: no speedup is significant."""

NOT_SIGNIFICANT = "not significant"


@dataclass(frozen=True)
class Spread:
    """Summary of repeated timings (any unit): minimum, quartiles, maximum and the sample count
    (``None``: unknown, e.g. quartiles reported by another timer)."""

    min: float
    q1: float
    median: float
    q3: float
    max: float
    n: int | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "min": self.min,
            "q1": self.q1,
            "median": self.median,
            "q3": self.q3,
            "max": self.max,
            "n": self.n,
        }

    def format(self, digits: int = 2) -> str:
        """``"19.38 (18.90-19.91)"``: the median and, in brackets, Q1-Q3."""
        return f"{self.median:.{digits}f} ({self.q1:.{digits}f}-{self.q3:.{digits}f})"


def spread(samples: Sequence[float]) -> Spread:
    """Minimum, quartiles (inclusive method: Q1 and Q3 lie between samples), median and maximum."""
    if not samples:
        raise ValueError("spread: no samples")
    values = sorted(float(s) for s in samples)
    if len(values) >= 2:
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = median = q3 = values[0]
    return Spread(values[0], q1, median, q3, values[-1], len(values))


@dataclass(frozen=True)
class Speedup:
    """``ratio`` = base median / new median; ``low``-``high`` = base Q1 / new Q3 .. base Q3 / new Q1."""

    ratio: float
    low: float
    high: float
    significant: bool

    def format(self) -> str:
        """``"1.20x"``, or ``"not significant"`` when the spread makes the ratio meaningless."""
        return f"{self.ratio:.2f}x" if self.significant else NOT_SIGNIFICANT


def compare(base: Spread, new: Spread) -> Speedup | None:
    """How much faster ``new`` is than ``base`` (``None`` when a median is not positive)."""
    if base.median <= 0 or new.median <= 0 or new.q1 <= 0 or new.q3 <= 0:
        return None
    low, high = base.q1 / new.q3, base.q3 / new.q1
    enough = all(s.n is None or s.n >= MIN_SAMPLES for s in (base, new))
    return Speedup(base.median / new.median, low, high, enough and (low > 1.0 or high < 1.0))


def time_interleaved(
    fns: Sequence[Callable[[], Any]], repeats: int, sync: Callable[[], None] = lambda: None
) -> list[Spread]:
    """Time each of ``fns`` ``repeats`` times (milliseconds), interleaved so that a drift of the
    machine's speed hits all of them alike: one untimed warm-up call each, then rounds that call
    every function once, in reversed order every other round. ``sync`` runs before and after each
    timed call (e.g. ``torch.cuda.synchronize``)."""
    if repeats < 1:
        raise ValueError(f"repeats: expected an integer >= 1, got {repeats!r}")
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for round_ in range(repeats):
        for i in order if round_ % 2 == 0 else order[::-1]:
            sync()
            t0 = time.perf_counter()
            fns[i]()
            sync()
            samples[i].append((time.perf_counter() - t0) * 1e3)
    return [spread(s) for s in samples]
