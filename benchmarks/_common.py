"""Reusable pieces of the benchmark scripts (``bench_scan.py``, ``bench_e2e.py``, ``quality/run.py``).

Nothing here is specific to one benchmark: environment and version collection, result headers, timing with
the right clock for the device, robust summary statistics, atomic JSON output and plain-text
tables. The module imports only the standard library, torch and two small private helpers of the
package (thread choice, timing spreads), so it is cheap to load and works both as
``benchmarks._common`` and, when a script in this folder runs directly, as ``_common``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sparsessm_kernels._threads import ThreadChoice, choose_threads
from sparsessm_kernels._timing import NOT_SIGNIFICANT, Spread, compare, spread

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


# ------------------------------------------------------------------------------ environment
def utc_now_iso() -> str:
    """Current time as an ISO 8601 UTC string with second precision, e.g. ``2025-01-31T12:00:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def slugify(text: str) -> str:
    """Lower-case ``text`` and squash every run of non-alphanumerics into one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is visible, else ``cpu``; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA was requested but torch.cuda.is_available() is False")
    return device


def device_info(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: the CPU model and thread counts, plus the GPU on CUDA."""
    info: dict[str, Any] = {
        "type": device.type,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            {
                "name": props.name,
                "index": index,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "cuda": torch.version.cuda,
            }
        )
    else:
        info["name"] = info["cpu"]
    return info


def device_kind(device: torch.device) -> str:
    """Short tag for file names: ``cpu`` or ``cuda_<gpu-name-slug>`` (e.g. ``cuda_nvidia_h100_80gb_hbm3``)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda_{slugify(torch.cuda.get_device_name(index))}"
    return slugify(device.type)


def package_version(module: str, dists: Sequence[str] = (), *, import_module: bool = False) -> str | None:
    """Version of an installed package, or ``None`` when it is missing (or fails to import).

    Distribution metadata is tried first (cheap, no import). With ``import_module=True`` the
    module is also imported, so a package that is installed but broken (for example a CUDA
    extension without a GPU) reports ``None``.
    """
    version = None
    for dist in (*dists, module):
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    if import_module or version is None:
        try:
            mod = importlib.import_module(module)
        except Exception:
            return None
        version = version or str(getattr(mod, "__version__", "unknown"))
    return version


def collect_versions(extra: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """Versions of python, torch, triton, transformers, sparsessm_kernels and mamba_ssm.

    Packages that are not installed (or, for ``mamba_ssm``, do not import) are left out.
    ``extra`` entries are merged in as given.
    """
    import sparsessm_kernels

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "sparsessm_kernels": sparsessm_kernels.__version__,
    }
    optional = {
        "triton": package_version("triton", ("triton", "pytorch-triton")),
        "transformers": package_version("transformers"),
        "mamba_ssm": package_version("mamba_ssm", ("mamba-ssm", "mamba_ssm"), import_module=True),
    }
    versions.update({k: v for k, v in optional.items() if v is not None})
    if extra:
        versions.update(extra)
    return versions


# ---------------------------------------------------------------------------------- threads
THREADS_HELP = (
    "torch CPU threads. Default: automatic, the physical cores available to this process that are idle "
    "now, at most 4 (an explicit OMP_NUM_THREADS is kept); more threads than idle cores make CPU "
    "timings many times slower"
)
"""``--threads`` help text of every benchmark script."""


def apply_threads(requested: int | None) -> ThreadChoice:
    """Set torch's CPU threads to ``requested`` or, when ``None``, to the automatic choice of
    ``sparsessm_kernels._threads`` (idle physical cores, at most a few); log the choice."""
    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    log(f"torch CPU threads: {choice.threads} ({choice.reason})")
    return choice


# ----------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TimingStats:
    """Summary of repeated timings, all in milliseconds (``repeats`` 0: a count the timer did not
    report)."""

    median_ms: float
    min_ms: float
    iqr_ms: float
    mean_ms: float
    max_ms: float
    repeats: int
    q1_ms: float
    q3_ms: float


def summarize(samples_ms: Sequence[float]) -> TimingStats:
    """Median, min, interquartile range (Q3 - Q1, inclusive quartiles), mean, max and the quartiles."""
    if not samples_ms:
        raise ValueError("summarize: no samples")
    s = spread(samples_ms)
    return TimingStats(
        median_ms=s.median,
        min_ms=s.min,
        iqr_ms=s.q3 - s.q1,
        mean_ms=statistics.fmean(float(v) for v in samples_ms),
        max_ms=s.max,
        repeats=len(samples_ms),
        q1_ms=s.q1,
        q3_ms=s.q3,
    )


def timing_row_fields(stats: TimingStats) -> dict[str, float | int]:
    """The timing fields of a result row: ``median_ms``, ``min_ms``, ``q1_ms``, ``q3_ms``,
    ``iqr_ms``, ``max_ms``, ``mean_ms``, ``repeats``."""
    return {
        "median_ms": stats.median_ms,
        "min_ms": stats.min_ms,
        "q1_ms": stats.q1_ms,
        "q3_ms": stats.q3_ms,
        "iqr_ms": stats.iqr_ms,
        "max_ms": stats.max_ms,
        "mean_ms": stats.mean_ms,
        "repeats": stats.repeats,
    }


def row_spread(row: Mapping[str, Any]) -> Spread:
    """The :class:`~sparsessm_kernels._timing.Spread` of a result row's timing fields."""
    return Spread(
        row["min_ms"], row["q1_ms"], row["median_ms"], row["q3_ms"], row["max_ms"], row["repeats"] or None
    )


