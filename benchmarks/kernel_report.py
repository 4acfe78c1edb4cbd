"""Compile-time report of the CUDA scan kernels: registers, spills, shared memory and the SASS of
the state loop, plus a first-principles ceiling model. Needs nvcc, not a GPU.

Run from the repository root::

    python benchmarks/kernel_report.py                    # bf16, sm_80 + sm_90a -> results JSON
    python benchmarks/kernel_report.py --dtypes bf16 fp16 fp32 --out /tmp/report.json
    python benchmarks/kernel_report.py --baseline 1111b22  # also the kernels of another revision

What it does:

1. compiles ``csrc/selective_scan/selective_scan_fwd_<dtype>.cu`` with the flags of the extension
   build (``.ci/compile_cuda.sh``) plus ``-Xptxas -v`` for each architecture, and records per
   kernel instantiation the registers, spill stores / loads, stack frame and static shared memory;
2. disassembles the objects (``cuobjdump -sass``, from the CUDA toolkit or the copy Triton ships)
   and finds each scan kernel's state loop: the innermost loop (a backward branch) holding at least
   ``items`` ``MUFU.EX2``. Its instruction count divided by the timesteps per lane is the number
   of SASS instructions per (element, kept state) -- the loop is branch-free, so the static count
   is the dynamic one -- with the MUFU operations and an opcode breakdown;
3. evaluates the launch geometry with the code the dispatcher itself uses
   (``csrc/tests/launch_geometry.cpp``, compiled for the host): shared memory per block, and the
   lanes per channel P picked on an H100 for each shape of the model;
4. models each shape of the H100 round (``--shapes``) from first principles: time bounds from the
   special-function unit (MUFU: 16 results / clock / SM), instruction issue (4 warp instructions /
   clock / SM) and DRAM bandwidth, using the SASS counts of step 2.

Nothing here runs a kernel: the JSON says so (``"kind": "compile-time"``), and its numbers are
instruction counts and bounds, not measurements.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.kernel_report
    from . import _common as common
else:  # run as a script: python benchmarks/kernel_report.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as common

ROOT = common.BENCH_DIR.parent
DEFAULT_OUT = common.RESULTS_DIR / "kernel_report_compile_time.json"
DTYPE_FILES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
ELEM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
ARCH_FLAGS = {
    "sm_80": "-gencode=arch=compute_80,code=sm_80",
    "sm_90a": "-gencode=arch=compute_90a,code=sm_90a",
}
# What torch.utils.cpp_extension adds to every nvcc command (as .ci/compile_cuda.sh does).
NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "-lineinfo",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]
MODES = {"0": "uniform", "1": "channel", "2": "channel_excl"}
KERNEL_RE = re.compile(
    r"selective_scan_fwd_kernelI(?P<dtype>\w+?)Li(?P<P>\d+)ELNS0_10KernelModeE(?P<mode>\d)E"
)
DTYPE_OF_MANGLED = {"f": "fp32", "6__half": "fp16", "13__nv_bfloat16": "bf16"}

# H100 SXM5 (datasheet): 132 SMs, 1.755 GHz sustained boost, HBM3 3.35 TB/s; per SM and clock:
# 16 MUFU results, 4 warp instructions issued (128 thread instructions).
H100 = {
    "name": "H100 SXM5",
    "sms": 132,
    "clock_ghz": 1.755,
    "dram_tbps": 3.35,
    "mufu_per_clk_sm": 16,
    "issue_per_clk_sm": 128,
}
# The shapes of the H100 round (benchmarks/results/scan_cuda_nvidia_h100_80gb_hbm3.json), n = 16.
DEFAULT_SHAPES = [f"{b}x{d}x{l}" for d in (1536, 2048, 4096, 5120) for l in (512, 2048, 8192) for b in (1, 8)]
# Per element, outside the state loop: softplus (exp2, log2) and silu (exp2, reciprocal).
MUFU_PER_ELEMENT_OUTSIDE = 4


# ------------------------------------------------------------------------------ tools
def find_tool(name: str, cuda_home: Path | None) -> str | None:
    """``name`` from the CUDA toolkit (``CUDA_HOME/bin``, ``PATH``), else the copy Triton ships."""
    if cuda_home is not None and (cuda_home / "bin" / name).is_file():
        return str(cuda_home / "bin" / name)
    found = shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / name
        if candidate.is_file():
            return str(candidate)
    return None


def cuda_home_of(nvcc: str) -> Path | None:
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if base and (Path(base) / "include" / "cuda_fp16.h").is_file():
            return Path(base)
    for base in (Path(os.path.realpath(nvcc)).parent.parent, Path("/usr/local/cuda")):
        if (base / "include" / "cuda_fp16.h").is_file():
            return base
    return None


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-4000:]}")
    return result


# ------------------------------------------------------------------------------ ptxas -v
def parse_ptxas(text: str) -> list[dict[str, Any]]:
    """Per compiled entry function: name, arch, registers, spills, stack frame, static smem."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            current = {"function": m.group(1), "arch": m.group(2)}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and "stack_bytes" not in current:
            current.update(
                stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3))
            )
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["static_smem_bytes"] = int(s.group(1)) if s else 0
            out.append(current)
            current = None
    return out


