"""The decode step (``selective_state_update``) against the memory roofline: dense and compact 2:4.

Per layer width ``d`` at one batch (default 256, ``n = 16``, bf16 ``x`` / ``dt`` / ``z`` / B / C,
float32 states), the Triton step on CUDA (the torch backend with ``--smoke`` on the CPU):

* ``dense``: a dense ``(b, d, n)`` state, no mask;
* ``compact_2:4``: a 2:4 mask with the compact ``(b, d, n/2)`` state (half the state bytes),
  ``pruned_states="zero_transition"``.

**Timing.** ``R`` independent sets of per-call tensors (state, x, dt, z, B, C, out) are allocated,
``R`` chosen so that the sets total at least ``--rotate-mb`` (default 256 MB, well above the
50-60 MB L2 of an H100 / H200): the step over all ``R`` sets, one after another, is captured once
in a CUDA graph and its replays are timed with CUDA events (``benchmarks/_common.time_cuda_graph``),
so each call reads its state from HBM, not from L2 where a compact state of a small layer would
otherwise stay, and no launch or Python overhead is counted. Per row: ``median_ms`` (and the other
timing fields) per step, ``bytes`` moved per step (state read and written, ``x``, ``dt``, ``z``,
``out``, B, C), ``gbps`` achieved, ``peak_fraction`` of the GPU's HBM peak (known GPUs, or
``--peak-gbps``), and on the compact row ``speedup_vs_dense``. Goals recorded per width (not
asserted): ``peak_fraction >= 0.8`` for the compact step and ``speedup_vs_dense >= 1.7``.

``--sweep`` also times every ``(block_d, num_warps)`` candidate of the Triton step per row
(``sweep`` field, fastest first): the evidence for the configuration table
(``STEP_CONFIG_TABLE`` in ``sparsessm_kernels/ops/state_update/triton_backend.py``).

Every variant is first checked against the float64 reference on one set. ``--smoke`` runs a tiny
problem on the CPU (torch backend, perf_counter timing of the same rotation) to check the script.

    python benchmarks/bench_step.py                    # CUDA: results/step_<device>.json
    python benchmarks/bench_step.py --sweep
    python benchmarks/bench_step.py --smoke --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
from scan_problems import decode_bytes, known_peak_gbps

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout, selective_state_update_ref
from sparsessm_kernels.sparsity import nm_mask

VARIANTS = ("dense", "compact_2:4")
WIDTHS = (1536, 2048, 4096)
SMOKE = {"batch": 2, "widths": (64,), "n": 16, "rotate_mb": 1, "repeats": 3, "warmup": 1}
GOAL_PEAK_FRACTION, GOAL_SPEEDUP = 0.8, 1.7
SWEEP = [(block_d, warps) for block_d in (8, 16, 32, 64, 128) for warps in (2, 4, 8)]


class Problem:
    """``R`` rotating sets of one step's per-call tensors, and the layer's constants."""

    def __init__(self, b: int, d: int, n: int, variant: str, sets: int, device: torch.device) -> None:
        gen = torch.Generator().manual_seed(d)
        bf16 = torch.bfloat16 if device.type == "cuda" else torch.float32

        def rand(*shape: int, dtype: torch.dtype = bf16, scale: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

        self.layout = None
        if variant == "compact_2:4":
            self.layout = StateLayout(nm_mask(torch.rand(d, n, generator=gen), 2, 4).to(device))
        k = self.layout.n_kept if self.layout is not None else n
        self.b, self.d, self.n, self.k = b, d, n, k
        self.A = -torch.rand(d, n, generator=gen).add(0.5).to(device)
        self.D, self.dt_bias = rand(d, dtype=torch.float32), rand(d, dtype=torch.float32, scale=0.1)
        self.sets = [
            {
                "state": rand(b, d, k, dtype=torch.float32),
                "x": rand(b, d),
                "dt": rand(b, d, scale=0.5),
                "B": rand(b, n),
                "C": rand(b, n),
                "z": rand(b, d),
                "out": torch.empty(b, d, dtype=bf16, device=device),
            }
            for _ in range(sets)
        ]
        self.bytes = decode_bytes(b, d, n, k, bf16.itemsize, 4)
        self._next = 0

    def step(self, s: dict[str, torch.Tensor], backend: str) -> torch.Tensor:
        return ssk.selective_state_update(
            s["state"], s["x"], s["dt"], self.A, s["B"], s["C"], self.D, s["z"], self.dt_bias, True,
            state_mask=self.layout, backend=backend, out=s["out"],
        )  # fmt: skip

    def rotating(self, call: Any) -> Any:
        """A function running ``call(set)`` on the next set each time (any ``R`` consecutive calls
        touch every set once)."""

        def run() -> None:
            s = self.sets[self._next]
            self._next = (self._next + 1) % len(self.sets)
            call(s)

        return run

    def check(self, backend: str) -> float:
        """Max abs error of one step against the float64 reference (on copies of set 0)."""
        s = {k: v.clone() for k, v in self.sets[0].items()}
        got = self.step(s, backend).double()
        ref_state = self.sets[0]["state"].double()
        args = [self.sets[0][k].double() for k in ("x", "dt")] + [self.A.double()]
        args += [self.sets[0][k].double() for k in ("B", "C")] + [self.D.double()]
        ref = selective_state_update_ref(
            ref_state, *args, self.sets[0]["z"].double(), self.dt_bias.double(), True, state_mask=self.layout
        )
        return float((got - ref).abs().max())


def sets_for(b: int, d: int, n: int, k: int, rotate_mb: float, itemsize: int) -> int:
    """How many sets make at least ``rotate_mb`` MB (at least 2)."""
    per_set = b * d * k * 4 + 4 * b * d * itemsize + 2 * b * n * itemsize
    return max(2, math.ceil(rotate_mb * 1e6 / per_set))


def time_rotation(problem: Problem, call: Any, device: torch.device, args: argparse.Namespace) -> Any:
    """Per-step timing of ``call`` over the rotation: graph replays on CUDA, perf_counter on CPU."""
    fn = problem.rotating(call)
    R = len(problem.sets)
    if device.type == "cuda":
        return common.time_cuda_graph(fn, device, warmup=args.warmup, repeats=args.repeats, inner=R)
    return common.time_fn(fn, device, warmup=args.warmup, repeats=args.repeats, inner=R)


def sweep(problem: Problem, device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every ``(block_d, num_warps)`` candidate of the Triton step on this problem, fastest first."""
    from sparsessm_kernels.ops.plan import StepInputs
    from sparsessm_kernels.ops.state_update import step_plan
    from sparsessm_kernels.ops.state_update.triton_backend import StepConfig, selective_state_update_triton

    def inputs(s: dict[str, torch.Tensor]) -> StepInputs:
        return StepInputs(
            s["state"], s["x"], s["dt"], problem.A, s["B"], s["C"], problem.D, s["z"], problem.dt_bias
        )

    plan = step_plan(inputs(problem.sets[0]), None, problem.layout, "zero_transition", True, "triton")
    rows = []
    for block_d, warps in SWEEP:
        cfg = StepConfig(block_d, warps)

        def call(s: dict[str, torch.Tensor], cfg: StepConfig = cfg) -> None:
            selective_state_update_triton(plan, inputs(s), out=s["out"], config=cfg)

        stats = time_rotation(problem, call, device, args)
        rows.append({"block_d": block_d, "num_warps": warps, "median_ms": stats.median_ms})
    return sorted(rows, key=lambda r: r["median_ms"])


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    backend = "triton" if device.type == "cuda" else "torch"
    peak = args.peak_gbps if args.peak_gbps is not None else known_peak_gbps(device)
    itemsize = 2 if device.type == "cuda" else 4
    rows = []
    for d, variant in itertools.product(args.widths, args.variants):
        k = args.n // 2 if variant == "compact_2:4" else args.n
        problem = Problem(
            args.batch,
            d,
            args.n,
            variant,
            sets_for(args.batch, d, args.n, k, args.rotate_mb, itemsize),
            device,
        )
        error = problem.check(backend)
        stats = time_rotation(problem, lambda s, p=problem: p.step(s, backend), device, args)
        gbps = problem.bytes / (stats.median_ms * 1e6)
        row = {
            "variant": variant, "batch": args.batch, "d": d, "n": args.n, "k": problem.k,
            "backend": backend, "sets": len(problem.sets),
            "rotated_mb": round(len(problem.sets) * problem.bytes / 1e6, 1),
            "max_abs_error": error, "bytes": problem.bytes, **common.timing_row_fields(stats),
            "gbps": gbps, "peak_fraction": gbps / peak if peak else None,
        }  # fmt: skip
        if args.sweep and device.type == "cuda":
            row["sweep"] = sweep(problem, device, args)
        rows.append(row)
        del problem
    for row in rows:
        if row["variant"] == "compact_2:4":
            dense = next((r for r in rows if r["variant"] == "dense" and r["d"] == row["d"]), None)
            row["speedup_vs_dense"] = common.ratio(dense and dense["median_ms"], row["median_ms"])
            row["goal_peak_fraction_met"] = (
                None if row["peak_fraction"] is None else row["peak_fraction"] >= GOAL_PEAK_FRACTION
            )
            speedup = row["speedup_vs_dense"]
            row["goal_speedup_met"] = None if speedup is None else speedup >= GOAL_SPEEDUP
    return {
        **common.result_header("step", device),
        "timer": "cuda_graph_rotating" if device.type == "cuda" else "perf_counter_rotating",
        "peak_gbps": peak,
        "goals": {"compact_peak_fraction": GOAL_PEAK_FRACTION, "compact_speedup_vs_dense": GOAL_SPEEDUP},
        "rows": rows,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="layer widths d")
    parser.add_argument("--n", type=int, default=16, help="states per channel (default 16)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rotate-mb", type=float, default=256.0, help="total size of the rotating sets")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--peak-gbps", type=float, default=None, help="HBM peak in GB/s (default: known GPUs)"
    )
    parser.add_argument("--sweep", action="store_true", help="also time every (block_d, num_warps) candidate")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny CPU run (torch backend) to check the script"
    )
    parser.add_argument("--out", default=None, help="result JSON (default: results/step_<device>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.batch, args.widths, args.n = (
            "cpu",
            SMOKE["batch"],
            list(SMOKE["widths"]),
            SMOKE["n"],
        )
        args.rotate_mb, args.repeats, args.warmup = SMOKE["rotate_mb"], SMOKE["repeats"], SMOKE["warmup"]
    device = common.resolve_device(args.device)
    out = args.out or str(common.RESULTS_DIR / f"step_{common.device_kind(device)}.json")
    common.check_out_path(parser, out)
    report = run(args, device)
    report["provenance"] = common.run_provenance(argv, out)
    columns = [
        ("variant", "variant"), ("d", "d"), ("sets", "sets"), ("median_ms", "ms/step"), ("gbps", "GB/s"),
        ("peak_fraction", "of peak"), ("speedup_vs_dense", "vs dense"), ("max_abs_error", "max err"),
    ]  # fmt: skip
    print(common.format_table(report["rows"], columns))
    path = common.write_json_atomic(out, report)
    common.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
