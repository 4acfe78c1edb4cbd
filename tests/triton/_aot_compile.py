"""Compile the calibration kernel for an sm_90 GPU on a machine without one (ahead of time).

Run by ``test_triton_compile.py`` in a subprocess without ``TRITON_INTERPRET`` (the interpreter
replaces ``triton.jit``), next to ``benchmarks/triton_kernel_report.py``, which compiles the
launches of the prefill scan and the decode step. Prints ``SKIP reason`` when this Triton has no
usable ahead-of-time API or NVIDIA backend, else one ``OK name`` / ``FAIL name: error`` line per
variant.
"""

from __future__ import annotations

import sys


def _calibration_variants(tl):
    """The calibration kernel (its module has no launch plan): compiled from a signature."""
    from sparsessm_kernels.ops.saliency import triton_backend as calibration

    fn = calibration._saliency_kernel
    for per_step in (False, True):
        constants = dict(PER_STEP=per_step, HAS_BIAS=True, SOFTPLUS=True, BLOCK_B=8, BLOCK_D=16, NB=16)
        constants["ACC"] = tl.float32
        signature, values = {}, {}
        for i, name in enumerate(fn.arg_names):
            if name in constants:
                signature[name] = "constexpr"
                values[(i,)] = constants[name]
            elif name.endswith("_ptr"):
                signature[name] = "*bf16" if name in ("u_ptr", "dt_ptr", "B_ptr") else "*fp32"
            else:
                signature[name] = "i32"
        yield f"saliency per_step={per_step}", fn, signature, values


def main() -> int:
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from sparsessm_kernels.ops.triton import aot

        launches = aot.state_update_call()
        aot.compile_launch(launches[0])
    except Exception as exc:  # no AOT API in this Triton version, or no NVIDIA backend
        print(f"SKIP {type(exc).__name__}: {exc}")
        return 0

    failures: list[str] = []
    target = GPUTarget("cuda", 90, 32)
    for name, fn, signature, values in _calibration_variants(tl):
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=values), target=target)
            ok = "cubin" in kernel.asm
            print(f"{'OK' if ok else 'FAIL'} {name}" + ("" if ok else ": no cubin"))
            failures += [] if ok else [name]
        except Exception as exc:
            failures.append(name)
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[-2000:]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
