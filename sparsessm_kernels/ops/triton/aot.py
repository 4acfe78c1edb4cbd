"""Compile a call's Triton launches for a GPU this machine does not have (ahead of time).

:func:`compile_launch` takes a :class:`~.selective_scan.Launch` (kernel, grid, arguments, compile
options) as a call would make it, applies the specialisation Triton's launcher would apply to those
arguments (integers equal to 1 become constants, pointers and integers divisible by 16 get the
divisibility hint) and compiles it for the target, e.g. sm_90, down to a cubin. The arguments may
be ``meta`` tensors of the real shapes (only strides, dtypes and addresses matter), so full-size
layers need no memory. :func:`resources` reads registers, stack and local memory (spills) of the
cubin and the shared memory Triton allocates.

Uses Triton internals (``create_function_from_signature``, ``JITFunction._pack_args``) present in
Triton 3.6 to 3.9; :func:`compile_launch` raises ``RuntimeError`` naming what is missing when a
Triton release moved them. Must be imported without ``TRITON_INTERPRET`` (the interpreter
replaces ``triton.jit``). Used by ``tests/triton/test_triton_compile.py`` and
``benchmarks/triton_kernel_report.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any

import torch
import triton

from ..checks import math_dtype
from ..plan import ScanInputs, StepInputs, build_plan


def _internals() -> tuple[Any, Any, Any, Any]:
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature
    except ImportError as exc:  # pragma: no cover - depends on the Triton release
        raise RuntimeError(
            f"this Triton ({triton.__version__}) lacks an API the AOT compile uses: {exc}"
        ) from exc
    return GPUTarget, ASTSource, make_backend, create_function_from_signature


def compile_launch(launch: Any, arch: int = 90) -> Any:
    """Compile ``launch`` (a ``Launch``) for NVIDIA ``sm_<arch>``; returns Triton's compiled kernel
    (``.asm`` holds ``ttgir``, ``ptx`` and ``cubin``; ``.metadata.shared`` its shared memory)."""
    GPUTarget, ASTSource, make_backend, create_function_from_signature = _internals()
    fn = launch.kernel
    if not hasattr(fn, "_pack_args"):
        raise RuntimeError(f"{fn!r} is not a compiled-mode triton.jit function (is TRITON_INTERPRET set?)")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, dict(launch.kwargs), bound_args, specialization, options
    )
    source = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _cuobjdump() -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise RuntimeError(f"cuobjdump not found next to Triton's ptxas ({path})")
    return path


def resources(compiled: Any) -> dict[str, int]:
    """Per-thread ``registers``, ``stack`` and ``local`` bytes (local memory: register spills, as
    the Triton kernels have no local arrays) of the cubin, from ``cuobjdump -res-usage``; the
    ``shared`` bytes Triton requests per program (layout conversions, scans and reductions; the
    1 KiB the driver reserves per block comes on top) and ``num_warps``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        log = subprocess.run(
            [_cuobjdump(), "-res-usage", path], capture_output=True, text=True, check=True
        ).stdout
    found = _RESOURCE.search(log)
    if found is None:
        raise RuntimeError(f"unexpected cuobjdump -res-usage output: {log[-2000:]}")
    regs, stack, _, local = (int(x) for x in found.groups())
    return {
        "registers": regs,
        "stack": stack,
        "local": local,
        "shared": int(compiled.metadata.shared),
        "num_warps": int(compiled.metadata.num_warps),
    }


# ------------------------------------------------------------------------------ SASS
def _nvdisasm() -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    if not os.path.exists(path):
        raise RuntimeError(f"nvdisasm not found next to Triton's ptxas ({path})")
    return path


