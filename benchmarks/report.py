"""Markdown tables and PNG plots from the benchmark result files.

Run from the repository root::

    python benchmarks/report.py                       # every results/scan_*, e2e_*, quality*.json
    python benchmarks/report.py --inputs benchmarks/results/quality.json --no-plots
    python benchmarks/report.py --markdown report.md --plots /tmp/plots

Reads the JSON written by ``bench_scan.py`` (``"benchmark": "scan"``), ``bench_e2e.py`` (``"e2e"``)
and ``quality/run.py`` (``"quality"``) -- CPU or GPU runs, the schema is the same -- and emits:

* **scan**: one table of every timed row (kind, backend, shape, mask, pruned states, median ms,
  speedup vs dense and vs transformers' fallback, error vs the reference); plots of the speedup vs
  dense per mask (ordered by sparsity) for scans and decode steps, and of time vs sequence length
  when the file has more than one length for the same backend and shape;
* **e2e**: a table of the prefill / decode / projection rows (tokens/s, speedup); a plot of the
  speedup vs dense per variant;
* **quality**: held-out (and WikiText) perplexity per A_log method x pattern x sparsity for SSM
  pruning, a whole-model table, and a plot of perplexity vs sparsity per method and pattern.

Every table heading and plot title names the device and the date of its run. The Markdown goes to
stdout (and to ``--markdown FILE``, written atomically); the PNGs to ``--plots`` (default
``benchmarks/results/plots/``). matplotlib is optional: without it the report has tables only and
says so once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

DEFAULT_PLOTS = common.RESULTS_DIR / "plots"
PATTERNS = ("scan_*.json", "e2e_*.json", "quality*.json")
KINDS = ("scan", "e2e", "quality")


class ReportError(ValueError):
    """A result file that cannot be read or does not have the expected schema."""


# ------------------------------------------------------------------------------------ loading
def load_result(path: Path) -> dict[str, Any]:
    """Read one result file and return it with ``"_kind"`` (scan / e2e / quality) and ``"_path"``."""
    if not path.is_file():
        raise ReportError(f"--inputs: {path} does not exist or is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"--inputs: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ReportError(f"--inputs: {path} has no 'results' list; not a benchmark result file")
    kind = data.get("benchmark")
    if kind not in KINDS:  # older scan files have no "benchmark" field: go by the file name
        kind = next((k for k in KINDS if path.name.startswith(k)), None)
    if kind is None:
        raise ReportError(
            f"--inputs: {path}: unknown benchmark {data.get('benchmark')!r} (expected one of {KINDS})"
        )
    data["_kind"] = kind
    data["_path"] = path
    return data


def default_inputs(results_dir: Path = common.RESULTS_DIR) -> list[Path]:
    """The result files under ``results_dir``, scan first, then e2e, then quality."""
    found: list[Path] = []
    for pattern in PATTERNS:
        found.extend(sorted(results_dir.glob(pattern)))
    return found


def device_label(data: dict[str, Any]) -> str:
    """``"Intel(R) Xeon(R) Processor (cpu, 2 threads)"`` / ``"NVIDIA H100 80GB HBM3 (cuda)"``."""
    dev = data.get("device") or {}
    if isinstance(dev, str):
        return dev
    name = dev.get("name") or dev.get("cpu") or "unknown device"
    kind = dev.get("type", "?")
    if kind == "cpu" and dev.get("torch_threads"):
        threads = dev["torch_threads"]
        return f"{name} (cpu, {threads} thread{'s' if threads != 1 else ''})"
    return f"{name} ({kind})"


def run_label(data: dict[str, Any]) -> str:
    """Device and date of a run, for headings and plot titles."""
    return f"{device_label(data)}, {data.get('date', 'undated')}"


# ------------------------------------------------------------------------------------ formatting
def fnum(value: Any, digits: int = 3, suffix: str = "") -> str:
    """A number for a table (``-`` for missing)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return common.fmt_float(float(value), digits, suffix)


