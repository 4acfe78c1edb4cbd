"""How many CPU threads torch should use for a run (``sparsessm demo --threads``, the benchmarks).

torch starts with one intra-op thread per CPU. When another process keeps some of those CPUs busy,
every parallel region of a small op waits for a thread the scheduler has parked behind that process:
on 2 cores with one busy process the demo ran 10-20x slower with 2 threads than with 1. The
automatic choice therefore uses the CPUs this process may run on (``os.sched_getaffinity``) that are
idle right now, at most one per physical core and at most :data:`MAX_AUTO_THREADS`:

    threads = max(1, min(physical cores, floor(idle CPUs + 0.25), MAX_AUTO_THREADS))

where ``idle CPUs`` is the number of allowed CPUs minus their busy time over a short sample of
``/proc/stat`` (Linux; elsewhere every allowed CPU counts as idle). An explicit ``OMP_NUM_THREADS``
is respected as set. The choice is made once, at the start: load that starts later is not seen.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

MAX_AUTO_THREADS = 4
"""The automatic choice never exceeds this: the demo's and the CPU benchmarks' ops are small."""

PROBE_SECONDS = 0.2
"""How long ``/proc/stat`` is sampled to see which CPUs are busy."""

_PROC_STAT = Path("/proc/stat")
_SYS_CPU = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class ThreadChoice:
    """``threads`` to pass to ``torch.set_num_threads`` and, in words, why."""

    threads: int
    reason: str


def allowed_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask; all CPUs where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int], sys_cpu: Path = _SYS_CPU) -> int:
    """How many physical cores ``cpus`` span (SMT siblings count once); ``len(cpus)`` when the
    topology cannot be read."""
    cores = set()
    for cpu in cpus:
        topo = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            cores.add(
                ((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip())
            )
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def _cpu_times(cpus: list[int], proc_stat: Path) -> dict[int, tuple[int, int]] | None:
    """``{cpu: (busy, total)}`` jiffies of ``cpus`` from ``/proc/stat``; ``None`` when unreadable."""
    wanted = {f"cpu{c}": c for c in cpus}
    found: dict[int, tuple[int, int]] = {}
    try:
        lines = proc_stat.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, rest = line.partition(" ")
        if name in wanted:
            fields = [int(v) for v in rest.split()]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            total = sum(fields[:8])  # user .. steal; guest time is already inside user
            found[wanted[name]] = (total - idle, total)
    return found if len(found) == len(cpus) else None


def busy_cpus(cpus: list[int], seconds: float = PROBE_SECONDS, proc_stat: Path = _PROC_STAT) -> float | None:
    """How many of ``cpus`` other work keeps busy: their summed busy fraction over ``seconds``
    (this process sleeps meanwhile). ``None`` when ``/proc/stat`` cannot be read."""
    before = _cpu_times(cpus, proc_stat)
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times(cpus, proc_stat)
    if after is None:
        return None
    busy = 0.0
    for cpu in cpus:
        d_busy = after[cpu][0] - before[cpu][0]
        d_total = after[cpu][1] - before[cpu][1]
        busy += d_busy / d_total if d_total > 0 else 0.0
    return busy


def auto_threads(cores: int, cpus: int, busy: float | None, cap: int = MAX_AUTO_THREADS) -> int:
    """The automatic rule: ``max(1, min(cores, floor(cpus - busy + 0.25), cap))``.

    ``cores`` physical cores and ``cpus`` logical CPUs are allowed, ``busy`` of those CPUs are kept
    busy by other work (``None``: unknown, taken as 0). A CPU at least 75% idle counts as free.
    """
    free = cpus if busy is None else math.floor(cpus - busy + 0.25)
    return max(1, min(cores, free, cap))


def choose_threads(
    requested: int | None = None, *, cap: int = MAX_AUTO_THREADS, probe_seconds: float = PROBE_SECONDS
) -> ThreadChoice:
    """The thread count for this run: ``requested`` when given (``>= 1``), torch's own count when
    ``OMP_NUM_THREADS`` is set, else :func:`auto_threads` over the allowed CPUs idle now."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads: expected an integer >= 1, got {requested!r}")
        return ThreadChoice(requested, "as requested")
    if os.environ.get("OMP_NUM_THREADS"):
        return ThreadChoice(torch.get_num_threads(), f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    cpus = allowed_cpus()
    cores = physical_cores(cpus)
    busy = busy_cpus(cpus, probe_seconds)
    threads = auto_threads(cores, len(cpus), busy, cap)
    load = "load unknown" if busy is None else f"{busy:.1f} of them busy"
    return ThreadChoice(
        threads,
        f"automatic: {len(cpus)} CPUs on {cores} physical cores available, {load}, at most {cap}",
    )


def describe(threads: int) -> str:
    """``"1 thread"`` / ``"4 threads"``."""
    return f"{threads} thread{'' if threads == 1 else 's'}"