_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`?\(?(\.L_x_\d+)")


def sass_summary(compiled: Any) -> dict[str, int]:
    """From the cubin's SASS: ``instructions``, ``spill_instructions`` (local loads / stores) and
    how many of them sit inside a loop (``spill_instructions_in_loops``: register pressure where
    the work is; outside loops ptxas may spill a few kernel-lifetime values on purpose, to fit
    another program per SM), ``barriers`` and ``loop_instructions``, the length of the longest
    loop body (for the scan: one chunk, when the slot loop is unrolled)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        text = subprocess.run([_nvdisasm(), "-c", path], capture_output=True, text=True, check=True).stdout
    instructions: list[str] = []
    labels: dict[str, int] = {}
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        found = _SASS_LINE.search(line)
        if found:
            instructions.append(found.group(1))
    loops = []  # (first, last) instruction of every loop: a backward branch and its target
    for i, ins in enumerate(instructions):
        branch = _BRANCH.search(ins)
        if branch and labels.get(branch.group(1), i + 1) <= i:
            loops.append((labels[branch.group(1)], i))
    spills = [i for i, ins in enumerate(instructions) if re.search(r"\b(STL|LDL)\b", ins)]
    return {
        "instructions": len(instructions),
        "spill_instructions": len(spills),
        "spill_instructions_in_loops": sum(any(a <= i <= b for a, b in loops) for i in spills),
        "barriers": sum(1 for ins in instructions if "BAR.SYNC" in ins),
        "loop_instructions": max((b - a + 1 for a, b in loops), default=0),
    }


# ------------------------------------------------------------------------------ occupancy (sm_90)
SM90 = {
    "registers": 65536,
    "max_warps": 64,
    "max_programs": 32,
    "shared": 228 * 1024,
    "reserved_shared": 1024,
}


def programs_per_sm(registers: int, num_warps: int, shared: int, limits: dict[str, int] = SM90) -> int:
    """Programs (CTAs) of one kernel an SM holds at once, from registers (allocated per warp in
    units of 256), warps, shared memory (plus the 1 KiB reserved per block) and the block limit."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = (limits["registers"] // per_warp) // num_warps if per_warp else limits["max_programs"]
    by_warps = limits["max_warps"] // num_warps
    by_shared = limits["shared"] // (shared + limits["reserved_shared"])
    return max(0, min(by_registers, by_warps, by_shared, limits["max_programs"]))


# ------------------------------------------------------------------------------ representative calls
def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _meta_mask(kind: str, d: int, n: int) -> tuple[torch.Tensor | None, ...]:
    """``(state_mask, kept_idx, kept_count)`` shaped like a real layout's (values never read)."""
    if kind == "dense":
        return None, None, None
    if kind in ("column50", "column0"):
        k = n // 2 if kind == "column50" else 0
        return _meta(n, dtype=torch.bool), _meta(k, dtype=torch.int32), None
    k_max = n // 2 if kind == "2:4" else (3 * n) // 4  # unstructured 50%: the fullest channel
    return _meta(d, n, dtype=torch.bool), _meta(d, k_max, dtype=torch.int32), _meta(d, dtype=torch.int32)


def scan_call(
    b: int = 8,
    d: int = 1536,
    l: int = 2048,
    n: int = 16,
    dtype: torch.dtype = torch.bfloat16,
    mask: str = "dense",
    pruned_states: str = "zero_transition",
    fixed: str = "",
    groups: int = 0,
    optionals: bool = True,
) -> list[Any]:
    """The launches of one ``selective_scan`` call on ``meta`` tensors (``mask``: ``dense``,
    ``column50``, ``column0`` (every state pruned), ``2:4`` or ``unstructured50``; ``fixed``: which of
    B / C is time-invariant)."""
    from ..selective_scan.triton_backend import plan_scan

    weight = torch.float64 if dtype == torch.float64 else torch.float32
    bc_shape = (b, groups, n, l) if groups else (b, n, l)
    B = _meta(d, n, dtype=weight) if "B" in fixed else _meta(*bc_shape, dtype=dtype)
    C = _meta(d, n, dtype=weight) if "C" in fixed else _meta(*bc_shape, dtype=dtype)
    opt = (lambda t: t) if optionals else (lambda t: None)
    inputs = ScanInputs(
        _meta(b, d, l, dtype=dtype), _meta(b, d, l, dtype=dtype), _meta(d, n, dtype=weight), B, C,
        opt(_meta(d, dtype=weight)), opt(_meta(b, d, l, dtype=dtype)), opt(_meta(d, dtype=weight)),
    )  # fmt: skip
    plan = build_plan(
        "triton", n, pruned_states, optionals, math_dtype(*inputs), *_meta_mask(mask, d, n),
        return_last_state=optionals,
    )  # fmt: skip
    launches, _, _ = plan_scan(plan, inputs)
    return launches


def state_update_call(
    b: int = 64,
    d: int = 1536,
    n: int = 16,
    dtype: torch.dtype = torch.bfloat16,
    mask: str = "dense",
    compact: bool = True,
    pruned_states: str = "zero_transition",
    batch_indices: bool = False,
) -> list[Any]:
    """The launch of one ``selective_state_update`` call on ``meta`` tensors (float32 state,
    compact ``(b, d, k)`` for uniform masks when ``compact``), configured by the step's table."""
    from ..state_update.triton_backend import plan_state_update

    state_mask, kept_idx, kept_count = _meta_mask(mask, d, n)
    k = n if kept_idx is None or not compact else kept_idx.shape[-1]
    tokens = lambda: _meta(b, d, dtype=dtype)  # noqa: E731
    rows = lambda: _meta(b, n, dtype=dtype)  # noqa: E731
    indices = _meta(b, dtype=torch.int32) if batch_indices else None
    inputs = StepInputs(
        _meta(b, d, k), tokens(), tokens(), _meta(d, n), rows(), rows(), _meta(d), tokens(), _meta(d), indices
    )
    plan = build_plan(
        "triton", n, pruned_states, True, math_dtype(*inputs[:9]), state_mask, kept_idx, kept_count
    )
    launches, _ = plan_state_update(plan, inputs)
    return launches


def representative_calls() -> list[tuple[str, list[Any]]]:
    """``(name, launches)`` of the calls whose kernels the compile-time report covers: every
    configuration :func:`~.selective_scan.scan_config` picks (the benchmark-grid table, the rule
    for float32 / float64 inputs, small batches and ``n > 16``), each mask kind and
    ``pruned_states`` mode, time-invariant and grouped B / C, and the decode step's modes."""
    bf16, f16, f32, f64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
    zt, rm = "zero_transition", "remove"
    scans = [
        ("bf16 dense", {}),
        ("bf16 dense, no D / z / bias / softplus / last state", dict(optionals=False)),
        ("bf16 column 50% zero_transition", dict(mask="column50")),
        ("bf16 column 50% remove", dict(mask="column50", pruned_states=rm)),
        ("bf16 2:4 zero_transition", dict(mask="2:4")),
        ("bf16 2:4 remove", dict(mask="2:4", pruned_states=rm)),
        ("bf16 unstructured 50% zero_transition", dict(mask="unstructured50")),
        ("bf16 unstructured 50% remove", dict(mask="unstructured50", pruned_states=rm)),
        ("fp16 dense", dict(dtype=f16)),
        ("fp16 2:4 zero_transition", dict(dtype=f16, mask="2:4")),
        ("fp32 dense", dict(dtype=f32)),
        ("fp32 2:4 zero_transition", dict(dtype=f32, mask="2:4")),
        ("fp32 column 50% remove", dict(dtype=f32, mask="column50", pruned_states=rm)),
        ("fp64 dense", dict(dtype=f64)),
        ("fp64 unstructured 50% zero_transition", dict(dtype=f64, mask="unstructured50")),
        ("bf16 dense, batch 1, d 256 (2 warps per program)", dict(b=1, d=256)),
        ("bf16 2:4 zero_transition, batch 1, d 256 (2 warps per program)", dict(b=1, d=256, mask="2:4")),
        ("bf16 dense, n 32 (slot loop not unrolled)", dict(n=32)),
        ("bf16 dense, n 256", dict(n=256)),
        ("bf16 unstructured 50% zero_transition, n 32", dict(n=32, mask="unstructured50")),
        ("bf16 column 50% zero_transition, time-invariant B", dict(mask="column50", fixed="B")),
        ("bf16 2:4 zero_transition, time-invariant B and C", dict(mask="2:4", fixed="BC")),
        ("bf16 dense, 512 groups (3 channels each: gathered per channel)", dict(groups=512)),
        ("bf16 column 50% zero_transition, 512 groups", dict(groups=512, mask="column50")),
        ("bf16 2:4 zero_transition, 2 groups", dict(groups=2, mask="2:4")),
        ("bf16 dense, l 100 (one short chunk)", dict(l=100)),
        ("bf16 column 100% pruned zero_transition (no slot)", dict(mask="column0")),
    ]
    steps = [
        ("decode bf16 dense", {}),
        ("decode bf16 column 50% compact zero_transition", dict(mask="column50")),
        (
            "decode bf16 2:4 compact zero_transition, state_batch_indices",
            dict(mask="2:4", batch_indices=True),
        ),
        (
            "decode bf16 unstructured 50% masked dense state remove",
            dict(mask="unstructured50", pruned_states=rm),
        ),
        ("decode fp32 2:4 masked dense state", dict(dtype=f32, mask="2:4", compact=False)),
    ]
    calls = [(f"scan {name}", scan_call(**{"dtype": bf16, "pruned_states": zt, **kw})) for name, kw in scans]
    calls += [(name, state_update_call(**kw)) for name, kw in steps]
    calls += step_table_calls()
    return calls


def step_table_calls() -> list[tuple[str, list[Any]]]:
    """A decode step for every row of the step's configuration table
    (:data:`~..state_update.triton_backend.STEP_CONFIG_TABLE`): a dense state of ``n`` = the row's
    width at batch 1 (small rows) or 256 (large rows), ``d = 1536``, and the compact 2:4 step for
    the rows of width 16 (``k = 8`` stored, ``n = 16`` read by the feed-through)."""
    from ..state_update.triton_backend import SMALL_ROWS, STEP_CONFIG_TABLE

    calls = []
    for max_rows, width, _ in STEP_CONFIG_TABLE:
        b = 1 if max_rows == SMALL_ROWS else 256
        kinds = [("dense", {})] + ([("2:4 compact", {"mask": "2:4"})] if width == 16 else [])
        for kind, kw in kinds:
            rows = "any b*d" if max_rows is None else f"b*d <= {max_rows}"
            name = f"decode table: b {b} d 1536 n {width} {kind} ({rows}, width <= {width})"
            calls.append((name, state_update_call(b=b, d=1536, n=width, **kw)))
    return calls


def compile_report(
    arch: int = 90, calls: list[tuple[str, list[Any]]] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Compile every launch of ``calls`` (default: :func:`representative_calls`) for
    ``sm_<arch>``: one row per launch (kernel, grid, compile-time constants, resources, SASS
    summary, programs per SM) and the failures as ``"name: error"`` lines."""
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for name, launches in representative_calls() if calls is None else calls:
        for launch in launches:
            kernel = launch.kernel.__name__
            try:
                compiled = compile_launch(launch, arch)
                res = resources(compiled)
                sass = sass_summary(compiled)
            except Exception as exc:  # reported per call, the report goes on
                failures.append(f"{name} [{kernel}]: {type(exc).__name__}: {str(exc)[-1500:]}")
                continue
            constants = {k: _plain(v) for k, v in launch.kwargs.items()}
            row = {"call": name, "kernel": kernel, "grid": list(launch.grid), "constants": constants}
            row.update(res)
            row.update(sass)
            row["spills"] = bool(sass["spill_instructions"] or res["local"])
            row["spills_in_loops"] = bool(sass["spill_instructions_in_loops"])
            k, chunk = launch.kwargs.get("K", 0), launch.kwargs.get("T", 0)
            if kernel == "_scan_kernel" and k >= 1 and launch.kwargs.get("UNROLL") == k and chunk >= 32:
                # one chunk is the loop body: its SASS per timestep (a thread holds chunk / 32)
                # and kept slot, the chunk's own work (loads, softplus, gate, store) included
                row["instructions_per_step_per_slot"] = round(sass["loop_instructions"] * 32 / (chunk * k), 1)
            row["programs_per_sm"] = programs_per_sm(res["registers"], res["num_warps"], res["shared"])
            rows.append(row)
    return rows, failures


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