# ------------------------------------------------------------------------------ SASS
INSTR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def parse_sass(text: str) -> dict[str, list[tuple[int, str]]]:
    """``{function: [(address, instruction text), ...]}`` from ``cuobjdump -sass`` output."""
    functions: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = m.group(1)
            functions[current] = []
            continue
        m = INSTR_RE.search(line)
        if m and current is not None:
            functions[current].append((int(m.group(1), 16), m.group(2).strip()))
    return functions


def opcode(text: str) -> str:
    """The opcode with its modifiers, without a guard predicate (``@P0``, ``@!UP1``)."""
    body = re.sub(r"^@!?U?P[T0-9]+\s+", "", text)
    return body.split()[0] if body else ""


def opcode_class(op: str) -> str:
    base = op.split(".")[0]
    if base == "MUFU":
        return "mufu"
    if base in ("FFMA", "FMUL", "FADD", "FSEL", "FMNMX", "FSETP", "HFMA2", "FCHK"):
        return "fp32"
    if base.startswith("SHFL"):
        return "shuffle"
    if base in ("LDS", "STS", "LDSM"):
        return "shared"
    if base in ("LDG", "STG", "LDGSTS", "LDC", "ULDC", "LDL", "STL"):
        return "global/const"
    if base in ("BRA", "BAR", "WARPSYNC", "NOP", "BSSY", "BSYNC", "EXIT", "PLOP3", "DEPBAR"):
        return "control"
    if base.startswith("U"):
        return "uniform"
    return "integer/move"


