"""The work behind ``sparsessm demo`` (see ``docs/demo.md``).

``--arch mamba`` (default) runs the steps below on the embedded Mamba-1 :data:`MODEL_DIR`;
``--arch mamba2`` runs those of :mod:`.run_mamba2` on the embedded Mamba-2 (:data:`MODEL_DIRS`).
Mamba-1 steps:

1. held-out text: the held-out standard-library files named in ``training_config.json`` (read
   from this machine's ``sysconfig.get_paths()["stdlib"]``), as UTF-8 bytes;
2. calibration: ``nsamples`` random windows of ``seqlen`` bytes of the *training* files;
3. for each case of :data:`DEMO_CASES`: a fresh copy of the model, ``prune_model`` on its SSMs
   (``A_log``, 50%), held-out perplexity;
4. the sparse scan of each case on a layer-shaped input (layer 0's ``A`` and mask, ``(1, d_inner,
   scan_seqlen)`` random inputs) with the best available backend: its error against the float64
   reference ``selective_scan_ref`` on the first ``check_seqlen`` steps, and its time against the
   dense scan on the same backend (``repeats`` interleaved calls each: median, quartiles, and the
   speedup only when the quartile ranges do not overlap).

The CPU work runs on ``threads`` torch threads, chosen by ``sparsessm_kernels._threads`` unless
given: the idle physical cores available to the process, at most a few.
"""

from __future__ import annotations

import copy
import json
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import check_writable_dir, write_text_atomic
from .._threads import ThreadChoice, choose_threads, describe
from .._timing import Speedup, Spread, compare, time_interleaved

MODEL_DIR = Path(__file__).resolve().parent / "tiny_mamba"
"""The embedded Mamba-1 checkpoint (HF layout)."""

MODEL_DIRS = {"mamba": MODEL_DIR, "mamba2": Path(__file__).resolve().parent / "tiny_mamba2"}
"""The embedded checkpoint of each ``--arch``."""

REPORT_NAME = "demo_report.json"
PLOT_NAME = "demo_report.png"

DEMO_CASES: tuple[tuple[str, str], ...] = (
    ("sparsessm", "unstructured"),
    ("sparsessm", "2:4"),
    ("sparsessm", "column"),
    ("magnitude", "unstructured"),
    ("magnitude", "2:4"),
)
"""``(method, pattern)`` pairs, spelled as ``sparsessm prune --method / --pattern``."""

SPARSITY = 0.5


@dataclass
class DemoOptions:
    """Settings of one demo run (the CLI flags of ``sparsessm demo``)."""

    out: str = "sparsessm_demo"
    device: str = "auto"
    seqlen: int = 256
    nsamples: int = 32
    eval_seqlen: int = 512
    eval_windows: int = 64
    scan_seqlen: int = 2048
    check_seqlen: int = 256
    repeats: int = 10
    seed: int = 0
    plot: bool = True
    model_dir: str | None = None
    threads: int | None = None
    """torch CPU threads; ``None``: chosen automatically (see ``sparsessm_kernels._threads``)."""
    arch: str = "mamba"
    """``"mamba"`` or ``"mamba2"``: which embedded model (:data:`MODEL_DIRS`) and which steps."""
    decode_tokens: int = 64
    """Mamba-2: tokens decoded per timed call (the decode timing)."""

    @classmethod
    def quick(cls, **overrides: Any) -> DemoOptions:
        """A reduced run for CI (seconds instead of minutes)."""
        base = {
            "seqlen": 128,
            "nsamples": 4,
            "eval_seqlen": 256,
            "eval_windows": 4,
            "scan_seqlen": 256,
            "check_seqlen": 64,
            "repeats": 5,
            "decode_tokens": 16,
        }
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        if self.arch not in MODEL_DIRS:
            raise ValueError(f"arch: expected one of {sorted(MODEL_DIRS)}, got {self.arch!r}")
        names = ("seqlen", "nsamples", "eval_seqlen", "eval_windows", "scan_seqlen", "check_seqlen")
        for name in (*names, "decode_tokens"):
            value = getattr(self, name)
            low = 2 if name in ("seqlen", "eval_seqlen") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        for name in ("repeats", "threads"):
            value = getattr(self, name)
            if value is None and name == "threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        check_writable_dir(self.out, "--out")