def fx(value: Any) -> str:
    """A speedup for a table: ``1.34x`` (``-`` for missing)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value:.2f}x"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool] = ()) -> str:
    """A GitHub Markdown table; ``right[i]`` right-aligns column ``i``."""
    align = ["---:" if (i < len(right) and right[i]) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def shape_text(shape: dict[str, Any]) -> str:
    """``b1 d1536 n16 l2048`` from a ``shape`` dict (any subset of b, d, n, l)."""
    return " ".join(f"{k}{shape[k]}" for k in ("b", "d", "n", "l") if k in shape)


def _sparsity(row: dict[str, Any]) -> float:
    value = row.get("sparsity")
    return float(value) if isinstance(value, (int, float)) else 0.0


# ------------------------------------------------------------------------------------ plots
class Plotter:
    """Writes PNGs with matplotlib when it imports; otherwise a no-op that says so once."""

    def __init__(self, out_dir: Path | None, log: Callable[[str], None] = common.log) -> None:
        self.out_dir = out_dir
        self.log = log
        self.written: list[Path] = []
        self.plt: Any = None
        self.reason: str | None = None
        if out_dir is None:
            self.reason = "plots disabled (--no-plots)"
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.reason = "matplotlib is not installed: tables only, no plots (pip install matplotlib)"
            self.log(self.reason)
            return
        self.plt = plt

    @property
    def enabled(self) -> bool:
        return self.plt is not None

    def save(self, fig: Any, name: str) -> Path:
        from sparsessm_kernels._io import atomic_path

        assert self.out_dir is not None
        path = self.out_dir / name
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        self.plt.close(fig)
        self.written.append(path)
        return path


def _stem(data: dict[str, Any]) -> str:
    return common.slugify(Path(data["_path"]).stem)


def _bar_groups(
    ax: Any, groups: dict[str, list[tuple[str, float]]], ylabel: str, baseline: float | None = 1.0
) -> None:
    """Grouped bars: ``groups`` maps a series label to ``[(x label, value)]``."""
    xlabels: list[str] = []
    for series in groups.values():
        for x, _ in series:
            if x not in xlabels:
                xlabels.append(x)
    width = 0.8 / max(len(groups), 1)
    for i, (name, series) in enumerate(groups.items()):
        values = dict(series)
        xs = [j + i * width for j, x in enumerate(xlabels) if x in values]
        ax.bar(xs, [values[x] for x in xlabels if x in values], width, label=name)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(xlabels))])
    ax.set_xticklabels(xlabels, fontsize=8, rotation=20)
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=0.8)
    ax.set_ylabel(ylabel)
    if groups:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


# ------------------------------------------------------------------------------------ scan
def scan_section(data: dict[str, Any], plotter: Plotter) -> str:
    """Markdown (and plots) for a ``bench_scan.py`` result."""
    rows = data["results"]
    out = [f"### Selective scan: {run_label(data)}", ""]
    relative = any("rel_err_vs_reference" in r for r in rows)
    mamba_ms = {  # the dense mamba_ssm row (its column-mask rows ran at d_state = k)
        (r.get("kind"), shape_text(r.get("shape", {}))): r.get("median_ms")
        for r in rows
        if r.get("backend") == "mamba_ssm" and r.get("mask", "dense") == "dense"
    }
    table = []
    for r in rows:
        base = mamba_ms.get((r.get("kind"), shape_text(r.get("shape", {}))))
        ms = r.get("median_ms")
        vs_mamba = base / ms if base and ms else None
        err = r.get("rel_err_vs_reference", r.get("max_abs_err_vs_reference"))
        table.append(
            [
                r.get("kind", "?"),
                r.get("backend", "?"),
                shape_text(r.get("shape", {})),
                r.get("mask", "?"),
                r.get("pruned_states") or "-",
                r.get("state") or "-",
                fnum(r.get("median_ms")),
                fx(r.get("speedup_vs_dense")),
                fx(r.get("speedup_vs_transformers")),
                fx(vs_mamba),
                fnum(err, 2),
            ]
        )
    out.append(
        md_table(
            [
                "kind",
                "backend",
                "shape",
                "mask",
                "pruned states",
                "state",
                "median ms",
                "vs dense",
                "vs transformers",
                "vs mamba_ssm",
                "rel err" if relative else "max abs err",
            ],
            table,
            [False] * 6 + [True] * 5,
        )
    )
    if plotter.enabled:
        paths = [_scan_speedup_plot(data, plotter), _scan_seqlen_plot(data, plotter)]
        out += _plot_links([p for p in paths if p is not None])
    return "\n".join(out)


def _speedup_figure(
    plotter: Plotter, panels: list[tuple[str, list[tuple[str, str, float]]]], title: str, name: str
) -> Path | None:
    """One bar panel per entry, stacked vertically: ``(panel title, [(x label, series, speedup)])``.

    x = shapes (batch, length, ...), one bar per mask / variant; dense is the dashed line at 1.
    """
    panels = [(t, pts) for t, pts in panels if pts]
    if not panels:
        return None
    plt = plotter.plt
    widest = max(len({x for x, _, _ in pts}) * max(len({m for _, m, _ in pts}), 1) for _, pts in panels)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(min(max(6.0, 0.45 * widest + 2.5), 24.0), 3.4 * len(panels)), squeeze=False
    )
    for ax, (panel_title, pts) in zip(axes[:, 0], panels):
        groups: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for x, series, value in pts:
            groups[series].append((x, value))
        _bar_groups(ax, groups, "speedup vs dense (x)")
        ax.set_title(panel_title, fontsize=10)
    fig.suptitle(title, fontsize=10)
    return plotter.save(fig, name)


def _mask_label(r: dict[str, Any]) -> str:
    return str(r.get("mask", "?")) + (" (remove)" if r.get("pruned_states") == "remove" else "")


def _scan_speedup_plot(data: dict[str, Any], plotter: Plotter) -> Path | None:
    ours = [
        r
        for r in data["results"]
        if r.get("speedup_vs_dense") is not None
        and r.get("backend") not in ("transformers-fallback", "mamba_ssm")
        and r.get("mask") != "dense"
    ]
    panels = []
    for kind in ("scan", "decode"):
        for backend in dict.fromkeys(r.get("backend", "?") for r in ours if r.get("kind") == kind):
            rows = sorted(
                (r for r in ours if r.get("kind") == kind and r.get("backend") == backend), key=_sparsity
            )
            pts = []
            for r in rows:
                shape = dict(r.get("shape", {}))
                if kind == "decode":
                    shape.pop("l", None)
                x = shape_text(shape) + (f" {r['dtype']}" if r.get("dtype") else "")
                pts.append((x, _mask_label(r), float(r["speedup_vs_dense"])))
            panels.append((f"{kind}, {backend}: speedup vs dense per mask", pts))
    return _speedup_figure(
        plotter, panels, f"scan benchmark, {run_label(data)}", f"{_stem(data)}_speedup.png"
    )


def _scan_seqlen_plot(data: dict[str, Any], plotter: Plotter) -> Path | None:
    """Scan time vs sequence length: one panel per (b, d, n, dtype), a line per backend and mask."""
    panels: dict[tuple[int, int, int, str], dict[str, list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in data["results"]:
        shape = r.get("shape", {})
        if r.get("kind") != "scan" or r.get("median_ms") is None or "l" not in shape:
            continue
        panel = (shape.get("b", 0), shape.get("d", 0), shape.get("n", 0), str(r.get("dtype", "")))
        line = f"{r.get('backend', '?')} {_mask_label(r)}"
        panels[panel][line].append((int(shape["l"]), float(r["median_ms"])))
    panels = {
        key: {line: sorted(pts) for line, pts in lines.items() if len({x for x, _ in pts}) > 1}
        for key, lines in panels.items()
    }
    panels = {key: lines for key, lines in panels.items() if lines}
    if not panels:
        return None
    plt = plotter.plt
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    names = sorted({line for lines in panels.values() for line in lines})
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for ax, ((b, d, n, dtype), lines) in zip(
        axes.flat, sorted(panels.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ):
        for line, points in sorted(lines.items()):
            style = "--" if line.startswith("mamba_ssm") else "-"
            ax.plot(
                [x for x, _ in points], [y for _, y in points], style, marker="o", ms=3, color=colors[line]
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"b{b} d{d} n{n} {dtype}".strip(), fontsize=9)
        ax.set_xlabel("sequence length l", fontsize=8)
        ax.set_ylabel("median ms", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [
        plt.Line2D(
            [], [], color=colors[name], marker="o", ms=3, ls="--" if name.startswith("mamba_ssm") else "-"
        )
        for name in names
    ]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=7)
    fig.suptitle(f"scan time vs sequence length, {run_label(data)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 + 0.03 * ((len(names) + 3) // 4), 1, 0.95))
    return plotter.save(fig, f"{_stem(data)}_seqlen.png")


# ------------------------------------------------------------------------------------ e2e
def _e2e_variant(r: dict[str, Any]) -> str:
    """The variant with its decoder when not eager (``dense [cg]``; baselines: ``dense [generate]``)."""
    decoder = r.get("decoder")
    return str(r.get("mask", "?")) + (f" [{decoder}]" if decoder and decoder != "eager" else "")


def e2e_section(data: dict[str, Any], plotter: Plotter) -> str:
    """Markdown (and a plot) for a ``bench_e2e.py`` result."""
    out = [f"### End to end: {run_label(data)}", ""]
    notes = (data.get("config") or {}).get("notes") or []
    out += [f"Note: {n}" for n in notes] + ([""] if notes else [])
    table = []
    for r in data["results"]:
        shape = r.get("shape", {})
        table.append(
            [
                r.get("kind", "?"),
                r.get("model", "-"),
                _e2e_variant(r),
                r.get("backend", "?"),
                shape.get("b", "-"),
                shape.get("l", "-"),
                r.get("projections", "-"),
                r.get("state") or "-",
                fnum(r.get("median_ms")),
                fnum(r.get("tokens_per_s"), 4),
                fx(r.get("speedup_vs_dense")),
            ]
        )
    out.append(
        md_table(
            [
                "kind",
                "model",
                "variant",
                "backend",
                "batch",
                "length",
                "projections",
                "state",
                "median ms",
                "tokens/s",
                "vs dense",
            ],
            table,
            [False] * 4 + [True, True] + [False, False] + [True] * 3,
        )
    )
    if plotter.enabled:
        path = _e2e_plot(data, plotter)
        out += _plot_links([path] if path else [])
    return "\n".join(out)


def _e2e_plot(data: dict[str, Any], plotter: Plotter) -> Path | None:
    rows = [
        r
        for r in data["results"]
        if r.get("speedup_vs_dense") is not None and r.get("mask") != "dense" and r.get("backend") != "dense"
    ]
    panels = []
    for kind in ("prefill", "decode", "proj"):
        pts = []
        for r in (r for r in rows if r.get("kind") == kind):
            shape = r.get("shape", {})
            x = f"{r.get('model', '')} b{shape.get('b', '?')}" + (
                f" l{shape['l']}" if kind != "decode" else ""
            )
            pts.append((x, _e2e_variant(r), float(r["speedup_vs_dense"])))
        panels.append((f"{kind}: speedup vs dense per variant", pts))
    return _speedup_figure(
        plotter, panels, f"end-to-end benchmark, {run_label(data)}", f"{_stem(data)}_speedup.png"
    )


# ------------------------------------------------------------------------------------ quality
def _ppl(value: Any, best: str | None = None) -> str:
    """A perplexity with 3 decimals, bold when it equals ``best`` (the column's best, as shown)."""
    if value is None or not isinstance(value, (int, float)):
        return "-"
    text = f"{value:.3f}"
    return f"**{text}**" if text == best else text


def _mamba2(data: dict[str, Any]) -> bool:
    """A ``quality/run.py --arch mamba2`` result (rows per target: states, A_log, projections, heads)."""
    return data.get("arch") == "mamba2"


MAMBA2_TARGETS = {
    "states": "states (`B` / `C` columns per group)",
    "ssm": "`A_log` (per head)",
    "ffn": "projections",
    "heads": "heads",
    "headdim": "head channels",
}
"""Row ``scope`` of a Mamba-2 quality result -> what it prunes, in table order."""


def _quality_texts(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(row key, text name)`` of the evaluated texts (WikiText only when measured)."""
    dense, rows = data.get("dense") or {}, data["results"]
    texts = [("ppl_heldout", "held-out stdlib")]
    if dense.get("ppl_wikitext") is not None or any(r.get("ppl_wikitext") is not None for r in rows):
        texts.append(("ppl_wikitext", "WikiText-2 test"))
    return texts


def mamba2_quality_table(data: dict[str, Any]) -> str:
    """One table of a Mamba-2 result: a row per target, method and pattern family, a column per text
    and sparsity; the best of each target, pattern family and column in bold."""
    dense, rows = data.get("dense") or {}, data["results"]
    texts = _quality_texts(data)
    sparsities = sorted({float(r["sparsity"]) for r in rows})
    order = list(MAMBA2_TARGETS)
    keys = sorted(
        dict.fromkeys((r["scope"], r["method"], r["structure"]) for r in rows),
        key=lambda k: order.index(k[0]) if k[0] in order else len(order),
    )  # stable: methods keep their run order within a target
    cell = {(r["scope"], r["method"], r["structure"], float(r["sparsity"])): r for r in rows}
    best: dict[tuple[str, str, float, str], str] = {}
    for key, _ in texts:
        for scope, _, structure in keys:
            for s in sparsities:
                values = [
                    r[key]
                    for (sc, _, st, sp), r in cell.items()
                    if (sc, st, sp) == (scope, structure, s) and r.get(key) is not None
                ]
                if values:
                    best[(scope, structure, s, key)] = f"{min(values):.3f}"
    short = {"ppl_heldout": "held-out", "ppl_wikitext": "WikiText"}
    headers = ["target", "method", "pattern"] + [f"{short[k]} {s:g}" for k, _ in texts for s in sparsities]
    table = [["dense", "-", "-"] + [_ppl(dense.get(k)) for k, _ in texts for _ in sparsities]]
    for scope, method, structure in keys:
        patterns = dict.fromkeys(
            cell[(scope, method, structure, s)]["pattern"]
            for s in sparsities
            if (scope, method, structure, s) in cell
        )
        pattern = "removed" if structure == "structured" else " / ".join(patterns)
        table.append(
            [scope, method, pattern]
            + [
                _ppl(
                    (cell.get((scope, method, structure, s)) or {}).get(k), best.get((scope, structure, s, k))
                )
                for k, _ in texts
                for s in sparsities
            ]
        )
    legend = ", ".join(f"`{k}` = {v}" for k, v in MAMBA2_TARGETS.items())
    return "\n".join(
        [
            "Mamba-2 pruning, perplexity per byte by sparsity (lower is better; best per target, pattern "
            f"family and column in bold; {legend}):",
            "",
            md_table(headers, table, [False] * 3 + [True] * (len(headers) - 3)),
        ]
    )


def quality_tables(data: dict[str, Any]) -> str:
    """The quality tables alone (SSM grid per text, whole-model table), without plots."""
    if _mamba2(data):
        return mamba2_quality_table(data)
    dense = data.get("dense") or {}
    rows = data["results"]
    texts = _quality_texts(data)
    out: list[str] = []
    ssm = [r for r in rows if r.get("scope") == "ssm"]
    if ssm:
        columns = sorted(
            {(r["structure"], r["pattern"], float(r["sparsity"])) for r in ssm},
            key=lambda c: (
                ("unstructured", "N:M", "column").index(c[0])
                if c[0] in ("unstructured", "N:M", "column")
                else 9,
                c[2],
            ),
        )
        labels = list(dict.fromkeys(r["label"] for r in ssm))
        for key, text in texts:
            cell = {(r["label"], r["pattern"], float(r["sparsity"])): r.get(key) for r in ssm}
            best: dict[tuple[str, float], str | None] = {}
            for _, pattern, s in columns:
                values = [v for (lab, p, sp), v in cell.items() if p == pattern and sp == s and v is not None]
                best[(pattern, s)] = f"{min(values):.3f}" if values else None
            headers = ["A_log method"]
            headers += [f"{p} {s:g}" for _, p, s in columns]
            table = [["dense"] + [_ppl(dense.get(key))] * len(columns)]
            for lab in labels:
                table.append([lab] + [_ppl(cell.get((lab, p, s)), best[(p, s)]) for _, p, s in columns])
            out += [
                f"SSM (`A_log`) pruning, perplexity per byte on the {text} text (lower is better, best per "
                "column in bold):",
                "",
                md_table(headers, table, [False] + [True] * len(columns)),
                "",
            ]
    whole = [r for r in rows if r.get("scope") == "whole"]
    if whole:
        headers = ["A_log method", "projections", "pattern", "allocation", "passes", "achieved sparsity"]
        headers += [f"{text} ppl" for _, text in texts]
        table = [["dense", "-", "-", "-", "-", "0"] + [_ppl(dense.get(k)) for k, _ in texts]]
        for r in whole:
            achieved = (r.get("achieved_sparsity") or {}).get("total")
            table.append(
                [
                    r["label"],
                    r.get("projection_method") or "-",
                    r["pattern"],
                    f"alpha {r['alpha']:g}" if r.get("allocation") else "no",
                    len(r.get("passes") or []) or "-",
                    fnum(achieved, 3),
                ]
                + [_ppl(r.get(k)) for k, _ in texts]
            )
        out += [
            f"Whole-model pruning (`A_log` + projections) at {whole[0]['sparsity']:g}:",
            "",
            md_table(headers, table, [False] * 4 + [True] * (2 + len(texts))),
            "",
        ]
    return "\n".join(out).rstrip()


def quality_section(data: dict[str, Any], plotter: Plotter) -> str:
    """Markdown (and a plot) for a ``quality/run.py`` result."""
    cfg = data.get("config") or {}
    model = data.get("model") or {}
    info = (data.get("data") or {}).get("heldout") or {}
    wiki = (data.get("data") or {}).get("wikitext") or {}
    out = [f"### Pruning quality: {run_label(data)}", ""]
    calib = (data.get("data") or {}).get("calibration") or {}
    if _mamba2(data) and not calib.get("used_by"):
        calibration = "no calibration (weight-only methods)"
    else:
        calibration = f"calibration {cfg.get('nsamples', '?')} x {cfg.get('seqlen', '?')} bytes"
    out.append(
        f"Model `{model.get('name', '?')}` ({fnum(model.get('params'), 6)} parameters, "
        f"{model.get('n_layer', '?')} layers, n = {model.get('d_state', '?')}); {calibration}; evaluation "
        f"{info.get('windows', '?')} x {info.get('seqlen', '?')} bytes per text"
        + (f"; WikiText: {wiki['skipped']}" if wiki.get("skipped") else "")
        + "."
    )
    out += ["", quality_tables(data)]
    if plotter.enabled:
        path = _quality_plot(data, plotter)
        out += _plot_links([path] if path else [])
    return "\n".join(out)


def _quality_plot(data: dict[str, Any], plotter: Plotter) -> Path | None:
    mamba2 = _mamba2(data)
    ssm = [r for r in data["results"] if mamba2 or r.get("scope") == "ssm"]
    if not ssm:
        return None
    dense = data.get("dense") or {}
    keys = [("ppl_heldout", "held-out stdlib")]
    if any(r.get("ppl_wikitext") is not None for r in ssm):
        keys.append(("ppl_wikitext", "WikiText-2 test"))
    # panels: A_log structures (Mamba-1), targets (Mamba-2; lines per method and pattern family)
    field = "scope" if mamba2 else "structure"
    names = list(MAMBA2_TARGETS) if mamba2 else ["unstructured", "N:M", "column"]
    structures = [s for s in names if any(r[field] == s for r in ssm)]
    plt = plotter.plt
    fig, axes = plt.subplots(
        len(keys), len(structures), figsize=(4.5 * len(structures), 3.6 * len(keys)), squeeze=False
    )
    for i, (key, text) in enumerate(keys):
        for j, structure in enumerate(structures):
            ax = axes[i][j]
            panel = [r for r in ssm if r[field] == structure]
            for lab in dict.fromkeys(_plot_label(r, mamba2) for r in panel):
                pts = sorted(
                    (float(r["sparsity"]), r[key])
                    for r in panel
                    if _plot_label(r, mamba2) == lab and r.get(key) is not None
                )
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=lab)
            if dense.get(key) is not None:
                ax.axhline(dense[key], color="black", linestyle="--", linewidth=0.8, label="dense")
            ax.set_xlabel("sparsity" + (" (N:4: 3:4, 2:4, 1:4)" if structure == "N:M" else ""))
            ax.set_ylabel(f"{text} ppl")
            ax.set_title(
                MAMBA2_TARGETS[structure].replace("`", "") if mamba2 else f"A_log {structure}", fontsize=10
            )
            values = [r[key] for r in panel if r.get(key) is not None]
            if mamba2 and values and max(values) > 3 * min(values):
                ax.set_yscale("log")  # a broken model next to near-dense ones
            if i == 0 and (j == 0 or mamba2):
                ax.legend(fontsize=7)
    fig.suptitle(
        f"{'Mamba-2' if mamba2 else 'SSM'} pruning quality, {data.get('model', {}).get('name', '')}, "
        f"{run_label(data)}",
        fontsize=10,
    )
    return plotter.save(fig, f"{_stem(data)}_ppl.png")


def _plot_label(row: dict[str, Any], mamba2: bool) -> str:
    """A plot line's name: the method (Mamba-2: with its pattern family when the target has several)."""
    if mamba2 and row["structure"] in ("N:M", "column", "unstructured") and row["scope"] in ("states", "ffn"):
        family = (
            ("N:4" if row["scope"] == "states" else row["pattern"]) if row["structure"] == "N:M" else None
        )
        return f"{row['method']} {family or row['structure']}"
    return row["label"]


def _plot_links(paths: Sequence[Path]) -> list[str]:
    return [""] + [f"![{p.stem}]({common.display_path(p)})" for p in paths] if paths else []


# ------------------------------------------------------------------------------------ main
SECTIONS: dict[str, Callable[[dict[str, Any], Plotter], str]] = {
    "scan": scan_section,
    "e2e": e2e_section,
    "quality": quality_section,
}


def build_report(
    paths: Sequence[Path], plots_dir: Path | None, log: Callable[[str], None] = common.log
) -> tuple[str, list[Path]]:
    """Markdown for ``paths`` (in order) and the PNGs written (none without matplotlib)."""
    datasets = [load_result(Path(p)) for p in paths]
    plotter = Plotter(plots_dir, log)
    parts = ["## Benchmark report", ""]
    if plotter.reason and plots_dir is not None:
        parts += [f"_{plotter.reason}._", ""]
    for data in datasets:
        parts += [SECTIONS[data["_kind"]](data, plotter), ""]
    return "\n".join(parts).rstrip() + "\n", plotter.written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Markdown tables and PNG plots from benchmark result JSON files "
        "(bench_scan.py, bench_e2e.py, quality/run.py)."
    )
    p.add_argument(
        "--inputs",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="result files (default: benchmarks/results/scan_*.json, e2e_*.json, quality*.json)",
    )
    p.add_argument(
        "--plots", type=Path, default=DEFAULT_PLOTS, metavar="DIR", help="PNG directory (default %(default)s)"
    )
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="also write the Markdown here")
    p.add_argument(
        "--quality-table",
        action="store_true",
        help="print only the quality tables of the quality input (what README.md's Quality section shows)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = args.inputs if args.inputs is not None else default_inputs()
    if not paths:
        parser.error(
            f"--inputs: no result files given and none found under {common.display_path(common.RESULTS_DIR)}"
        )
    if args.plots is not None and not args.no_plots:
        from sparsessm_kernels._io import OutputPathError, check_writable_dir

        try:
            check_writable_dir(args.plots, "--plots")
        except OutputPathError as exc:
            parser.error(str(exc))
    if args.markdown is not None:
        common.check_out_path(parser, args.markdown, "--markdown")
    try:
        if args.quality_table:
            quality = [d for d in (load_result(Path(p)) for p in paths) if d["_kind"] == "quality"]
            if not quality:
                parser.error("--quality-table: none of --inputs is a quality result")
            text = "\n\n".join(quality_tables(d) for d in quality) + "\n"
            written: list[Path] = []
        else:
            text, written = build_report(paths, None if args.no_plots else args.plots)
    except ReportError as exc:
        parser.error(str(exc))
    if args.markdown is not None:
        from sparsessm_kernels._io import write_text_atomic

        write_text_atomic(args.markdown, text)
    sys.stdout.write(text)
    for path in written:
        common.log(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