def backward_loops(instrs: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """``(first, last)`` instruction indices of every loop closed by a backward branch."""
    index = {addr: i for i, (addr, _) in enumerate(instrs)}
    loops = []
    for i, (addr, text) in enumerate(instrs):
        if not opcode(text).startswith("BRA"):
            continue
        m = re.search(r"0x([0-9a-f]+)\s*$", text)
        if m:
            target = int(m.group(1), 16)
            if target <= addr and target in index:
                loops.append((index[target], i))
    return loops


def slow_path_instructions(instrs: list[tuple[int, str]], first: int, last: int) -> set[int]:
    """Indices in [first, last] of the basic blocks that load or store global memory element by
    element (the strided / misaligned / sequence-tail paths, never taken on aligned contiguous
    data away from the end of the sequence)."""
    targets = set()
    for _, text in instrs[first : last + 1]:
        m = re.search(r"BRA.*0x([0-9a-f]+)\s*$", text)
        if m:
            targets.add(int(m.group(1), 16))
    blocks, current = [], []
    for i in range(first, last + 1):
        addr, text = instrs[i]
        if addr in targets and current:
            blocks.append(current)
            current = []
        current.append(i)
        if opcode(text).startswith(("BRA", "EXIT")):
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    scalar = re.compile(r"^(LDG|STG)\.E(\.U16|\.CONSTANT)?$|^(LDG|STG)\.E\.U16\.CONSTANT$")
    slow = set()
    for block in blocks:
        if any(scalar.match(opcode(instrs[i][1])) for i in block):
            slow.update(block)
    return slow


def state_loop(instrs: list[tuple[int, str]], items: int) -> dict[str, Any] | None:
    """The innermost loop with at least ``items`` MUFU.EX2: count, MUFU and opcode breakdown, plus
    the fast-path instructions of the enclosing stage loop and chunk loop outside it."""
    best = None
    loops = backward_loops(instrs)
    for first, last in loops:
        body = instrs[first : last + 1]
        ex2 = sum(1 for _, t in body if opcode(t).startswith("MUFU.EX2"))
        if ex2 >= items and (best is None or len(body) < best[1] - best[0] + 1):
            best = (first, last)
    if best is None:
        return None
    # enclosing loops, innermost first: the stage loop (fetch, commit, barrier), then the chunk loop
    outer = sorted(
        ((f, l) for f, l in loops if f <= best[0] and l >= best[1] and (f, l) != best),
        key=lambda fl: fl[1] - fl[0],
    )

    def fast_size(fl: tuple[int, int]) -> int:
        return fl[1] - fl[0] + 1 - len(slow_path_instructions(instrs, *fl))

    stage = fast_size(outer[0]) - (best[1] - best[0] + 1) if len(outer) >= 1 else None
    chunk = fast_size(outer[1]) - fast_size(outer[0]) if len(outer) >= 2 else None
    body = instrs[best[0] : best[1] + 1]
    ops = collections.Counter(opcode(t) for _, t in body)
    classes = collections.Counter(opcode_class(opcode(t)) for _, t in body)
    mufu = sum(v for k, v in ops.items() if k.startswith("MUFU"))
    branches = sum(v for k, v in ops.items() if k.startswith("BRA")) - 1  # minus the back edge
    return {
        "first_address": f"{body[0][0]:#x}",
        "instructions_per_slot": len(body),
        "mufu_per_slot": mufu,
        "instructions_per_element_state": round(len(body) / items, 3),
        "mufu_per_element_state": round(mufu / items, 4),
        "branches_besides_back_edge": branches,
        "spill_accesses": sum(v for k, v in ops.items() if k.split(".")[0] in ("LDL", "STL")),
        # fast path, static: per stage (fetch / commit / barrier / slot bookkeeping) and per chunk
        # (loads of u, delta, z, feed-through; softplus; gate; store), per thread
        "stage_instructions_outside_state_loop": stage,
        "chunk_instructions_outside_stage_loop": chunk,
        "chunk_instructions_per_element": None if chunk is None else round(chunk / items, 2),
        "by_class": dict(sorted(classes.items())),
        "top_opcodes": dict(ops.most_common(12)),
    }


def kernel_key(function: str) -> dict[str, Any] | None:
    m = KERNEL_RE.search(function)
    if not m:
        return None
    return {
        "dtype": DTYPE_OF_MANGLED.get(m.group("dtype"), m.group("dtype")),
        "P": int(m.group("P")),
        "mode": MODES[m.group("mode")],
    }


# ------------------------------------------------------------------------------ compile + analyse
def nvcc_command(nvcc: str, src_root: Path, dtype: str, archs: list[str], obj: Path) -> list[str]:
    """nvcc -Xptxas -v of one dtype's translation unit of the tree at ``src_root``."""
    src = src_root / "csrc" / "selective_scan" / f"selective_scan_fwd_{DTYPE_FILES[dtype]}.cu"
    arch_flags = [ARCH_FLAGS[a] for a in archs]
    return [
        nvcc,
        *NVCC_FLAGS,
        f"-I{src_root / 'csrc'}",
        *arch_flags,
        "-Xptxas",
        "-v",
        "-c",
        str(src),
        "-o",
        str(obj),
    ]


def compile_and_analyse(
    src_root: Path, dtype: str, archs: list[str], nvcc: str, cuobjdump: str, items: int, work: Path
) -> tuple[list[dict[str, Any]], float]:
    """Compile one dtype's translation unit of the tree at ``src_root``; per-kernel rows + seconds."""
    obj = work / f"selective_scan_fwd_{dtype}.o"
    cmd = nvcc_command(nvcc, src_root, dtype, archs, obj)
    start = time.perf_counter()
    result = run(cmd, cwd=src_root)
    seconds = time.perf_counter() - start
    ptxas = {(r["function"], r["arch"]): r for r in parse_ptxas(result.stderr + result.stdout)}
    rows = []
    for arch in archs:
        sass = run([cuobjdump, "-sass", "-arch", arch, str(obj)], cwd=src_root).stdout
        for function, instrs in parse_sass(sass).items():
            key = kernel_key(function)
            stats = ptxas.get((function, arch))
            if key is None or stats is None:
                continue
            rows.append(
                {
                    "arch": arch,
                    **key,
                    "registers": stats["registers"],
                    "spill_stores": stats["spill_stores"],
                    "spill_loads": stats["spill_loads"],
                    "stack_bytes": stats["stack_bytes"],
                    "static_smem_bytes": stats["static_smem_bytes"],
                    "sass_instructions": len(instrs),
                    "state_loop": state_loop(instrs, items),
                }
            )
    rows.sort(key=lambda r: (r["arch"], r["dtype"], r["mode"], r["P"]))
    return rows, seconds


def launch_geometry(
    cuda_home: Path, shapes: list[tuple[int, int, int]], n: int, sms: int, work: Path
) -> dict[str, Any]:
    """The dispatcher's geometry (csrc/tests/launch_geometry.cpp compiled for the host)."""
    exe = work / "launch_geometry"
    src = ROOT / "csrc" / "tests" / "launch_geometry.cpp"
    includes = [f"-I{ROOT / 'csrc'}", f"-I{cuda_home / 'include'}"]
    run(
        [
            os.environ.get("CXX", "c++"),
            "-std=c++17",
            "-O1",
            "-DSPARSESSM_EMULATE",
            *includes,
            str(src),
            "-o",
            str(exe),
        ],
        ROOT,
    )
    out = run([str(exe), str(sms), str(n), *(f"{b},{d},{l}" for b, d, l in shapes)], cwd=ROOT).stdout
    return json.loads(out)


# ------------------------------------------------------------------------------ ceilings
def ceilings(
    rows: list[dict[str, Any]],
    geometry: dict[str, Any],
    shapes: list[tuple[int, int, int]],
    n: int,
    dtype: str,
) -> list[dict[str, Any]]:
    """First-principles time bounds on an H100 per shape and mask, from the SASS counts (sm_90a)."""
    loops = {
        (r["P"], r["mode"]): r["state_loop"] for r in rows if r["arch"] == "sm_90a" and r["dtype"] == dtype
    }
    lanes = {(g["b"], g["d"], g["l"]): g["P"] for g in geometry["auto_lanes"]}
    tiles = {t["P"]: t for t in geometry["tiles"]}
    hz = H100["clock_ghz"] * 1e9
    masks = [("dense", "uniform", n), ("column50", "uniform", n // 2), ("2:4", "channel_excl", n // 2)]
    out = []
    for b, d, l in shapes:
        P = lanes[(b, d, l)]
        elements = b * d * l
        # u, delta, z read and out written once; B, C once per batch row (L2 serves the other blocks)
        dram = elements * 4 * ELEM_BYTES[dtype] + b * 2 * n * l * ELEM_BYTES[dtype]
        dram_ms = dram / (H100["dram_tbps"] * 1e12) * 1e3
        for mask, mode, k in masks:
            loop = loops.get((P, mode))
            if loop is None:
                continue
            mufu = k * loop["mufu_per_element_state"] + MUFU_PER_ELEMENT_OUTSIDE
            rows_staged = k if mode == "uniform" else n
            stage_rows = tiles[P]["stage_rows"]
            stages = -(-rows_staged // stage_rows)
            # state loop + per-stage work (per thread, spread over the chunk's steps) + per-chunk work
            instr = (
                k * loop["instructions_per_element_state"]
                + stages * (loop["stage_instructions_outside_state_loop"] or 0) / geometry["items"]
                + (loop["chunk_instructions_per_element"] or 0)
            )
            mufu_ms = elements * mufu / (H100["mufu_per_clk_sm"] * H100["sms"] * hz) * 1e3
            issue_ms = elements * instr / (H100["issue_per_clk_sm"] * H100["sms"] * hz) * 1e3
            bound = max(mufu_ms, issue_ms, dram_ms)
            out.append(
                {
                    "b": b,
                    "d": d,
                    "l": l,
                    "n": n,
                    "mask": mask,
                    "kept": k,
                    "P": P,
                    "mufu_per_element": round(mufu, 3),
                    "instructions_per_element": round(instr, 2),
                    "mufu_bound_ms": round(mufu_ms, 4),
                    "issue_bound_ms": round(issue_ms, 4),
                    "dram_bound_ms": round(dram_ms, 4),
                    "binding": ["mufu", "issue", "dram"][[mufu_ms, issue_ms, dram_ms].index(bound)],
                    "bound_ms": round(bound, 4),
                }
            )
    return out


def attach_shared_memory(rows: list[dict[str, Any]], geometry: dict[str, Any]) -> None:
    """Each kernel's dynamic shared memory per block for the masks it runs with n states (from
    the geometry): dense / column50 for the uniform mode, 2:4 for the per-channel ones."""
    for r in rows:
        mode = "uniform" if r["mode"] == "uniform" else "channel_excl"  # same layout for both channel modes
        r["dynamic_smem_bytes"] = {
            g["mask"]: g["bytes"]
            for g in geometry["smem_bytes"]
            if g["P"] == r["P"] and g["elem_bytes"] == ELEM_BYTES[r["dtype"]] and g["mode"] == mode
        }


def parse_shapes(texts: list[str]) -> list[tuple[int, int, int]]:
    shapes = []
    for text in texts:
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text)
        if not m:
            raise argparse.ArgumentTypeError(f"shape {text!r}: expected BxDxL, e.g. 1x1536x2048")
        shapes.append(tuple(int(v) for v in m.groups()))
    return shapes


def baseline_rows(rev: str, archs: list[str], nvcc: str, work: Path) -> dict[str, Any]:
    """Registers and spills of the bf16 scan kernels at git revision ``rev`` (compiled the same way)."""
    tree = work / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev, "csrc"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    start = time.perf_counter()
    result = run(nvcc_command(nvcc, tree, "bf16", archs, work / "baseline.o"), cwd=tree)
    seconds = time.perf_counter() - start
    kernels = [
        {k: s[k] for k in ("function", "arch", "registers", "spill_stores", "spill_loads")}
        for s in parse_ptxas(result.stderr + result.stdout)
        if "selective_scan_fwd_kernel" in s["function"]
    ]
    return {"revision": rev, "dtype": "bf16", "compile_seconds": round(seconds, 1), "kernels": kernels}


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dtypes", nargs="+", default=["bf16"], choices=sorted(DTYPE_FILES))
    parser.add_argument("--archs", nargs="+", default=["sm_80", "sm_90a"], choices=sorted(ARCH_FLAGS))
    parser.add_argument(
        "--shapes", nargs="+", default=DEFAULT_SHAPES, help="BxDxL shapes of the ceiling model"
    )
    parser.add_argument("--n", type=int, default=16, help="d_state of the model (default 16)")
    parser.add_argument(
        "--baseline", metavar="REV", help="also report registers / spills of this git revision"
    )
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help=f"JSON output (default {common.display_path(DEFAULT_OUT)})"
    )
    args = parser.parse_args(argv)
    shapes = parse_shapes(args.shapes)

    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if nvcc is None:
        parser.error("nvcc not found (put it on PATH or set NVCC)")
    cuda_home = cuda_home_of(nvcc)
    if cuda_home is None:
        parser.error("CUDA headers (cuda_fp16.h) not found: set CUDA_HOME")
    tools = {"nvcc": nvcc}
    for name in ("cuobjdump",):
        found = find_tool(name, cuda_home)
        if found is None:
            parser.error(f"{name} not found (CUDA toolkit or the triton package)")
        tools[name] = found
    nvcc_version = run([nvcc, "--version"], cwd=ROOT).stdout.strip().splitlines()[-1]

    with tempfile.TemporaryDirectory(prefix="sparsessm_kernel_report.") as tmp:
        work = Path(tmp)
        geometry = launch_geometry(cuda_home, shapes, args.n, H100["sms"], work)
        items = geometry["items"]
        rows: list[dict[str, Any]] = []
        compile_seconds = {}
        for dtype in args.dtypes:
            common.log(f"[kernel_report] compiling {dtype} for {' '.join(args.archs)}")
            dtype_rows, seconds = compile_and_analyse(
                ROOT, dtype, args.archs, nvcc, tools["cuobjdump"], items, work
            )
            rows.extend(dtype_rows)
            compile_seconds[dtype] = round(seconds, 1)
        attach_shared_memory(rows, geometry)
        baseline = baseline_rows(args.baseline, args.archs, nvcc, work) if args.baseline else None

    report = {
        "benchmark": "kernel_report",
        "kind": "compile-time",
        "note": "Static analysis of the compiled kernels (ptxas -v, cuobjdump -sass) and a first-principles "
        "model; no kernel was run and no time here is a GPU measurement.",
        "date": common.utc_now_iso(),
        "nvcc": nvcc_version,
        "archs": args.archs,
        "dtypes": args.dtypes,
        "compile_seconds_per_dtype_file": compile_seconds,
        "geometry": geometry,
        "kernels": rows,
        "ceiling_model": {
            "device": H100,
            "mufu_per_element_outside_state_loop": MUFU_PER_ELEMENT_OUTSIDE,
            "note": "Per shape and mask, with the lanes P the launcher picks on an H100: bound = max of "
            "MUFU (kept states x MUFU per element-state + softplus and silu), issue (state loop + "
            "per-stage and per-chunk fast-path instructions, static SASS counts) and DRAM (u, delta, z, "
            "out once; B, C once per batch row). Latency, occupancy and the wave tail are not modelled: "
            "a real kernel reaches some fraction of the bound.",
            "rows": ceilings(rows, geometry, shapes, args.n, args.dtypes[0]),
        },
        "baseline": baseline,
        "run": common.run_provenance(argv, args.out),
    }
    common.write_json_atomic(args.out, report)

    table = [
        {
            "arch": r["arch"],
            "dtype": r["dtype"],
            "mode": r["mode"],
            "P": r["P"],
            "regs": r["registers"],
            "spill": r["spill_stores"] + r["spill_loads"],
            "loop": r["state_loop"]["instructions_per_slot"] if r["state_loop"] else None,
            "per_el_state": r["state_loop"]["instructions_per_element_state"] if r["state_loop"] else None,
            "mufu": r["state_loop"]["mufu_per_element_state"] if r["state_loop"] else None,
        }
        for r in rows
    ]
    print(
        common.format_table(
            table,
            [
                ("arch", "arch"),
                ("dtype", "dtype"),
                ("mode", "mode"),
                ("P", "P"),
                ("regs", "regs"),
                ("spill", "spill B"),
                ("loop", "loop instr"),
                ("per_el_state", "instr/(el,state)"),
                ("mufu", "MUFU/(el,state)"),
            ],
        )
    )
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    print(f"\n{len(rows)} kernels, {len(spills)} with spills; compile seconds per file: {compile_seconds}")
    print(f"wrote {common.display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
