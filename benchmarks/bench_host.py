"""Host (per-call) overhead of the public ops on tiny CPU tensors, where the kernel costs ~nothing.

Two comparisons, each timed interleaved in one run on one machine:

* ``step``: the public decode step ``sparsessm_kernels.selective_state_update`` (dense, torch
  backend) against a bare eager-torch step of the same math (softplus, discretisation, state
  update in place, output, D skip, gate) on ``b=1, d=8, n=4``;
* ``raw_mask``: the public scan with a raw per-channel ``(d, n)`` bool mask (passed anew on every
  call, as a user would) against the same scan with a prebuilt :class:`StateLayout`, after one
  warm-up call.

The kernel time is the same on both sides of each pair, so the ratios measure what the public
op adds per call (validation, layout handling, dispatch). Writes JSON with the device, date and
versions (``--out``) and prints a table.

    python benchmarks/bench_host.py --out benchmarks/results/host_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout

B, D, N, L = 1, 8, 4, 4


def _step_inputs(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "state": torch.randn(B, D, N, generator=g),
        "x": torch.randn(B, D, generator=g),
        "dt": torch.randn(B, D, generator=g),
        "A": -torch.rand(D, N, generator=g) - 0.5,
        "B": torch.randn(B, N, generator=g),
        "C": torch.randn(B, N, generator=g),
        "D": torch.randn(D, generator=g),
        "z": torch.randn(B, D, generator=g),
        "dt_bias": torch.randn(D, generator=g),
    }


def bare_step(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense decode step in plain eager torch (float32 inputs, state updated in place)."""
    dt = F.softplus(t["dt"] + t["dt_bias"])
    state = t["state"]
    state.mul_(torch.exp(dt[..., None] * t["A"])).add_((dt * t["x"])[..., None] * t["B"][:, None, :])
    y = (state * t["C"][:, None, :]).sum(-1) + t["x"] * t["D"]
    return y * F.silu(t["z"])


def public_step(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return ssk.selective_state_update(
        t["state"],
        t["x"],
        t["dt"],
        t["A"],
        t["B"],
        t["C"],
        t["D"],
        t["z"],
        t["dt_bias"],
        True,
        backend="torch",
    )


def _scan_inputs(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (
        torch.randn(B, D, L, generator=g),
        torch.randn(B, D, L, generator=g),
        -torch.rand(D, N, generator=g) - 0.5,
        torch.randn(B, N, L, generator=g),
        torch.randn(B, N, L, generator=g),
    )


def interleaved(
    first: Callable[[], Any], second: Callable[[], Any], *, rounds: int, inner: int
) -> tuple[common.TimingStats, common.TimingStats]:
    """Time ``first`` and ``second`` alternately, ``rounds`` samples of ``inner`` calls each (us)."""
    samples: tuple[list[float], list[float]] = ([], [])
    for fn in (first, second):  # warm-up
        for _ in range(inner):
            fn()
    for _ in range(rounds):
        for fn, out in ((first, samples[0]), (second, samples[1])):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t0) * 1e6 / inner)
    return common.summarize(samples[0]), common.summarize(samples[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/host_cpu.json", help="result JSON")
    parser.add_argument("--rounds", type=int, default=31, help="interleaved samples per side")
    parser.add_argument("--inner", type=int, default=200, help="calls per sample")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    common.check_out_path(parser, args.out)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    step = _step_inputs(g)
    check = {k: v.clone() for k, v in step.items()}
    torch.testing.assert_close(public_step(check), bare_step({**check, "state": step["state"].clone()}))
    public, bare = interleaved(
        lambda: public_step(step), lambda: bare_step(step), rounds=args.rounds, inner=args.inner
    )

    u, delta, A, Bm, Cm = _scan_inputs(g)
    mask = torch.rand(D, N, generator=g) > 0.5
    layout = StateLayout(mask.clone())

    def raw() -> torch.Tensor:
        return ssk.selective_scan(u, delta, A, Bm, Cm, state_mask=mask, backend="torch")

    def prebuilt() -> torch.Tensor:
        return ssk.selective_scan(u, delta, A, Bm, Cm, state_mask=layout, backend="torch")

    assert torch.equal(raw(), prebuilt())
    raw_t, pre_t = interleaved(raw, prebuilt, rounds=args.rounds, inner=args.inner)

    rows = [
        {
            "comparison": "step",
            "what": f"public selective_state_update vs bare eager torch, b{B} d{D} n{N}",
            "ours_us": public.median_ms,
            "ours_iqr_us": public.iqr_ms,
            "baseline_us": bare.median_ms,
            "baseline_iqr_us": bare.iqr_ms,
            "ratio": common.ratio(public.median_ms, bare.median_ms),
            "goal": 1.3,
        },
        {
            "comparison": "raw_mask",
            "what": f"scan with a raw (d, n) mask vs a prebuilt layout, b{B} d{D} n{N} l{L}",
            "ours_us": raw_t.median_ms,
            "ours_iqr_us": raw_t.iqr_ms,
            "baseline_us": pre_t.median_ms,
            "baseline_iqr_us": pre_t.iqr_ms,
            "ratio": common.ratio(raw_t.median_ms, pre_t.median_ms),
            "goal": 1.1,
        },
    ]
    for row in rows:
        row["met"] = row["ratio"] is not None and row["ratio"] <= row["goal"]
    result = {
        **common.result_header("host", torch.device("cpu")),
        "threads": args.threads,
        "rounds": args.rounds,
        "inner": args.inner,
        "run": common.run_provenance(argv, args.out),
        "rows": rows,
    }
    common.write_json_atomic(args.out, result)
    print(
        common.format_table(
            rows,
            [
                ("comparison", "comparison"),
                ("ours_us", "ours (us, median)"),
                ("baseline_us", "baseline (us)"),
                ("ratio", "ratio"),
                ("goal", "goal <="),
                ("met", "met"),
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