# ---------------------------------------------------------------------- data
def _training_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "training_config.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _stdlib_files(names: list[str], rule_heldout: bool) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = [root / n for n in names if (root / n).is_file()]
    if found:
        return found
    files = sorted(root.glob("*.py"), key=lambda p: p.name)  # same rule as train_tiny.py
    return [f for i, f in enumerate(files) if (i % 10 == 0) == rule_heldout]


def heldout_tokens(model_dir: str | Path | None = None) -> torch.Tensor:
    """UTF-8 bytes of the held-out standard-library files (1-D int64)."""
    cfg = _training_config(Path(model_dir or MODEL_DIR))
    files = _stdlib_files(cfg.get("data", {}).get("heldout_files", []), True)
    data = b"".join(f.read_bytes() for f in files)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def _train_tokens(model_dir: Path) -> torch.Tensor:
    cfg = _training_config(model_dir)
    files = _stdlib_files(cfg.get("data", {}).get("train_files", []), False)
    data = b"".join(f.read_bytes() for f in files)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


# ---------------------------------------------------------------------- scan
def _scan_inputs(d: int, n: int, length: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u, delta, z = (torch.randn(1, d, length, generator=g) for _ in range(3))
    B, C = (torch.randn(1, n, length, generator=g) for _ in range(2))
    return {k: v.to(device) for k, v in {"u": u, "delta": delta, "z": z, "B": B, "C": C}.items()}


def scan_check(
    A: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    layout: Any,
    pruned_states: str,
    opts: DemoOptions,
    device: torch.device,
) -> dict[str, Any]:
    """Backend, reference error and dense / sparse timings (median and spread, ms) of one layer's scan."""
    from ..ops import selective_scan, selective_scan_ref
    from ..ops.dispatch import resolve_backend

    d, n = A.shape
    A, D, dt_bias = A.to(device), D.to(device), dt_bias.to(device)
    layout = layout.to(device)
    backend = resolve_backend("auto", device)
    x = _scan_inputs(d, n, opts.scan_seqlen, device, opts.seed)

    def run(mask: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return selective_scan(
            inputs["u"],
            inputs["delta"],
            A,
            inputs["B"],
            inputs["C"],
            D,
            inputs["z"],
            dt_bias,
            True,
            state_mask=mask,
            pruned_states=pruned_states if mask is not None else "zero_transition",
            backend=backend,
        )

    short = {k: v[..., : min(opts.check_seqlen, opts.scan_seqlen)] for k, v in x.items()}
    got = run(layout, short)
    ref = selective_scan_ref(
        *(short[k].double() for k in ("u", "delta")),
        A.double(),
        short["B"].double(),
        short["C"].double(),
        D.double(),
        short["z"].double(),
        dt_bias.double(),
        True,
        state_mask=layout,
        pruned_states=pruned_states,
    )
    err = float((got.double() - ref).abs().max())
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        dense, sparse = time_interleaved([lambda: run(None, x), lambda: run(layout, x)], opts.repeats, sync)
    return {"backend": backend, **timing_fields(dense, sparse), "max_abs_err_vs_reference": err}


def timing_fields(dense: Spread, sparse: Spread, what: str = "scan") -> dict[str, Any]:
    """A result row's timing fields: medians, spreads and the speedup with its significance.

    ``what`` names the timed work in the keys: ``dense_{what}_ms``, ``{what}_ms``,
    ``dense_{what}_spread_ms``, ``{what}_spread_ms`` (``scan`` for Mamba-1, ``decode`` for Mamba-2).
    """
    speedup = compare(dense, sparse)
    return {
        f"dense_{what}_ms": dense.median,
        f"{what}_ms": sparse.median,
        f"dense_{what}_spread_ms": dense.as_dict(),
        f"{what}_spread_ms": sparse.as_dict(),
        "speedup": speedup.ratio if speedup else None,
        "speedup_range": [speedup.low, speedup.high] if speedup else None,
        "speedup_significant": bool(speedup and speedup.significant),
    }


# ---------------------------------------------------------------------- run
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(opts: DemoOptions, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run the demo; writes ``demo_report.json`` (and the PNG when matplotlib is installed)."""
    from ..prune.run import resolve_device

    opts.validate()
    device = resolve_device(opts.device)
    model_dir = Path(opts.model_dir) if opts.model_dir else MODEL_DIRS[opts.arch]
    t_start = time.perf_counter()
    threads = choose_threads(opts.threads)
    log(f"torch CPU threads: {threads.threads} ({threads.reason}; --threads N to choose)")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads.threads)
    try:
        if opts.arch == "mamba2":
            from .run_mamba2 import demo_steps_mamba2

            return demo_steps_mamba2(opts, device, model_dir, threads, t_start, log)
        return _demo_steps(opts, device, model_dir, threads, t_start, log)
    finally:
        torch.set_num_threads(previous_threads)


def _demo_steps(
    opts: DemoOptions,
    device: torch.device,
    model_dir: Path,
    threads: ThreadChoice,
    t_start: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from ..models import MambaLM
    from ..ops import StateLayout
    from ..prune import PruneConfig, calibration_windows, evaluate_perplexity, prune_model
    from ..prune.run import _model_info

    held = heldout_tokens(model_dir)
    calib = calibration_windows(_train_tokens(model_dir), opts.nsamples, opts.seqlen, opts.seed)

    def ppl(model: MambaLM) -> float:
        r = evaluate_perplexity(
            model, held, opts.eval_seqlen, batch_size=8, device=device, max_windows=opts.eval_windows
        )
        return r["ppl"]

    dense = MambaLM.from_pretrained(model_dir)
    dense_ppl = ppl(dense)
    log(f"dense: held-out perplexity {dense_ppl:.3f}")
    m0 = dense.mixer(0)
    A0, D0, bias0 = m0._A().detach(), m0.D.detach().float(), m0.dt_proj.bias.detach().float()

    results = []
    for method, pattern in DEMO_CASES:
        t0 = time.perf_counter()
        model = copy.deepcopy(dense)
        cfg = PruneConfig(method=method, targets="ssm", pattern=pattern, sparsity=None, seed=opts.seed)
        res = prune_model(model, calib, cfg, device=device, progress=False)
        if pattern == "column":
            layout, pruned_states = StateLayout(res.column_masks[0]), "remove"
        else:
            layout, pruned_states = model.state_layout(0)
        pruned = sum(r.pruned for r in res.modules)
        total = sum(r.params for r in res.modules)
        row = {
            "method": method,
            "pattern": pattern,
            "sparsity": pruned / total if total else 0.0,
            "ppl": ppl(model),
        }
        row.update(scan_check(A0, D0, bias0, layout, pruned_states, opts, device))
        results.append(row)
        log(
            f"{method} {pattern}: perplexity {row['ppl']:.3f}, scan {row['scan_ms']:.2f} ms vs dense "
            f"{row['dense_scan_ms']:.2f} ms ({time.perf_counter() - t0:.1f}s)"
        )

    report = {
        "arch": "mamba",
        "timed": "scan",
        "model": {"dir": str(model_dir), "name": model_dir.name, **_model_info(dense)},
        "device": _device_name(device),
        "threads": {"count": threads.threads, "reason": threads.reason},
        "dense_ppl": dense_ppl,
        "results": results,
        "settings": asdict(opts),
        "eval": {
            "text": "held-out Python standard library files, UTF-8 bytes",
            "seqlen": opts.eval_seqlen,
            "windows": min(opts.eval_windows, held.numel() // opts.eval_seqlen),
        },
        "scan_shape": {
            "batch": 1,
            "d_inner": int(A0.shape[0]),
            "d_state": int(A0.shape[1]),
            "seqlen": opts.scan_seqlen,
            "layer": 0,
        },
        "seconds": time.perf_counter() - t_start,
    }
    return write_report(report, opts, log)


def write_report(report: dict[str, Any], opts: DemoOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Write ``demo_report.json`` (and the PNG when asked for) to ``opts.out``; returns ``report``
    with ``plot`` set to the PNG's path or ``None``."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / REPORT_NAME, json.dumps(report, indent=2, allow_nan=False) + "\n")
    report["plot"] = _plot(report, out / PLOT_NAME, log) if opts.plot else None
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.machine()}, {describe(torch.get_num_threads())})"


def axis_limits(values: Sequence[float], pad: float = 0.3, floor: float | None = None) -> tuple[float, float]:
    """Axis limits around ``values``: their range widened by ``pad`` of it on each side (by 1% of
    the value when all are equal), the lower limit no less than ``floor``. Perplexities of 4.39
    and 4.67 stay apart instead of sitting on bars that start at 0."""
    low, high = min(values), max(values)
    span = high - low or abs(high) * 0.01 or 1.0
    low, high = low - pad * span, high + pad * span
    return (low if floor is None else max(floor, low)), high


def demo_figure(report: dict[str, Any]) -> Any:
    """The report's figure (matplotlib, imported by the caller): held-out perplexity per case
    against dense, and the scan speedup with its quartile range (grey: not significant)."""
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = [f"{r['method']}\n{r['pattern']}" for r in rows]
    x = list(range(len(rows)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))

    ppl = [r["ppl"] for r in rows]
    ax1.plot(x, ppl, "o", color="tab:blue", markersize=8)
    for xi, value in zip(x, ppl):
        ax1.annotate(f"{value:.3f}", (xi, value), textcoords="offset points", xytext=(0, 8), ha="center")
    ax1.axhline(report["dense_ppl"], color="black", linestyle="--", label=f"dense {report['dense_ppl']:.3f}")
    ax1.set_ylim(*axis_limits([*ppl, report["dense_ppl"]]))
    ax1.set_ylabel("held-out perplexity per byte (axis not from 0)")
    ax1.legend(loc="best")

    timed = [(xi, r) for xi, r in zip(x, rows) if r.get("speedup")]
    for xi, r in timed:
        low, high = r["speedup_range"]
        color = "tab:green" if r["speedup_significant"] else "tab:gray"
        ax2.errorbar(
            [xi],
            [r["speedup"]],
            yerr=[[r["speedup"] - low], [high - r["speedup"]]],
            fmt="o",
            color=color,
            capsize=4,
        )
        text = f"{r['speedup']:.2f}x" if r["speedup_significant"] else f"{r['speedup']:.2f}x\nn.s."
        ax2.annotate(text, (xi, high), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax2.axhline(1.0, color="black", linestyle="--")
    ranges = [v for _, r in timed for v in r["speedup_range"]]
    ax2.set_ylim(*axis_limits([1.0, *ranges], floor=0.0))
    timed = "compact decode" if report.get("timed") == "decode" else "scan"
    ax2.set_ylabel(f"{timed} speedup vs dense (median, Q1-Q3 range)")
    for ax in (ax1, ax2):
        ax.set_xticks(x, labels)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"sparsessm demo ({report['model']['name']}), 50% SSM sparsity, {report['device']}")
    fig.tight_layout()
    return fig


def _plot(report: dict[str, Any], path: Path, log: Callable[[str], None]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipping the PNG plot (pip install matplotlib)")
        return None
    from .._io import atomic_path

    fig = demo_figure(report)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return str(path)


def format_demo_table(report: dict[str, Any]) -> str:
    """The demo's one table (plain text). Scan times are medians with their quartiles in brackets;
    a speedup whose quartile ranges overlap reads "not significant"."""
    what = report.get("timed", "scan")
    header = [
        "method",
        "pattern",
        "sparsity",
        "ppl",
        "backend",
        "dense ms (Q1-Q3)",
        "sparse ms (Q1-Q3)",
        "speedup",
        "max err",
    ]
    rows = [["dense", "-", "0.00", f"{report['dense_ppl']:.3f}", "-", "-", "-", "-", "-"]]
    for r in report["results"]:
        rows.append(
            [
                r["method"],
                r["pattern"],
                f"{r['sparsity']:.2f}",
                f"{r['ppl']:.3f}",
                r["backend"],
                Spread(**r[f"dense_{what}_spread_ms"]).format(3 if what == "decode" else 2),
                Spread(**r[f"{what}_spread_ms"]).format(3 if what == "decode" else 2),
                _speedup_text(r),
                f"{r['max_abs_err_vs_reference']:.1e}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
    m = report["model"]
    if what == "decode":
        d = report["decode"]
        timing = (
            f"decode ms per token (batch 1, dense state (1, {d['nheads']}, {d['headdim']}, {d['d_state']}) "
            f"vs compact (1, {d['nheads']}, {d['headdim']}, k)), {report['settings']['repeats']} timed "
            f"calls of {d['tokens']} tokens each"
        )
    else:
        timing = (
            f"scan (1, {report['scan_shape']['d_inner']}, {report['scan_shape']['d_state']}, "
            f"{report['scan_shape']['seqlen']}), {report['settings']['repeats']} timed calls each"
        )
    title = (
        f"model {m['name']} ({m['params']:,} params, {m['n_layer']} layers), device {report['device']}, "
        f"held-out perplexity per byte; {timing}"
    )
    return title + "\n" + "\n".join(lines)


def _speedup_text(row: dict[str, Any]) -> str:
    if row["speedup"] is None:
        return "-"
    return Speedup(row["speedup"], *row["speedup_range"], row["speedup_significant"]).format()