def speedup_of(base: Mapping[str, Any] | None, row: Mapping[str, Any]) -> tuple[float | None, bool | None]:
    """``(base median / row median, significant)`` for two result rows: significant when their
    quartile ranges do not overlap (``sparsessm_kernels._timing.compare``). ``(None, None)`` without
    a base; ``(1.0, None)`` for the base itself."""
    if base is None:
        return None, None
    if base is row:
        return 1.0, None
    speedup = compare(row_spread(base), row_spread(row))
    return (speedup.ratio, speedup.significant) if speedup else (None, None)


def fmt_speedup(value: float | None, significant: bool | None) -> str:
    """A speedup for a table: ``"1.2x"``, ``"not significant"`` when the spreads overlap, ``-``."""
    if value is not None and significant is False:
        return NOT_SIGNIFICANT
    return fmt_float(value, suffix="x")


class GraphCaptureError(RuntimeError):
    """A call could not be captured in a CUDA graph (it synchronises with the host, ...)."""


def time_cuda_graph(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    inner: int = 1,
) -> TimingStats:
    """Time ``fn()`` as CUDA-graph replays: ``inner`` calls are captured once into a graph (after
    ``warmup`` calls on a side stream, as capture requires), then each of ``repeats`` samples is one
    replay timed with CUDA events, divided by ``inner``. Launch and Python overhead are not in the
    numbers: this is the GPU time of the captured kernels. ``fn`` must be capturable (no host
    synchronisation); in-place updates (a decode state) are replayed like any other kernel.
    """
    if device.type != "cuda":
        raise ValueError(f"time_cuda_graph: needs a CUDA device, got {device}")
    if repeats < 1 or inner < 1 or warmup < 0:
        raise ValueError(
            f"time_cuda_graph: need repeats >= 1, inner >= 1, warmup >= 0 (got {repeats}, {inner}, {warmup})"
        )
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
    except RuntimeError as exc:
        raise GraphCaptureError(f"the call could not be captured in a CUDA graph: {exc}") from exc
    graph.replay()
    synchronize(device)
    return summarize(_cuda_event_samples(graph.replay, device, repeats, inner))


def _cuda_event_samples(run: Callable[[], Any], device: torch.device, repeats: int, per: int) -> list[float]:
    """``repeats`` CUDA-event timings (ms) of ``run()`` on ``device``, each divided by ``per``."""
    samples: list[float] = []
    with torch.cuda.device(device):
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            synchronize(device)
            start.record()
            run()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / per)
    return samples


