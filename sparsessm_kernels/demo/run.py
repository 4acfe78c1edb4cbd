"""The work behind ``sparsessm demo`` (see ``docs/demo.md``).

Steps, all on the embedded checkpoint :data:`MODEL_DIR`:

1. held-out text: the held-out standard-library files named in ``training_config.json`` (read
   from this machine's ``sysconfig.get_paths()["stdlib"]``), as UTF-8 bytes;
2. calibration: ``nsamples`` random windows of ``seqlen`` bytes of the *training* files;
3. for each case of :data:`DEMO_CASES`: a fresh copy of the model, ``prune_model`` on its SSMs
   (``A_log``, 50%), held-out perplexity;
4. the sparse scan of each case on a layer-shaped input (layer 0's ``A`` and mask, ``(1, d_inner,
   scan_seqlen)`` random inputs) with the best available backend: its error against the float64
   reference ``selective_scan_ref`` on the first ``check_seqlen`` steps, and its time against the
   dense scan on the same backend.
"""

from __future__ import annotations

import json
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import check_writable_dir, write_text_atomic

MODEL_DIR = Path(__file__).resolve().parent / "tiny_mamba"
"""The embedded checkpoint (HF layout)."""

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
    eval_windows: int = 128
    scan_seqlen: int = 2048
    check_seqlen: int = 256
    repeats: int = 10
    seed: int = 0
    plot: bool = True
    model_dir: str | None = None

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
            "repeats": 2,
        }
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        for name in ("seqlen", "nsamples", "eval_seqlen", "eval_windows", "scan_seqlen", "check_seqlen"):
            value = getattr(self, name)
            low = 2 if name in ("seqlen", "eval_seqlen") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats: expected an integer >= 1, got {self.repeats!r}")
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
def _time_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


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
    """Backend, reference error and dense / sparse timings of one layer's scan."""
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
    with torch.no_grad():
        dense_ms = _time_ms(lambda: run(None, x), device, opts.repeats)
        scan_ms = _time_ms(lambda: run(layout, x), device, opts.repeats)
    return {
        "backend": backend,
        "dense_scan_ms": dense_ms,
        "scan_ms": scan_ms,
        "speedup": dense_ms / scan_ms if scan_ms > 0 else None,
        "max_abs_err_vs_reference": err,
    }


# ---------------------------------------------------------------------- run
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(opts: DemoOptions, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run the demo; writes ``demo_report.json`` (and the PNG when matplotlib is installed)."""
    from ..models import MambaLM
    from ..ops import StateLayout
    from ..prune import PruneConfig, calibration_windows, evaluate_perplexity, prune_model
    from ..prune.run import resolve_device

    opts.validate()
    device = resolve_device(opts.device)
    model_dir = Path(opts.model_dir) if opts.model_dir else MODEL_DIR
    t_start = time.perf_counter()
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
        model = MambaLM.from_pretrained(model_dir)
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

    from ..prune.run import _model_info

    report = {
        "model": {"dir": str(model_dir), "name": model_dir.name, **_model_info(dense)},
        "device": _device_name(device),
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
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / REPORT_NAME, json.dumps(report, indent=2, allow_nan=False) + "\n")
    report["plot"] = _plot(report, out / PLOT_NAME, log) if opts.plot else None
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _plot(report: dict[str, Any], path: Path, log: Callable[[str], None]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipping the PNG plot (pip install matplotlib)")
        return None
    from .._io import atomic_path

    rows = report["results"]
    labels = [f"{r['method']}\n{r['pattern']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(labels, [r["ppl"] for r in rows], color="tab:blue")
    ax1.axhline(report["dense_ppl"], color="black", linestyle="--", label=f"dense {report['dense_ppl']:.2f}")
    ax1.set_ylabel("held-out perplexity (bytes)")
    ax1.legend()
    ax2.bar(labels, [r["speedup"] or 0.0 for r in rows], color="tab:green")
    ax2.axhline(1.0, color="black", linestyle="--")
    ax2.set_ylabel("scan speedup vs dense")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"sparsessm demo, 50% SSM sparsity, {report['device']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return str(path)


def format_demo_table(report: dict[str, Any]) -> str:
    """The demo's one table (plain text)."""
    header = [
        "method",
        "pattern",
        "sparsity",
        "ppl",
        "backend",
        "dense ms",
        "sparse ms",
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
                f"{r['dense_scan_ms']:.2f}",
                f"{r['scan_ms']:.2f}",
                f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                f"{r['max_abs_err_vs_reference']:.1e}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
    m = report["model"]
    title = (
        f"model {m['name']} ({m['params']:,} params, {m['n_layer']} layers), device {report['device']}, "
        f"held-out perplexity per byte; scan (1, {report['scan_shape']['d_inner']}, "
        f"{report['scan_shape']['d_state']}, {report['scan_shape']['seqlen']})"
    )
    return title + "\n" + "\n".join(lines)
