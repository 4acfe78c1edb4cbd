"""Benchmark the sparse selective scan (prefill) and the decode step against baselines.

Run from the repository root::

    python benchmarks/bench_scan.py                 # full default run on this machine
    python benchmarks/bench_scan.py --quick         # tiny smoke run (seconds; used by the tests)
    python benchmarks/bench_scan.py --shapes 130m 1.4b --seqlen 4096 --pruned-states both
    python benchmarks/bench_scan.py --preset gpu-grid      # the GPU grid (bf16, CUDA only)

What is measured (see benchmarks/README.md for every output field):

* ``scan``: :func:`sparsessm_kernels.selective_scan` on every usable backend of ours, for each
  shape, mask and ``pruned_states``, plus the baselines ``transformers-fallback`` (the pure
  PyTorch scan of ``transformers``' Mamba, CPU only, when its ``(b, d, l, n)`` intermediates fit
  in ``--max-baseline-gb``) and ``mamba_ssm`` (its CUDA ``selective_scan_fn``, when it imports).
* ``decode``: :func:`sparsessm_kernels.selective_state_update` for each batch size, with a compact
  ``(b, d, k)`` state for uniform masks (dense, column, N:M) and a full ``(b, d, n)`` state
  otherwise, plus ``transformers``' fallback step (and ``mamba_ssm``'s Triton step on CUDA).

Before a configuration is timed, its output on a truncated problem is checked against the float64
reference :func:`sparsessm_kernels.selective_scan_ref` / ``selective_state_update_ref``; the run
aborts (exit status 1, nothing written) when the error exceeds the tolerance.

Every row also reports the achieved bandwidth ``gbps`` (bytes of ``u``, ``delta``, ``z``, ``B``, ``C``
and ``out`` per second for the scan; of the state read and written plus ``x``, ``dt``, ``z``, ``B``,
``C`` and ``out`` for a decode step) and, on a GPU whose peak memory bandwidth is known (or given
with ``--peak-gbps``), its fraction of that peak. On CUDA the default timer is
``triton.testing.do_bench`` (CUDA events, warm-up, L2 flushed between calls, median reported).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if not __package__:  # run as a script (or imported from benchmarks/): import as benchmarks.bench_scan
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import sparsessm_kernels as ssk
from sparsessm_kernels import StateLayout
from sparsessm_kernels.ops.dispatch import BackendUnavailableError
from sparsessm_kernels.ops.layout import PRUNED_STATES_CHOICES as PRUNED_STATES

from . import _common as common
from .scan_baselines import TIMERS, Baselines, load_baselines, resolve_timer, tf_scan_bytes, time_do_bench
from .scan_problems import (
    DEFAULT_MASKS,
    DEFAULT_SEQLEN,
    DEFAULT_STATE,
    DTYPES,
    GPU_GRID,
    MAMBA_BACKEND,
    PRESET_CHOICES,
    PRESETS,
    QUICK,
    TF_BACKEND,
    TOLERANCE,
    CorrectnessError,
    Error,
    MaskSpec,
    Shape,
    _f64,
    build_layout,
    decode_bytes,
    decode_inputs,
    kept_state_inputs,
    known_peak_gbps,
    parse_mask,
    parse_shape,
    pattern_of,
    scan_args,
    scan_bytes,
    scan_call,
    scan_inputs,
    shape_dict,
    step_args,
    truncate,
)


# ------------------------------------------------------------------------------------ runner
class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
        self.args = args
        self.device = device
        self.dtype = dtype
        self.tol = args.tolerance if args.tolerance is not None else TOLERANCE[dtype]
        self.peak_gbps = args.peak_gbps if args.peak_gbps is not None else known_peak_gbps(device)
        self.timer = resolve_timer(args.timer, device)
        self.results: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []

    # -- bookkeeping
    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})
        common.log(f"  skip {what}: {reason}")

    def _guard(self, what: str, err: Error) -> Error:
        if not err.rel <= self.tol:  # also catches NaN
            raise CorrectnessError(
                f"CORRECTNESS FAILURE: {what}: relative error vs the float64 reference = {err.rel:.3e} "
                f"(max abs {err.abs:.3e}) > tolerance {self.tol:.1e}. Refusing to time a wrong kernel; "
                "nothing was written."
            )
        return err

    def _time(self, fn: Callable[[], Any], what: str, inner: int = 1) -> common.TimingStats | None:
        """Timing stats of ``fn``, or ``None`` (recorded as skipped) when ``--timer graph`` cannot
        capture it."""
        if self.timer == "do_bench":
            return time_do_bench(fn)
        if self.timer == "graph":
            try:
                return common.time_cuda_graph(
                    fn, self.device, warmup=self.args.warmup, repeats=self.args.repeats, inner=inner
                )
            except common.GraphCaptureError as exc:
                self.skip(what, f"--timer graph: {exc}")
                return None
        return common.time_fn(
            fn, self.device, warmup=self.args.warmup, repeats=self.args.repeats, inner=inner
        )

    def _record(
        self,
        kind: str,
        backend: str,
        shape: dict[str, int],
        mask: MaskSpec,
        layout: StateLayout | None,
        pruned: str | None,
        state: str | None,
        stats: common.TimingStats | None,
        err: Error,
        nbytes: int,
    ) -> None:
        if stats is None:  # not timed (see skipped)
            return
        gbps = nbytes / (stats.median_ms * 1e-3) / 1e9 if stats.median_ms > 0 else None
        row = {
            "kind": kind,
            "op": "selective_scan" if kind == "scan" else "selective_state_update",
            "backend": backend,
            "shape": shape,
            "dtype": self.args.dtype,
            "mask": mask.name,
            "pattern": pattern_of(mask),
            "sparsity": round(layout.sparsity, 6) if layout is not None else 0.0,
            "pruned_states": pruned,
            "state": state,
            "time_ms": stats.median_ms,
            "gbps": gbps,
            "peak_fraction": gbps / self.peak_gbps if gbps is not None and self.peak_gbps else None,
            **common.timing_row_fields(stats),
            "speedup_vs_dense": None,
            "speedup_vs_dense_significant": None,
            "speedup_vs_transformers": None,
            "speedup_vs_transformers_significant": None,
            "max_abs_err_vs_reference": err.abs,
            "rel_err_vs_reference": err.rel,
        }
        self.results.append(row)
        common.log(
            f"  {kind:6s} {backend:22s} {mask.name:15s} {pruned or '-':15s} {state or '-':8s} "
            f"median {stats.median_ms:9.3f} ms  {common.fmt_float(gbps)} GB/s  rel err {err.rel:.1e}"
        )

    # -- prefill scan
    def run_scan(
        self, shape: Shape, backends: list[str], masks: list[MaskSpec], pruned: list[str], base: Baselines
    ) -> None:
        common.log(f"[scan] {shape.label()} ({shape.name}), dtype {self.args.dtype}")
        inputs = scan_inputs(shape, self.dtype, self.device, self.args.seed)
        nbytes = scan_bytes(shape, inputs["u"].element_size())
        check = truncate(inputs, min(self.args.check_len, shape.l))
        check64 = _f64(check)
        ref_cache: dict[tuple[str, str | None], torch.Tensor] = {}

        def reference(mask: MaskSpec, layout: StateLayout | None, ps: str | None) -> torch.Tensor:
            key = (mask.name, ps)
            if key not in ref_cache:
                c = check64
                ref_cache[key] = ssk.selective_scan_ref(
                    *scan_args(c),
                    True,
                    state_mask=layout,
                    pruned_states=ps or "zero_transition",
                )
            return ref_cache[key]

        def err_of(
            run: Callable[[dict[str, torch.Tensor]], torch.Tensor],
            mask: MaskSpec,
            layout: StateLayout | None,
            ps: str | None,
        ) -> Error:
            out = run(check)
            common.synchronize(self.device)
            return Error.of(out, reference(mask, layout, ps))

        for backend in backends:
            for mask in masks:
                try:
                    layout = build_layout(mask, shape.d, shape.n, self.device, self.args.seed)
                except ValueError as exc:
                    self.skip(f"scan {backend} {shape.label()} mask {mask.name}", str(exc))
                    continue
                for ps in pruned if layout is not None else [None]:

                    def run(
                        t: dict[str, torch.Tensor], layout=layout, ps=ps, backend=backend
                    ) -> torch.Tensor:
                        return scan_call(
                            t, layout, ps or "zero_transition", backend, self.args.cuda_time_segments
                        )

                    what = f"scan {backend} {shape.label()} mask {mask.name} pruned_states {ps}"
                    try:
                        err = self._guard(what, err_of(run, mask, layout, ps))
                    except (NotImplementedError, BackendUnavailableError) as exc:
                        self.skip(what, f"{type(exc).__name__}: {exc}")
                        continue
                    stats = self._time(lambda run=run: run(inputs), what)
                    self._record("scan", backend, shape.as_dict(), mask, layout, ps, None, stats, err, nbytes)

        dense = MaskSpec("dense", "dense")
        # transformers' fallback: pure PyTorch, materialises (b, d, l, n) tensors.
        what = f"scan {TF_BACKEND} {shape.label()}"
        if base.tf_scan is None:
            self.skip(what, base.tf_reason)
        elif self.device.type != "cpu":
            self.skip(
                what,
                "transformers' PyTorch fallback scan is only benchmarked on CPU (mamba_ssm is the "
                "GPU baseline)",
            )
        elif tf_scan_bytes(shape) > self.args.max_baseline_gb * 2**30:
            self.skip(
                what,
                f"estimated {tf_scan_bytes(shape) / 2**30:.1f} GiB of (b, d, l, n) intermediates > "
                f"--max-baseline-gb {self.args.max_baseline_gb:g}",
            )
        else:
            fn = base.tf_scan

            def tf_run(t: dict[str, torch.Tensor]) -> torch.Tensor:
                return fn(*scan_args(t), True)

            err = self._guard(what, err_of(tf_run, dense, None, None))
            stats = self._time(lambda: tf_run(inputs), what)
            self._record("scan", TF_BACKEND, shape.as_dict(), dense, None, None, None, stats, err, nbytes)

        what = f"scan {MAMBA_BACKEND} {shape.label()}"
        if base.mamba_scan is None:
            self.skip(what, base.mamba_reason)
        elif self.device.type != "cuda":
            self.skip(what, "mamba_ssm's selective_scan_fn needs CUDA tensors")
        else:
            mfn = base.mamba_scan

            def m_run(t: dict[str, torch.Tensor]) -> torch.Tensor:
                return mfn(*scan_args(t), True)

            err = self._guard(what, err_of(m_run, dense, None, None))
            stats = self._time(lambda: m_run(inputs), what)
            self._record("scan", MAMBA_BACKEND, shape.as_dict(), dense, None, None, None, stats, err, nbytes)

            # and at d_state = k on the kept states of each column mask (the fair baseline for
            # column pruning: a stock kernel can run the smaller state too), recorded as that mask
            # under "remove"
            for mask in (m for m in masks if m.kind == "column"):
                layout = build_layout(mask, shape.d, shape.n, self.device, self.args.seed)
                what = f"scan {MAMBA_BACKEND} {shape.label()} d_state {layout.n_kept} (kept of {mask.name})"
                if layout.n_kept == 0:
                    self.skip(what, "the mask keeps no state")
                    continue
                kept = kept_state_inputs(inputs, layout)

                def k_run(t: dict[str, torch.Tensor], layout=layout) -> torch.Tensor:
                    return mfn(*scan_args(kept_state_inputs(t, layout)), True)

                err = self._guard(what, err_of(k_run, mask, layout, "remove"))
                stats = self._time(lambda kept=kept: mfn(*scan_args(kept), True), what)
                self._record(
                    "scan", MAMBA_BACKEND, shape.as_dict(), mask, layout, "remove", None, stats, err, nbytes
                )

    # -- decode step
    def run_decode(
        self,
        d: int,
        n: int,
        batch: int,
        backends: list[str],
        masks: list[MaskSpec],
        pruned: list[str],
        base: Baselines,
    ) -> None:
        shape = shape_dict(batch, d, n, 1)
        label = f"b{batch} d{d} n{n}"
        common.log(f"[decode] {label}, dtype {self.args.dtype}")
        inputs = decode_inputs(d, n, batch, self.dtype, self.device, self.args.seed)
        inner = self.args.decode_steps

        def check(
            run: Callable[[torch.Tensor], torch.Tensor],
            state0: torch.Tensor,
            layout: StateLayout | None,
            ps: str | None,
        ) -> Error:
            """Error of one step from ``state0`` (output and updated state) vs the float64 reference."""
            mine = state0.clone()
            out = run(mine)
            ref_state = state0.double().clone()
            c = _f64(inputs)
            ref = ssk.selective_state_update_ref(
                ref_state,
                *step_args(c),
                True,
                state_mask=layout,
                pruned_states=ps or "zero_transition",
            )
            common.synchronize(self.device)
            return Error.worst(Error.of(out, ref), Error.of(mine, ref_state))

        for backend in backends:
            for mask in masks:
                try:
                    layout = build_layout(mask, d, n, self.device, self.args.seed)
                except ValueError as exc:
                    self.skip(f"decode {backend} {label} mask {mask.name}", str(exc))
                    continue
                if layout is None:
                    state0, state_kind = inputs["state"], "full"
                else:
                    full = inputs["state"] * layout.channel_mask(d)
                    if layout.uniform:
                        state0, state_kind = layout.compact_state(full).contiguous(), "compact"
                    else:
                        state0, state_kind = full.contiguous(), "full"
                for ps in pruned if layout is not None else [None]:

                    def run(state: torch.Tensor, layout=layout, ps=ps, backend=backend) -> torch.Tensor:
                        t = inputs
                        return ssk.selective_state_update(
                            state,
                            *step_args(t),
                            True,
                            state_mask=layout,
                            pruned_states=ps or "zero_transition",
                            backend=backend,
                        )

                    what = (
                        f"decode {backend} {label} mask {mask.name} pruned_states {ps} ({state_kind} state)"
                    )
                    try:
                        err = self._guard(what, check(run, state0, layout, ps))
                    except (NotImplementedError, BackendUnavailableError) as exc:
                        self.skip(what, f"{type(exc).__name__}: {exc}")
                        continue
                    state = state0.clone()
                    stats = self._time(lambda run=run, state=state: run(state), what, inner=inner)
                    nbytes = decode_bytes(
                        batch, d, n, state0.shape[-1], inputs["x"].element_size(), state0.element_size()
                    )
                    self._record("decode", backend, shape, mask, layout, ps, state_kind, stats, err, nbytes)

        dense = MaskSpec("dense", "dense")
        t = inputs
        baselines: list[tuple[str, Callable[..., Any] | None, str]] = [
            (TF_BACKEND, base.tf_step, base.tf_reason),
            (MAMBA_BACKEND, base.mamba_step, base.mamba_reason),
        ]
        for name, fn, reason in baselines:
            what = f"decode {name} {label}"
            if fn is None:
                self.skip(what, reason)
                continue
            if name == MAMBA_BACKEND and self.device.type != "cuda":
                self.skip(what, "mamba_ssm's Triton selective_state_update needs CUDA tensors")
                continue

            def b_run(state: torch.Tensor, fn=fn) -> torch.Tensor:
                return fn(
                    state,
                    t["x"],
                    t["dt"],
                    t["A"],
                    t["B"],
                    t["C"],
                    D=t["D"],
                    z=t["z"],
                    dt_bias=t["dt_bias"],
                    dt_softplus=True,
                )

            err = self._guard(what, check(b_run, inputs["state"], None, None))
            state = inputs["state"].clone()
            stats = self._time(lambda b_run=b_run, state=state: b_run(state), what, inner=inner)
            nbytes = decode_bytes(batch, d, n, n, inputs["x"].element_size(), inputs["state"].element_size())
            self._record("decode", name, shape, dense, None, None, "full", stats, err, nbytes)

    # -- speedups
    def fill_speedups(self) -> None:
        def key(row: dict[str, Any]) -> tuple:
            s = row["shape"]
            return row["kind"], s["b"], s["d"], s["n"], s["l"]

        dense_row: dict[tuple, dict[str, Any]] = {}
        tf_row: dict[tuple, dict[str, Any]] = {}
        for row in self.results:
            if row["mask"] == "dense":
                dense_row[(*key(row), row["backend"])] = row
            if row["backend"] == TF_BACKEND:
                tf_row[key(row)] = row
        for row in self.results:
            dense = dense_row.get((*key(row), row["backend"]))
            row["speedup_vs_dense"], row["speedup_vs_dense_significant"] = common.speedup_of(dense, row)
            tf = tf_row.get(key(row))
            row["speedup_vs_transformers"], row["speedup_vs_transformers_significant"] = common.speedup_of(
                tf, row
            )


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_scan.py",
        description=(
            "Benchmark sparsessm_kernels' sparse selective scan (prefill) and decode step against "
            "transformers' PyTorch fallback and mamba_ssm. Prints a table and writes JSON. Every "
            "configuration is checked against the float64 reference before it is timed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="SHAPE",
        help=f"prefill shapes: presets {', '.join(f'{k} (d={v})' for k, v in PRESETS.items())} "
        f"(n={DEFAULT_STATE}, l={DEFAULT_SEQLEN}, b=1) or explicit BxDxNxL such as 1x1536x16x2048. "
        "Decode uses each distinct (d, n). Default: 130m (--quick: 1x64x16x128)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="override the batch size b of every prefill shape"
    )
    parser.add_argument(
        "--seqlen", type=int, default=None, help="override the sequence length l of every prefill shape"
    )
    parser.add_argument(
        "--masks",
        nargs="+",
        type=parse_mask,
        default=None,
        metavar="MASK",
        help="state masks: dense, column<pct> (same states pruned in every channel), unstructured<pct> "
        "(per-channel, global top-k), N:M (e.g. 2:4). Masks use random importance scores and are "
        f"prebuilt once as a StateLayout, as a model does. Default: {' '.join(DEFAULT_MASKS)}",
    )
    parser.add_argument(
        "--pruned-states",
        choices=[*PRUNED_STATES, "both"],
        default=None,
        help="semantics of pruned states for sparse masks (see docs/semantics.md); 'both' times each. "
        "Default: zero_transition (--quick: both)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        metavar="BACKEND",
        help="our backends to time (torch, triton, cuda). Default: every backend that "
        "sparsessm_kernels.available_backends() reports usable for the device; unusable ones are "
        "recorded under 'skipped' with the reason",
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the transformers-fallback and mamba_ssm baselines"
    )
    parser.add_argument(
        "--max-baseline-gb",
        type=float,
        default=4.0,
        help="skip transformers' fallback scan when its estimated (b, d, l, n) float32 intermediates "
        "(3 tensors) exceed this many GiB",
    )
    parser.add_argument(
        "--scan", action=argparse.BooleanOptionalAction, default=True, help="benchmark the prefill scan"
    )
    parser.add_argument(
        "--decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="benchmark the single-token decode step (selective_state_update)",
    )
    parser.add_argument(
        "--decode-batch",
        nargs="+",
        type=int,
        default=None,
        metavar="B",
        help="decode batch sizes. Default: 1 16 64 on CPU, 1 64 256 on CUDA (--quick: 1 4)",
    )
    parser.add_argument(
        "--decode-steps",
        type=int,
        default=None,
        help="decode steps per timed sample (the reported time is per step). Default: 10 on CPU, "
        "50 on CUDA (--quick: 2)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed samples per configuration. Default: 10 on CPU, 30 on CUDA (--quick: 2)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed warm-up calls per configuration. Default: 2 on CPU, 10 on CUDA (--quick: 1)",
    )
    parser.add_argument(
        "--check-len",
        type=int,
        default=None,
        help="sequence length of the correctness check against the reference. Default: 64 (--quick: 32)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="abort when the relative error max|out - ref| / max|ref| vs the float64 reference exceeds "
        "this. Default: 1e-4 for float32, "
        "1e-2 for float16, 3e-2 for bfloat16",
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default=None,
        help="gpu-grid: the GPU benchmark grid (shapes 130m/370m/1.4b/2.8b x l 512/2048/8192 x batch 1/8, "
        "n=16, bf16, decode batch 1/64/256, our GPU backends only unless --backends says otherwise); "
        "CUDA only. Explicit options still win",
    )
    parser.add_argument(
        "--peak-gbps",
        type=float,
        default=None,
        help="peak memory bandwidth of the device in GB/s for the peak_fraction column. Default: the "
        "vendor figure for known GPUs (H100, H200, A100, ...), none on CPU",
    )
    parser.add_argument(
        "--timer",
        choices=TIMERS,
        default="auto",
        help="auto: triton.testing.do_bench on CUDA (when triton imports; --repeats/--warmup then do "
        "not apply), CUDA events otherwise; perf_counter on CPU. graph (CUDA): the calls captured in "
        "a CUDA graph and its replays timed, so launch and Python overhead drop out (the GPU time of "
        "the kernels; use it for decode steps)",
    )
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default=None,
        help="dtype of u, delta, B, C, z (A, D, biases and the decode state stay float32). "
        "Default: bfloat16 on CUDA, float32 on CPU; "
        "float16/bfloat16 only on CUDA",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda or cuda:N"
    )
    parser.add_argument("--threads", type=int, default=None, help=common.THREADS_HELP)
    parser.add_argument(
        "--cuda-time-segments",
        type=int,
        default=0,
        metavar="P",
        help="lanes per channel of the cuda backend's scan (1, 2, 4, ..., 128; above 32 a channel spans "
        "several warps); 0 lets the launcher choose (at most 32). For tuning sweeps",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and mask scores")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke configuration (1x64x16x128, 2 repeats, both pruned_states); "
        "explicit options still win",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output path (written atomically). Default: benchmarks/results/scan_<device-kind>.json, "
        "e.g. scan_cpu.json or scan_cuda_nvidia_h100_80gb_hbm3.json",
    )
    return parser


def resolve_args(args: argparse.Namespace, device: torch.device) -> None:
    """Fill the defaults that depend on --quick and on the device."""
    cuda = device.type == "cuda"
    defaults: dict[str, Any] = {
        "shapes": ["130m"],
        "repeats": 30 if cuda else 10,
        "warmup": 10 if cuda else 2,
        "decode_batch": [1, 64, 256] if cuda else [1, 16, 64],
        "decode_steps": 50 if cuda else 10,
        "check_len": 64,
        "pruned_states": "zero_transition",
        "masks": [parse_mask(m) for m in DEFAULT_MASKS],
    }
    if args.quick:
        defaults.update(QUICK)
    if args.preset == "gpu-grid":
        defaults.update(GPU_GRID)
    defaults.setdefault("dtype", "bfloat16" if cuda else "float32")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("repeats", "decode_steps", "check_len"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: must be >= 1")
    if args.warmup < 0:
        raise SystemExit("--warmup: must be >= 0")
    if any(b < 1 for b in args.decode_batch):
        raise SystemExit("--decode-batch: batch sizes must be >= 1")


def select_backends(requested: list[str] | None, device: torch.device, bench: Bench) -> list[str]:
    status = ssk.available_backends()
    chosen = []
    for name, (usable, reason) in status.items():
        if requested is not None and name not in requested:
            continue
        if not usable:
            bench.skip(f"backend {name}", reason)
        elif name != "torch" and device.type != "cuda":
            bench.skip(f"backend {name}", f"needs CUDA tensors; this run is on {device.type}")
        else:
            chosen.append(name)
    for name in requested or []:
        if name not in status:
            raise SystemExit(f"--backends: unknown backend {name!r}; known: {', '.join(status)}")
    return chosen


TABLE_COLUMNS = [
    ("kind", "kind"),
    ("backend", "backend"),
    ("shape_s", "shape"),
    ("mask", "mask"),
    ("pruned_s", "pruned_states"),
    ("state_s", "state"),
    ("median_s", "median ms"),
    ("min_s", "min ms"),
    ("iqr_s", "IQR ms"),
    ("gbps_s", "GB/s"),
    ("peak_s", "of peak"),
    ("dense_s", "vs dense"),
    ("tf_s", "vs HF"),
    ("err_s", "rel err"),
]


def render_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        s = r["shape"]
        rows.append(
            {
                "kind": r["kind"],
                "backend": r["backend"],
                "shape_s": f"b{s['b']} d{s['d']} n{s['n']}" + (f" l{s['l']}" if r["kind"] == "scan" else ""),
                "mask": r["mask"],
                "pruned_s": r["pruned_states"],
                "state_s": r["state"],
                "median_s": common.fmt_float(r["median_ms"]),
                "min_s": common.fmt_float(r["min_ms"]),
                "iqr_s": common.fmt_float(r["iqr_ms"]),
                "gbps_s": common.fmt_float(r["gbps"]),
                "peak_s": "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%",
                "dense_s": common.fmt_speedup(r["speedup_vs_dense"], r.get("speedup_vs_dense_significant")),
                "tf_s": common.fmt_speedup(
                    r["speedup_vs_transformers"], r.get("speedup_vs_transformers_significant")
                ),
                "err_s": f"{r['rel_err_vs_reference']:.1e}",
            }
        )
    return common.format_table(rows, TABLE_COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    if args.preset is not None and device.type != "cuda":
        parser.error(
            f"--preset {args.preset} is a GPU benchmark (bf16 Mamba layers up to l=8192) and needs a "
            f"CUDA device; this run is on {device.type}. Run without --preset for the torch backend "
            "at CPU sizes"
        )
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected an integer >= 1, got {args.threads}")
    threads = common.apply_threads(args.threads)
    args.threads = threads.threads
    segments = args.cuda_time_segments
    if segments != 0 and not (0 < segments <= 128 and segments & (segments - 1) == 0):
        parser.error(f"--cuda-time-segments: expected 0 (auto) or a power of two <= 128, got {segments}")
    resolve_args(args, device)
    dtype = DTYPES[args.dtype]
    if dtype != torch.float32 and device.type != "cuda":
        parser.error(f"--dtype {args.dtype} is only benchmarked on CUDA; use float32 on {device.type}")
    if args.preset is not None and args.backends is None:
        gpu_backends = [b for b in ("triton", "cuda") if ssk.available_backends()[b][0]]
        args.backends = gpu_backends or None
    try:
        shapes = [parse_shape(s, args.batch, args.seqlen) for s in args.shapes]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    pruned = list(PRUNED_STATES) if args.pruned_states == "both" else [args.pruned_states]
    out_path = args.out or common.RESULTS_DIR / f"scan_{common.device_kind(device)}.json"
    common.check_out_path(parser, out_path)

    bench = Bench(args, device, dtype)
    backends = select_backends(args.backends, device, bench)
    if not backends:
        bench.skip("our backends", "no requested backend is usable on this device")
    base = load_baselines(not args.no_baselines)
    common.log(
        f"device {device} ({common.device_info(device)['name']}), threads {torch.get_num_threads()}, "
        f"backends {backends}, tolerance {bench.tol:g}"
    )
    try:
        with torch.inference_mode():
            if args.scan:
                for shape in shapes:
                    bench.run_scan(shape, backends, args.masks, pruned, base)
            if args.decode:
                seen: set[tuple[int, int]] = set()
                for shape in shapes:
                    if (shape.d, shape.n) in seen:
                        continue
                    seen.add((shape.d, shape.n))
                    for batch in args.decode_batch:
                        bench.run_decode(shape.d, shape.n, batch, backends, args.masks, pruned, base)
    except CorrectnessError as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    bench.fill_speedups()

    config = {k: v for k, v in vars(args).items() if k not in ("masks", "shapes", "out")}
    config.update(
        {
            "shapes": [{"name": s.name, **s.as_dict()} for s in shapes],
            "masks": [m.name for m in args.masks],
            "pruned_states": pruned,
            "backends": backends,
            "tolerance": bench.tol,
            "device": str(device),
            "threads_reason": threads.reason,
            **common.run_provenance(argv, out_path),
        }
    )
    header = common.result_header("scan", device)
    payload = {
        **header,
        "torch": header["versions"].get("torch"),
        "triton": header["versions"].get("triton"),
        "backend": ",".join(backends),
        "peak_gbps": bench.peak_gbps,
        "timer": bench.timer,
        "backends": common.backend_status(),
        "config": config,
        "results": bench.results,
        "skipped": bench.skipped,
    }
    common.write_json_atomic(out_path, payload)
    print(render_table(bench.results))
    common.print_skipped(bench.skipped)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