def time_fn(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    inner: int = 1,
) -> TimingStats:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` samples of ``inner`` calls each.

    Every sample is the time of ``inner`` back-to-back calls divided by ``inner`` (use
    ``inner > 1`` for sub-millisecond ops such as a decode step). On CUDA the samples come from
    ``torch.cuda.Event`` pairs around the calls, with the device synchronised before the first
    event and after the last; on CPU from :func:`time.perf_counter`.
    """
    import time

    if repeats < 1 or inner < 1 or warmup < 0:
        raise ValueError(
            f"time_fn: need repeats >= 1, inner >= 1, warmup >= 0 (got {repeats}, {inner}, {warmup})"
        )
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    if device.type == "cuda":

        def calls() -> None:
            for _ in range(inner):
                fn()

        samples = _cuda_event_samples(calls, device, repeats, inner)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / inner)
    return summarize(samples)


def stats_dict(stats: TimingStats) -> dict[str, float | int]:
    return asdict(stats)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` when both are known positive numbers, else ``None``."""
    if numerator is None or denominator is None or denominator <= 0 or not math.isfinite(numerator):
        return None
    return numerator / denominator


# ------------------------------------------------------------------------------------ output
def result_header(benchmark: str, device: torch.device) -> dict[str, Any]:
    """The fields every result file starts with: benchmark name, device, UTC date and versions."""
    return {
        "benchmark": benchmark,
        "device": device_info(device),
        "date": utc_now_iso(),
        "versions": collect_versions(),
    }


def backend_status() -> dict[str, dict[str, Any]]:
    """``sparsessm_kernels.available_backends()`` as JSON: ``{name: {"usable", "reason"}}``."""
    import sparsessm_kernels

    return {k: {"usable": u, "reason": r} for k, (u, r) in sparsessm_kernels.available_backends().items()}


def run_provenance(argv: Sequence[str] | None, out_path: str | os.PathLike) -> dict[str, Any]:
    """How a result was produced: output path, command-line arguments (``sys.argv[1:]`` when
    ``argv`` is None; absolute paths made portable) and the ``SPARSESSM_*`` environment."""
    return {
        "out": display_path(out_path),
        "argv": portable_argv(sys.argv[1:] if argv is None else list(argv)),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SPARSESSM_")},
    }


def print_skipped(skipped: Sequence[Mapping[str, Any]]) -> None:
    """The ``{"what", "reason"}`` entries of a result's ``skipped`` list, on stdout."""
    if skipped:
        print("\nskipped:")
        for item in skipped:
            print(f"  {item['what']}: {item['reason']}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_out_path(parser: argparse.ArgumentParser, path: str | os.PathLike, option: str = "--out") -> None:
    """Exit with status 2 (``parser.error``) before any benchmarking unless the result file ``path``
    can be written (not a directory; its directory exists or can be created, and is writable)."""
    from sparsessm_kernels._io import OutputPathError, check_output_file

    try:
        check_output_file(path, option)
    except OutputPathError as exc:
        parser.error(str(exc))


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically (temp file + ``os.replace``)."""
    from sparsessm_kernels._io import atomic_path

    target = Path(path)
    text = json.dumps(payload, indent=2, default=_json_default, allow_nan=False) + "\n"
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def fmt_float(value: float | None, digits: int = 3, suffix: str = "") -> str:
    """Compact number formatting for tables; ``None`` -> ``-``."""
    if value is None:
        return "-"
    if value == 0:
        return f"0{suffix}"
    if abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    if abs(value) < 10 ** -(digits - 1) or abs(value) >= 10**digits:
        return f"{value:.{max(1, digits - 2)}e}{suffix}"
    return f"{value:.{digits}g}{suffix}"


def format_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Plain-text table. ``columns`` is ``[(key, header), ...]``; values are ``str()``-ed.

    Numeric-looking columns are right-aligned, everything else left-aligned.
    """
    rows = list(rows)
    cells = [[("-" if row.get(key) is None else str(row.get(key))) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def is_num(text: str) -> bool:
        return bool(re.fullmatch(r"[-+]?[\d.,]+(e[-+]?\d+)?x?", text)) or text == "-"

    right = [all(is_num(c[i]) for c in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(c) for c in cells)
    return "\n".join(out)


def log(message: str) -> None:
    """Progress message on stderr (stdout carries the final table)."""
    print(message, file=sys.stderr, flush=True)


def portable_argv(argv: list[str]) -> list[str]:
    """``argv`` with absolute paths (``PATH`` or ``--flag=PATH``) shown through :func:`display_path`:
    results never record this machine's absolute paths."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if value and Path(value).is_absolute():
            value = display_path(value)
        out.append(f"{flag}{eq}{value}")
    return out


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when inside it (results never record this
    machine's absolute paths), else just its file name."""
    resolved = Path(path).resolve()
    root = RESULTS_DIR.resolve().parents[1]
    try:
        return str(resolved.relative_to(root))
    except ValueError:
        return resolved.name
