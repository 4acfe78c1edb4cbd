"""Compile-time report of the Triton kernels: registers, spills and shared memory on sm_90.

Run from the repository root (no GPU needed; ``TRITON_INTERPRET`` must not be set)::

    python benchmarks/triton_kernel_report.py     # writes results/triton_kernels_sm90_compile.json
    python benchmarks/triton_kernel_report.py --out /tmp/r.json --arch 90

Compiles, ahead of time, the launches of representative calls (every configuration the prefill
scan's table and rule pick, each mask kind and ``pruned_states`` mode, time-invariant and grouped
B / C, float16 / bfloat16 / float32 / float64 inputs, the decode step's modes and every row of its
configuration table ``step_config_table``; and, under
``ssd_launches``, the Mamba-2 (SSD) scan's four kernels for every row of its configuration table
``ssd_config_table`` and the SSD decode step's modes) with the argument
specialisation a real call gets (``sparsessm_kernels.ops.triton.aot``), and records per launch:
registers per thread, spills (local loads / stores in the SASS), stack, the shared memory Triton
allocates, SASS size (the longest loop body: for the scan, one chunk), barriers, and how many
programs of that kernel an sm_90 SM holds (registers, warps, shared memory). Nothing is run or
timed: **this is a compile-time report, not a measurement**. The JSON also carries the scan's
configuration table. ``benchmarks/README.md`` describes the fields; ``docs/triton.md`` how the
configurations were chosen from it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``_common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as common
else:
    from . import _common as common

DEFAULT_OUT = common.RESULTS_DIR / "triton_kernels_sm90_compile.json"


def build_report(arch: int) -> tuple[dict[str, Any], list[str]]:
    """The report as a JSON-ready dict, and the compile failures (``"call [kernel]: error"``)."""
    import triton

    from sparsessm_kernels.ops.selective_scan.triton_backend import CONFIG_TABLE, REFERENCE_SMS
    from sparsessm_kernels.ops.ssd.aot_calls import ssd_representative_calls
    from sparsessm_kernels.ops.ssd.triton_scan import SSD_CONFIG_TABLE
    from sparsessm_kernels.ops.state_update.triton_backend import STEP_CONFIG_TABLE
    from sparsessm_kernels.ops.triton import aot

    rows, failures = aot.compile_report(arch)
    ssd_rows, ssd_failures = aot.compile_report(arch, ssd_representative_calls())
    failures = failures + ssd_failures
    table = [
        {"d": d, "l": l, "k": k, "dtype": str(dtype).replace("torch.", ""), **vars(cfg)}
        for (d, l, k, dtype), cfg in CONFIG_TABLE.items()
    ]
    report = {
        "benchmark": "triton_kernels_compile",
        "kind": "compile-time report (ahead-of-time compile, no GPU; nothing measured)",
        "target": f"sm_{arch}",
        "date": common.utc_now_iso(),
        "versions": common.collect_versions({"triton": triton.__version__}),
        "reference_sms": REFERENCE_SMS,
        "occupancy_limits": aot.SM90,
        "config_table": table,
        "step_config_table": [
            {"max_rows": rows, "max_width": width, **cfg._asdict()} for rows, width, cfg in STEP_CONFIG_TABLE
        ],
        "launches": rows,
        "ssd_config_table": [
            {"shape_class": cls, "max_kept_width": width, **vars(cfg)} for cls, width, cfg in SSD_CONFIG_TABLE
        ],
        "ssd_launches": ssd_rows,
        "failures": failures,
    }
    return report, failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="result JSON (default: %(default)s)")
    parser.add_argument("--arch", type=int, default=90, help="NVIDIA compute capability, e.g. 90 (default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y"):
        parser.error("TRITON_INTERPRET is set: the interpreter replaces Triton's compiler; unset it")
    common.check_out_path(parser, args.out)
    report, failures = build_report(args.arch)
    columns = [
        ("call", "call"),
        ("kernel", "kernel"),
        ("registers", "regs"),
        ("spills", "spills"),
        ("shared", "shared B"),
        ("programs_per_sm", "programs/SM"),
        ("loop_instructions", "loop instr"),
    ]
    print(common.format_table(report["launches"] + report["ssd_launches"], columns))
    for failure in failures:
        print(f"FAIL {failure}")
    path = common.write_json_atomic(args.out, report)
    launches = report["launches"] + report["ssd_launches"]
    spilled = sum(row["spills"] for row in launches)
    common.log(f"{len(launches)} launches compiled, {spilled} spill, {len(failures)} failed: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
