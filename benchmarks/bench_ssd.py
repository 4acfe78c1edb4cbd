"""Benchmark the Mamba-2 (SSD) scan and decode step against mamba_ssm's Triton SSD kernels.

Run from the repository root::

    python benchmarks/bench_ssd.py              # the GPU grid (CUDA; mamba_ssm for the baselines)
    python benchmarks/bench_ssd.py --smoke      # tiny CPU-capable run (seconds; used by the tests)
    python benchmarks/bench_ssd.py --shapes Mamba2-2.7B --seqlens 2048 --batches 1

What is measured (rows of the JSON ``results``):

* ``prefill``: :func:`sparsessm_kernels.ssd_scan` dense (``ours-dense``) and with a 50% per-group
  state mask (``ours-group50``, ``pruned_states="remove"``), against mamba_ssm's
  ``mamba_chunk_scan_combined`` dense (``mamba_ssm-dense``) and at ``d_state = n / 2``
  (``mamba_ssm-half-n``: what exporting the pruned model with a uniformly smaller state gives),
  on the layer shapes of :data:`sparsessm_kernels.ops.ssd.aot_calls.SHAPES` at every
  ``--seqlens`` x ``--batches``; chunk 256, bf16, ``D``, ``dt_bias``, softplus, no ``z``.
* ``decode``: :func:`sparsessm_kernels.ssd_state_update` on a dense float32 ``(b, h, p, n)``
  state (``ours-dense``) and a compact 50% ``(b, h, p, n/2)`` state (``ours-compact50``), both
  through ``state_batch_indices``, against mamba_ssm's ``selective_state_update`` on the dense
  state (``mamba_ssm-dense``, the way the Mamba2 module calls it: ``A``, ``dt``, ``D``, ``dt_bias``
  expanded over ``headdim``), at every ``--decode-batches``. Each row has the bytes moved
  (state read and written, inputs, output), the achieved ``gbps`` and, with a known peak
  (``--peak-gbps``; H200 and H100 are known), its ``fraction_of_peak``.

Every timed configuration is first checked against the float64 oracle on a short prefix (the
decode step on one step); a mismatch aborts the run (exit status 1, nothing written). On CUDA the
timer replays the calls captured in a CUDA graph (launch overhead out); on CPU it is
``perf_counter`` and **the timings are meaningless** (``--smoke``: the Triton kernels run under
Triton's interpreter when ``TRITON_INTERPRET=1``, else the torch backend; mamba_ssm's kernels need a
GPU): the smoke run only exercises the code and the JSON. Without mamba_ssm the baseline rows are
listed under ``skipped`` with the reason, and ``--require-baselines`` refuses to run instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if __package__:  # imported as benchmarks.bench_ssd
    from . import _common as common
else:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as common

import sparsessm_kernels as ssk
from sparsessm_kernels.ops.dispatch import available_backends
from sparsessm_kernels.ops.ssd import SSDStateLayout, ssd_scan_ref, ssd_state_update_ref
from sparsessm_kernels.ops.ssd.aot_calls import SHAPES

PEAK_GBPS = (("h200", 4800.0), ("h100 sxm", 3350.0), ("h100 80gb hbm3", 3350.0), ("h100", 2000.0))
SMOKE_SHAPE = "smoke"
SMOKE_DIMS = (2, 16, 1, 32)  # nheads, headdim, ngroups, d_state
CHECK_LEN = 64  # timesteps of the prefix checked against the oracle
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2, torch.float32: 1e-3}


def peak_gbps(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device).lower()
    return next((gbps for fragment, gbps in PEAK_GBPS if fragment in name), None)


def dims(shape: str) -> tuple[int, int, int, int]:
    return SMOKE_DIMS if shape == SMOKE_SHAPE else SHAPES[shape]


def group_mask(g: int, n: int, seed: int) -> torch.Tensor:
    """A 50% per-group state mask (each group keeps a random half of its ``n`` states)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(g, n, generator=gen).argsort(dim=1)
    return torch.zeros(g, n, dtype=torch.bool).scatter_(1, order[:, : n // 2], True)


def prefill_inputs(shape: str, b: int, l: int, dtype: torch.dtype, device: torch.device) -> dict:
    h, p, g, n = dims(shape)
    gen = torch.Generator().manual_seed(0)

    def randn(*size: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(*size, generator=gen) * scale + shift

    return {
        "x": randn(b, l, h, p).to(device, dtype),
        "dt": randn(b, l, h, scale=0.5, shift=-1.0).to(device, dtype),
        "A": -torch.exp(randn(h, scale=0.8)).to(device),
        "B": randn(b, l, g, n).to(device, dtype),
        "C": randn(b, l, g, n).to(device, dtype),
        "D": randn(h).to(device),
        "dt_bias": randn(h, scale=0.1).to(device),
    }


def head_view(t: dict, n_keep: int | None = None) -> dict:
    """The inputs with ``B`` / ``C`` cut to their first ``n_keep`` states (mamba_ssm at n/2)."""
    if n_keep is None:
        return t
    return {**t, "B": t["B"][..., :n_keep].contiguous(), "C": t["C"][..., :n_keep].contiguous()}


def prefix(t: dict, length: int) -> dict:
    return {k: (v[:, :length] if v.dim() >= 3 else v) for k, v in t.items()}


def _max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(
        (out.double().cpu() - ref.double().cpu()).abs().max() / ref.double().abs().max().clamp_min(1e-30)
    )


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        self.results: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.peak = peak_gbps(device, args.peak_gbps)
        self.ours = self._our_backend()
        self.mamba_scan, self.mamba_step, self.mamba_reason = self._load_mamba_ssm()

    def _our_backend(self) -> str:
        usable, reason = available_backends()["triton"]
        if usable:
            return "triton"
        common.log(f"the Triton backend is not usable ({reason}); timing the torch backend")
        return "torch"

    def _load_mamba_ssm(self) -> tuple[Callable | None, Callable | None, str]:
        if self.args.no_baselines:
            return None, None, "baselines disabled (--no-baselines)"
        if self.device.type != "cuda":
            return None, None, "mamba_ssm's Triton kernels need a CUDA device"
        try:
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        except Exception as exc:
            return None, None, f"mamba_ssm's Triton SSD kernels do not import: {type(exc).__name__}: {exc}"
        return mamba_chunk_scan_combined, selective_state_update, ""

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})

    def time(self, fn: Callable[[], Any]) -> common.TimingStats:
        a = self.args
        if self.device.type == "cuda":
            return common.time_cuda_graph(fn, self.device, warmup=a.warmup, repeats=a.repeats, inner=a.inner)
        return common.time_fn(fn, self.device, warmup=min(a.warmup, 1), repeats=a.repeats)

    def check(self, what: str, out: torch.Tensor, ref: torch.Tensor) -> float:
        err = _max_rel_err(out, ref)
        if not err <= TOLERANCE[self.dtype]:
            raise SystemExit(
                f"bench_ssd: {what} disagrees with the float64 oracle (relative error {err:.3g})"
            )
        return err

    def record(self, row: dict[str, Any], stats: common.TimingStats, nbytes: int | None = None) -> None:
        row.update(common.timing_row_fields(stats))
        if nbytes is not None:
            row["bytes"] = nbytes
            row["gbps"] = nbytes / (stats.median_ms * 1e-3) / 1e9
            row["fraction_of_peak"] = common.ratio(row["gbps"], self.peak)
        self.results.append(row)

    # ------------------------------------------------------------------------------ prefill
    def run_prefill(self, shape: str, b: int, l: int) -> None:
        h, p, g, n = dims(shape)
        t = prefill_inputs(shape, b, l, self.dtype, self.device)
        mask = group_mask(g, n, seed=1).to(self.device)
        layout = SSDStateLayout(mask, nheads=h, ngroups=g)
        base = {
            "op": "prefill",
            "shape": shape,
            "batch": b,
            "seqlen": l,
            "nheads": h,
            "headdim": p,
            "ngroups": g,
            "d_state": n,
        }
        chunk = self.args.chunk

        def ours(inputs: dict, state_mask=None) -> torch.Tensor:
            return ssk.ssd_scan(
                **inputs, dt_softplus=True, state_mask=state_mask, chunk_size=chunk, backend=self.ours
            )

        cpu64 = {
            k: v.cpu().double() if v.is_floating_point() else v.cpu() for k, v in prefix(t, CHECK_LEN).items()
        }
        for name, state_mask in (("ours-dense", None), ("ours-group50", layout)):
            ref = ssd_scan_ref(
                **cpu64, dt_softplus=True, state_mask=None if state_mask is None else mask.cpu()
            )
            err = self.check(f"{shape} {name}", ours(prefix(t, CHECK_LEN), state_mask), ref)
            with torch.no_grad():
                stats = self.time(lambda sm=state_mask: ours(t, sm))
            self.record(
                {
                    **base,
                    "impl": name,
                    "backend": self.ours,
                    "kept": n // 2 if state_mask else n,
                    "max_rel_err": err,
                },
                stats,
            )
        for name, keep in (("mamba_ssm-dense", None), ("mamba_ssm-half-n", n // 2)):
            if self.mamba_scan is None:
                self.skip(f"prefill {shape} b{b} l{l} {name}", self.mamba_reason)
                continue
            ti = head_view(t, keep)

            def run(inputs=ti) -> torch.Tensor:
                x, dt, A, B, C = (inputs[k] for k in ("x", "dt", "A", "B", "C"))
                return self.mamba_scan(
                    x, dt, A, B, C, chunk, D=inputs["D"], dt_bias=inputs["dt_bias"], dt_softplus=True
                )

            ref = ssd_scan_ref(
                **{k: v.cpu().double() for k, v in prefix(ti, CHECK_LEN).items()}, dt_softplus=True
            )
            err = self.check(f"{shape} {name}", run(prefix(ti, CHECK_LEN)), ref)
            with torch.no_grad():
                stats = self.time(run)
            self.record(
                {**base, "impl": name, "backend": "mamba_ssm", "kept": keep or n, "max_rel_err": err}, stats
            )

    # ------------------------------------------------------------------------------ decode
    def run_decode(self, shape: str, b: int) -> None:
        h, p, g, n = dims(shape)
        dev, dt_ = self.device, self.dtype
        step = {k: v[:, 0] if v.dim() >= 3 else v for k, v in prefill_inputs(shape, b, 1, dt_, dev).items()}
        mask = group_mask(g, n, seed=1).to(dev)
        layout = SSDStateLayout(mask, nheads=h, ngroups=g)
        slots = torch.randperm(b, generator=torch.Generator().manual_seed(2)).to(dev, torch.int32)
        gen = torch.Generator().manual_seed(3)
        dense0 = torch.randn(b, h, p, n, generator=gen).to(dev)
        base = {
            "op": "decode",
            "shape": shape,
            "batch": b,
            "nheads": h,
            "headdim": p,
            "ngroups": g,
            "d_state": n,
        }
        small = 4 * b * h * p * dt_.itemsize + 2 * b * g * n * dt_.itemsize + b * h * dt_.itemsize

        def ref_of(state: torch.Tensor, state_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
            s64 = state.cpu().double()
            s64 = s64 if state_mask is None else layout.expand_state(s64) if s64.shape[-1] != n else s64
            cpu = {k: v.cpu().double() for k, v in step.items()}
            s64 = s64[slots.cpu().long()]
            out = ssd_state_update_ref(
                s64, **cpu, dt_softplus=True, state_mask=None if state_mask is None else mask.cpu()
            )
            return out, s64

        for name, state_mask in (("ours-dense", None), ("ours-compact50", layout)):
            kept = layout.head_mask.to(dev)[None, :, None, :]
            state = dense0.clone() if state_mask is None else layout.compact_state(dense0 * kept)
            ref, _ = ref_of(state, state_mask)

            def run(st=state, sm=state_mask) -> torch.Tensor:
                return ssk.ssd_state_update(
                    st, **step, dt_softplus=True, state_mask=sm, backend=self.ours, state_batch_indices=slots
                )

            err = self.check(f"decode {shape} {name}", run(state.clone()), ref)
            with torch.no_grad():
                stats = self.time(run)
            k = state.shape[-1]
            self.record(
                {**base, "impl": name, "backend": self.ours, "kept": k, "max_rel_err": err},
                stats,
                2 * b * h * p * k * 4 + small,
            )
        if self.mamba_step is None:
            self.skip(f"decode {shape} b{b} mamba_ssm-dense", self.mamba_reason)
            return
        A = step["A"][:, None, None].expand(h, p, n)
        D = step["D"][:, None].expand(h, p)
        bias = step["dt_bias"][:, None].expand(h, p)
        dt = step["dt"][:, :, None].expand(b, h, p)
        state = dense0.clone()

        def m_run(st=state) -> torch.Tensor:
            x, B, C = step["x"], step["B"], step["C"]
            return self.mamba_step(
                st, x, dt, A, B, C, D=D, dt_bias=bias, dt_softplus=True, state_batch_indices=slots
            )

        ref, _ = ref_of(dense0)
        err = self.check(f"decode {shape} mamba_ssm-dense", m_run(dense0.clone()), ref)
        with torch.no_grad():
            stats = self.time(m_run)
        row = {**base, "impl": "mamba_ssm-dense", "backend": "mamba_ssm", "kept": n, "max_rel_err": err}
        self.record(row, stats, 2 * b * h * p * n * 4 + small)

    def fill_speedups(self) -> None:
        """``speedup_vs_mamba_ssm_dense``: mamba_ssm-dense median / this row's, same op and sizes."""
        key = ("op", "shape", "batch", "seqlen")
        bases = {tuple(r.get(k) for k in key): r for r in self.results if r["impl"] == "mamba_ssm-dense"}
        for row in self.results:
            speedup, significant = common.speedup_of(bases.get(tuple(row.get(k) for k in key)), row)
            row["speedup_vs_mamba_ssm_dense"] = speedup
            row["speedup_significant"] = significant


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="result JSON (default: results/ssd_<device>.json)")
    parser.add_argument(
        "--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="layer shapes"
    )
    parser.add_argument("--seqlens", nargs="+", type=int, default=[2048, 8192])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="prefill batch sizes")
    parser.add_argument("--decode-batches", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--chunk", type=int, default=256, help="chunk size of both scans (default 256)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--inner", type=int, default=10, help="calls per CUDA-graph replay (default 10)")
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth of the GPU")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--no-baselines", action="store_true", help="skip mamba_ssm")
    parser.add_argument("--require-baselines", action="store_true", help="refuse to run without mamba_ssm")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, 1 repeat, CPU-capable; timings meaningless"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    if args.smoke:
        args.shapes, args.seqlens, args.batches, args.decode_batches = [SMOKE_SHAPE], [20], [1], [3]
        args.repeats, args.warmup, args.inner, args.chunk = 1, 0, 1, 16
        args.dtype = "fp32" if device.type != "cuda" else args.dtype
    elif device.type != "cuda":
        parser.error("the full grid needs a CUDA device; use --smoke for a CPU run")
    out = args.out or str(common.RESULTS_DIR / f"ssd_{common.device_kind(device)}.json")
    common.check_out_path(parser, out)
    bench = Bench(args, device)
    if args.require_baselines and bench.mamba_scan is None:
        parser.error(f"--require-baselines: {bench.mamba_reason}")
    for shape in args.shapes:
        for b in args.batches:
            for l in args.seqlens:
                bench.run_prefill(shape, b, l)
        for b in args.decode_batches:
            bench.run_decode(shape, b)
    bench.fill_speedups()
    payload = {
        **common.result_header("ssd", device),
        "timer": "cuda-graph replays (CUDA events)" if device.type == "cuda" else "perf_counter",
        "timings_meaningful": device.type == "cuda",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "ours_backend": bench.ours,
        "peak_gbps": bench.peak,
        "results": bench.results,
        "skipped": bench.skipped,
    }
    columns = [
        ("op", "op"),
        ("shape", "shape"),
        ("batch", "b"),
        ("seqlen", "l"),
        ("impl", "impl"),
        ("kept", "k"),
        ("median_ms", "median ms"),
        ("gbps", "GB/s"),
        ("speedup_vs_mamba_ssm_dense", "vs mamba_ssm"),
    ]
    shown = [
        {k: common.fmt_float(v) if isinstance(v, float) else v for k, v in row.items()}
        for row in bench.results
    ]
    print(common.format_table(shown, columns))
    common.print_skipped(bench.skipped)
    if device.type != "cuda":
        common.log(
            "CPU run: the timings are meaningless (interpreter / torch backend); only the JSON is exercised"
        )
    path = common.write_json_atomic(out, payload)
    common.log(f"{len(bench.results)} rows, {len(bench.skipped)} skipped: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
