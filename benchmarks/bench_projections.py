"""2:4 ``in_proj`` / ``out_proj`` of Mamba-1 shapes against the dense ``F.linear``, per token count.

Per (model shape, projection, ``M`` tokens), all on one machine in one run:

* ``dense``: ``F.linear(x, W_masked, bias)`` (what the masked dense fallback runs);
* ``direct``: the ``cusparselt`` path of :class:`sparsessm_kernels.nn.SemiStructuredLinear` forced to
  2:4 (``select="sparse"``): one ``torch._cslt_sparse_mm`` on a buffer compressed once, the
  algorithm searched per M bucket;
* ``subclass``: torch's ``to_sparse_semi_structured`` weight in ``F.linear`` (the previous path);

each timed eagerly (CUDA events around back-to-back calls: host cost per call included) and as
CUDA-graph replays (kernels only: what graph-captured decode pays), plus the bucket choice the
timing-based selection makes from the eager numbers. Every 2:4 output is checked against dense.

Goal (recorded per row, not asserted): 2:4 at ``M >= 4096`` tokens at least 1.1x the dense
``F.linear``. ``--smoke`` runs tiny shapes on the CPU to check the script (no cuSPARSELt there: the
2:4 rows are listed under ``skipped``).

    python benchmarks/bench_projections.py                        # GPU: results/projections_<device>.json
    python benchmarks/bench_projections.py --smoke --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

from sparsessm_kernels.nn import SemiStructuredLinear, prune_2to4_, semi_structured_status

SHAPES = {"130m": (768, 1536), "1.4b": (2048, 4096)}
"""``(d_model, d_inner)``: ``in_proj`` is ``d_model -> 2 d_inner``, ``out_proj`` ``d_inner -> d_model``."""
SMOKE_SHAPES = {"tiny": (32, 64)}
TOKENS = (1, 8, 64, 256, 1024, 4096, 16384)
SMOKE_TOKENS = (1, 8, 33)
GOAL_MIN_TOKENS, GOAL_SPEEDUP = 4096, 1.1


def projections(d_model: int, d_inner: int) -> dict[str, tuple[int, int]]:
    return {"in_proj": (d_model, 2 * d_inner), "out_proj": (d_inner, d_model)}


def _time(fn: Callable[[], Any], device: torch.device, graph: bool, args: argparse.Namespace) -> float:
    if graph:
        stats = common.time_cuda_graph(fn, device, warmup=args.warmup, repeats=args.repeats, inner=args.inner)
    else:
        stats = common.time_fn(fn, device, warmup=args.warmup, repeats=args.repeats, inner=args.inner)
    return stats.median_ms


def bench_one(
    name: str,
    fan_in: int,
    fan_out: int,
    tokens: tuple[int, ...],
    device: torch.device,
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    lin = nn.Linear(fan_in, fan_out, bias=False)
    prune_2to4_(lin)
    lin = lin.to(device=device, dtype=args.dtype)
    rows, skipped = [], []
    candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "dense": lambda x: F.linear(x, lin.weight, lin.bias)
    }
    try:
        direct = SemiStructuredLinear.from_linear(
            lin, name=name, path="cusparselt", buckets=tokens, select="sparse"
        )
        candidates["direct"] = direct
    except ValueError as exc:
        skipped.append({"what": f"{name} direct", "reason": str(exc)})
    if device.type == "cuda":
        try:
            sub = torch.sparse.to_sparse_semi_structured(lin.weight.detach())
            candidates["subclass"] = lambda x: F.linear(x, sub)
        except Exception as exc:
            skipped.append({"what": f"{name} subclass", "reason": f"{type(exc).__name__}: {exc}"})
    for m in tokens:
        x = torch.randn(m, fan_in, generator=gen).to(device=device, dtype=args.dtype)
        want = F.linear(x, lin.weight).float()
        row: dict[str, Any] = {"projection": name, "in": fan_in, "out": fan_out, "tokens": m}
        for kind, fn in candidates.items():
            err = float((fn(x).float() - want).abs().max())
            row[f"{kind}_max_abs_err"] = err
            row[f"{kind}_ms"] = _time(lambda fn=fn, x=x: fn(x), device, False, args)
            if device.type == "cuda" and args.graphs:
                try:
                    row[f"{kind}_graph_ms"] = _time(lambda fn=fn, x=x: fn(x), device, True, args)
                except common.GraphCaptureError as exc:
                    skipped.append({"what": f"{name} {kind} M={m} graph", "reason": str(exc)})
        for kind in ("direct", "subclass"):
            for suffix in ("_ms", "_graph_ms"):
                if f"{kind}{suffix}" in row:
                    row[f"{kind}_speedup{suffix[:-3]}"] = common.ratio(
                        row[f"dense{suffix}"], row[f"{kind}{suffix}"]
                    )
        if "direct_ms" in row:
            row["selected"] = "2:4" if row["direct_ms"] < row["dense_ms"] else "dense"
            if m >= GOAL_MIN_TOKENS:
                row["goal_speedup"] = GOAL_SPEEDUP
                row["goal_met"] = (row["direct_speedup"] or 0.0) >= GOAL_SPEEDUP
        rows.append(row)
        common.log(f"{name} M={m}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k.endswith("_ms")))
    return rows, skipped


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="result JSON (default results/projections_<device>.json)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("bfloat16", "float16", "float32"),
        help="default bfloat16 (float32 for --smoke on the CPU, where half-precision matmuls can be slow)",
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--inner", type=int, default=5, help="calls per timed sample")
    parser.add_argument("--no-graphs", dest="graphs", action="store_false", help="skip CUDA-graph timings")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, few repeats (works on the CPU)")
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    if args.smoke:
        args.warmup, args.repeats, args.inner = 1, 3, 1
    args.out = args.out or str(common.RESULTS_DIR / f"projections_{common.device_kind(device)}.json")
    common.check_out_path(parser, args.out)
    if args.dtype is None:
        args.dtype = "float32" if args.smoke and device.type != "cuda" else "bfloat16"
    args.dtype = getattr(torch, args.dtype)
    shapes = SMOKE_SHAPES if args.smoke else {k: SHAPES[k] for k in args.shapes}
    tokens = tuple(sorted(set(SMOKE_TOKENS if args.smoke else args.tokens)))
    rows, skipped = [], []
    for shape, (d_model, d_inner) in shapes.items():
        for proj, (fan_in, fan_out) in projections(d_model, d_inner).items():
            r, s = bench_one(f"{shape}.{proj}", fan_in, fan_out, tokens, device, args)
            rows.extend(r)
            skipped.extend(s)
    path, reason = semi_structured_status(device, args.dtype)
    result = {
        **common.result_header("projections", device),
        "config": {
            "dtype": str(args.dtype).replace("torch.", ""),
            "shapes": {k: {"d_model": v[0], "d_inner": v[1]} for k, v in shapes.items()},
            "tokens": list(tokens),
            "warmup": args.warmup,
            "repeats": args.repeats,
            "inner": args.inner,
            "smoke": args.smoke,
            "semi_structured": {"path": path, "reason": reason},
            "goal": f"2:4 >= {GOAL_SPEEDUP}x dense F.linear at >= {GOAL_MIN_TOKENS} tokens",
        },
        "run": common.run_provenance(argv, args.out),
        "rows": rows,
        "skipped": skipped,
    }
    common.write_json_atomic(args.out, result)
    columns = [
        ("projection", "projection"),
        ("tokens", "M"),
        ("dense_ms", "dense ms"),
        ("direct_ms", "2:4 ms"),
    ]
    columns += [("direct_graph_ms", "2:4 graph ms"), ("subclass_ms", "subclass ms"), ("selected", "selected")]
    print(common.format_table(rows, columns))
    common.print_skipped(skipped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
