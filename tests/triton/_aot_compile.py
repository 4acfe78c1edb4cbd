"""Compile the Triton kernels for an sm_90 GPU on a machine without one (ahead of time).

Run by ``test_kernels_compile_for_the_gpu`` in a subprocess without ``TRITON_INTERPRET`` (the
interpreter replaces ``triton.jit``). The interpreter tests check the kernels' results; this
checks that Triton's real compiler accepts them (typing, layouts, loop-carried values) down to
a cubin, for the main specialisations. Prints ``OK name regs=..`` / ``FAIL name: error`` lines, or
``SKIP reason`` when this Triton has no usable ahead-of-time API or NVIDIA backend.
"""

from __future__ import annotations

import sys


def _signature(fn, pointers: dict[str, str], constexprs: dict[str, object]):
    signature, values = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            values[(i,)] = constexprs[name]
        else:
            signature[name] = pointers.get(name, "i32")
    return signature, values


def main() -> int:
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from sparsessm_kernels.ops.triton import calibration, selective_scan, state_update

        target = GPUTarget("cuda", 90, 32)
        triton.compile(
            ASTSource(fn=state_update._state_update_kernel, **_probe_args(state_update, tl)),
            target=target,
        )
    except Exception as exc:  # no AOT API in this Triton version, or no NVIDIA backend
        print(f"SKIP {type(exc).__name__}: {exc}")
        return 0

    bf16 = {"u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "x_ptr"}
    ints = {"kidx_ptr", "kcnt_ptr", "sbi_ptr"}
    u8 = {"colmask_ptr", "mask_ptr"}

    def pointers(fn) -> dict[str, str]:
        kinds = {}
        for name in fn.arg_names:
            if name.endswith("_ptr"):
                kinds[name] = (
                    "*bf16" if name in bf16 else "*i32" if name in ints else "*u8" if name in u8 else "*fp32"
                )
        return kinds

    scan_flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_HIN=True, RETURN_LAST=True)
    variants = []
    for mask_kind, ft_mode, row in ((0, 0, True), (1, 1, True), (2, 2, False), (1, 1, False)):
        variants.append(
            (
                f"scan mask_kind={mask_kind} ft_mode={ft_mode} row={row}",
                selective_scan._scan_kernel,
                dict(
                    MASK_KIND=mask_kind,
                    FT_MODE=ft_mode,
                    ROW_B=row,
                    ROW_C=row,
                    UNI_B=row,
                    UNI_C=row,
                    **scan_flags,
                ),
            )
        )
        variants.append(
            (
                f"segment_state mask_kind={mask_kind}",
                selective_scan._segment_state_kernel,
                dict(MASK_KIND=mask_kind, ROW_B=row, HAS_BIAS=True, SOFTPLUS=True),
            )
        )
    # time-invariant (d, n) B / C: float32 weights read through a grouped view next to bf16 u
    fixed_bc = {"B_ptr": "*fp32", "C_ptr": "*fp32"}
    variants.append(
        (
            "scan time-invariant B/C mask_kind=2 ft_mode=2",
            selective_scan._scan_kernel,
            dict(MASK_KIND=2, FT_MODE=2, ROW_B=False, ROW_C=False, UNI_B=False, UNI_C=False, **scan_flags),
            fixed_bc,
        )
    )
    variants.append(
        (
            "segment_state time-invariant B mask_kind=1",
            selective_scan._segment_state_kernel,
            dict(MASK_KIND=1, ROW_B=False, HAS_BIAS=True, SOFTPLUS=True),
            fixed_bc,
        )
    )
    variants.append(("segment_carry", selective_scan._segment_carry_kernel, dict(MASK_KIND=2, BLOCK=256)))
    for mode, mask_kind in ((0, 0), (1, 1), (1, 2), (2, 2)):
        variants.append(
            (
                f"state_update mode={mode} mask_kind={mask_kind}",
                state_update._state_update_kernel,
                dict(MODE=mode, MASK_KIND=mask_kind, ZERO_TRANSITION=True, HAS_D=True, HAS_Z=True,
                     HAS_BIAS=True, SOFTPLUS=True, HAS_SBI=True, BLOCK_D=64, KB=8, NB=16),
            )
        )  # fmt: skip
    for per_step in (False, True):
        variants.append(
            (
                f"saliency per_step={per_step}",
                calibration._saliency_kernel,
                dict(PER_STEP=per_step, HAS_BIAS=True, SOFTPLUS=True, BLOCK_B=8, BLOCK_D=16, NB=16),
            )
        )

    failed = 0
    for name, fn, flags, *pointer_types in variants:
        flags = {"ACC": tl.float32, **flags}
        if "T" in fn.arg_names:
            flags.update(BLOCK_D=4, T=64, KB=16)
        kinds = pointers(fn)
        for overrides in pointer_types:
            kinds.update({k: v for k, v in overrides.items() if k in kinds})
        signature, values = _signature(fn, kinds, flags)
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=values), target=target)
            ok = "cubin" in kernel.asm
            print(f"{'OK' if ok else 'FAIL'} {name}" + ("" if ok else ": no cubin"))
            failed += not ok
        except Exception as exc:
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[-2000:]}")
    return 1 if failed else 0


def _probe_args(state_update, tl) -> dict:
    fn = state_update._state_update_kernel
    flags = dict(MODE=0, MASK_KIND=0, ZERO_TRANSITION=True, HAS_D=False, HAS_Z=False, HAS_BIAS=False,
                 SOFTPLUS=False, HAS_SBI=False, BLOCK_D=16, KB=8, NB=1, ACC=tl.float32)  # fmt: skip
    ptrs = {name: "*fp32" for name in fn.arg_names if name.endswith("_ptr")}
    ptrs.update(kidx_ptr="*i32", mask_ptr="*u8", sbi_ptr="*i32")
    signature, values = _signature(fn, ptrs, flags)
    return {"signature": signature, "constexprs": values}


if __name__ == "__main__":
    sys.exit(main())
