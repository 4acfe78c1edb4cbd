"""``prune_report.json``: what a pruning run did, and the short table ``sparsessm prune`` prints.

Top-level fields (documented in docs/pruning.md):

* ``format`` (``"sparsessm-prune-report"``), ``version``, ``created`` (UTC ISO time);
* ``model_dir``, ``output_dir``, ``export_stock``;
* ``settings``: the resolved :class:`~sparsessm_kernels.prune.config.PruneConfig` plus the run's
  ``calib``, ``nsamples``, ``seqlen``, ``device``, ``dtype``, ``tokenizer``, ``eval``;
* ``model``: ``n_layer``, ``d_model``, ``d_inner``, ``d_state_before``, ``d_state_after``, ``params``;
* ``modules``: one entry per pruned module (``name``, ``layer``, ``kind``, ``shape`` (after pruning),
  ``params`` (before), ``pruned``, ``target_sparsity``, ``sparsity`` (achieved), ``method``,
  ``pattern``, plus ``kept_states`` / ``d_state`` for column pruning, the score settings for
  SparseSSM);
* ``summary``: ``{"ssm" | "ffn" | "total": {"params", "pruned", "sparsity"}}`` over the pruned modules;
* ``allocation``: per in_proj / out_proj ``{"sensitivity", "sparsity", "pruned"}`` (``alpha > 0``);
* ``timings_s``: seconds per phase (:data:`PHASES`, in run order: ``load``, ``data``,
  ``eval_before``, ``capture``, ``sensitivity``, ``statistics`` = calibration, ``prune``,
  ``forward``, ``eval_after``, ``save``, ``export``, then ``other`` = ``total`` minus the phases),
  ``total``, and ``layers``: per-layer ``statistics`` / ``prune`` / ``forward``;
* ``perplexity``: ``{"before": ..., "after": ...}`` (each ``ppl``, ``mean_nll``, ``tokens``,
  ``windows``, ``seqlen``, ``seconds``) when ``--eval`` is given, else ``null``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any

from .._io import write_text_atomic
from .._version import __version__
from .capture import PruneResult

__all__ = ["PHASES", "REPORT_FORMAT", "REPORT_NAME", "build_report", "format_table", "write_report"]

REPORT_NAME = "prune_report.json"
REPORT_FORMAT = "sparsessm-prune-report"

PHASES = (
    "load",
    "data",
    "eval_before",
    "capture",
    "sensitivity",
    "statistics",
    "prune",
    "forward",
    "eval_after",
    "save",
    "export",
    "other",
)
"""The phases of ``timings_s``, in run order; ``other`` is what the others leave of ``total``
(checks before work, bookkeeping between phases, writing the report)."""


def _summary(result: PruneResult) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[int]] = {"ssm": [0, 0], "ffn": [0, 0], "heads": [0, 0], "total": [0, 0]}
    for rec in result.modules:
        key = (
            "ssm"
            if rec.kind in ("A_log", "ssm_state")
            else "heads"
            if rec.kind in ("heads", "headdim")
            else "ffn"
        )
        for g in (key, "total"):
            groups[g][0] += rec.params
            groups[g][1] += rec.pruned
    return {
        k: {"params": p, "pruned": q, "sparsity": round(q / p, 8) if p else 0.0}
        for k, (p, q) in groups.items()
        if p or k == "total"
    }


def build_report(
    result: PruneResult,
    *,
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None,
    run: dict[str, Any],
    model_info: dict[str, Any],
    timings: dict[str, float],
    perplexity: dict[str, Any] | None = None,
    export_stock: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The report dict (JSON-serialisable)."""
    settings = result.config.to_dict()
    settings.update(run)
    all_timings = {**{k: round(v, 4) for k, v in result.timings.items() if k != "total"}, **timings}
    if "total" in all_timings:
        accounted = sum(float(v) for k, v in all_timings.items() if k in PHASES)
        all_timings["other"] = max(float(all_timings["total"]) - accounted, 0.0)
    order = [*PHASES, "total"]
    ranked = sorted(all_timings, key=lambda k: order.index(k) if k in order else len(order))
    all_timings = {k: round(float(all_timings[k]), 4) for k in ranked}
    all_timings["layers"] = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in lt.items()}
        for lt in result.layer_timings
    ]
    return {
        "format": REPORT_FORMAT,
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": str(model_dir),
        "output_dir": None if output_dir is None else str(output_dir),
        "export_stock": None if export_stock is None else str(export_stock),
        "settings": settings,
        "model": {
            **model_info,
            "d_state_before": result.d_state_before,
            "d_state_after": result.d_state_after,
        },
        "modules": [rec.to_dict() for rec in result.modules],
        "summary": _summary(result),
        "allocation": result.allocation or None,
        "timings_s": all_timings,
        "perplexity": perplexity,
    }


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write the report as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")


def format_table(report: dict[str, Any], max_rows: int = 12) -> str:
    """A short human-readable table: per-kind sparsity, timings and perplexity."""
    lines = []
    s = report["settings"]
    lines.append(
        f"method {s['method']}  targets {s['targets']}  pattern {s['pattern']}  sparsity {s['sparsity']:g}  "
        f"alpha {s['alpha']:g}  calib {s.get('calib')} ({s.get('nsamples')} x {s.get('seqlen')})"
    )
    by_kind: dict[str, list[int]] = {}
    for m in report["modules"]:
        acc = by_kind.setdefault(m["kind"], [0, 0, 0])
        acc[0] += 1
        acc[1] += m["params"]
        acc[2] += m["pruned"]
    lines.append(f"{'module':<10}{'count':>7}{'params':>14}{'pruned':>14}{'sparsity':>10}")
    for kind, (count, params, pruned) in list(by_kind.items())[:max_rows]:
        lines.append(f"{kind:<10}{count:>7}{params:>14,}{pruned:>14,}{pruned / max(params, 1):>10.4f}")
    tot = report["summary"]["total"]
    lines.append(f"{'total':<10}{'':>7}{tot['params']:>14,}{tot['pruned']:>14,}{tot['sparsity']:>10.4f}")
    d_after = report["model"]["d_state_after"]
    if d_after != report["model"]["d_state_before"]:
        lines.append(f"d_state per layer after column pruning: {d_after}")
    t = report["timings_s"]
    phases = [f"{k} {t[k]:.2f}s" for k in PHASES if t.get(k)]
    if "total" in t:
        phases.append(f"total {t['total']:.2f}s")
    lines.append("time: " + ", ".join(phases))
    ppl = report.get("perplexity") or {}
    if ppl:
        parts = [f"{k} {v['ppl']:.3f}" for k, v in ppl.items() if v]
        first = next(iter(v for v in ppl.values() if v))
        lines.append(f"perplexity ({first['tokens']} tokens, seqlen {first['seqlen']}): " + ", ".join(parts))
    return "\n".join(lines)
