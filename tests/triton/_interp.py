"""Speed-ups of Triton's CPU interpreter for the test suite (semantics unchanged).

The interpreter runs a kernel as NumPy code, paying Python overhead per operation. Two of its
generic paths dominate the run time of our kernels and are replaced here, only when the
interpreter is in use and only if its internals look as expected (otherwise nothing is patched
and the tests are just slower):

* ``tl.associative_scan`` with a user combine function calls the combine function once per
  **element**; combine functions are elementwise, so calling it once per position along the
  scanned axis, on whole slices, computes the same values (same order of operations per element).
* every call of a ``@triton.jit`` helper inside a kernel re-patches ``triton.language`` although
  the kernel launch already patched it; the patch is applied once per launch and module set.
"""

from __future__ import annotations

import inspect

import numpy as np


def _vectorised_generic_scan(self, input):
    datas = [arg.handle.data for arg in input]
    shape = datas[0].shape
    axis = self.axis

    def at(i: int) -> tuple:
        index = [slice(None)] * len(shape)
        index[axis] = i
        return tuple(index)

    outs = [np.empty(shape, dtype=x.dtype) for x in datas]
    acc = [x[at(0)].copy() for x in datas]
    for o, a in zip(outs, acc):
        o[at(0)] = a
    for i in range(1, shape[axis]):
        prev = tuple(self.to_tensor(a, arg.dtype) for a, arg in zip(acc, input))
        cur = tuple(self.to_tensor(x[at(i)], arg.dtype) for x, arg in zip(datas, input))
        ret = self.combine_fn.fn(*prev, *cur)
        ret = ret if isinstance(ret, tuple) else (ret,)
        acc = [np.reshape(r.handle.data, o[at(i)].shape).astype(o.dtype) for r, o in zip(ret, outs)]
        for o, a in zip(outs, acc):
            o[at(i)] = a
    return [self.to_tensor(o, arg.dtype) for o, arg in zip(outs, input)]


def speed_up_interpreter() -> bool:
    """Install both shims; return whether they were installed."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter as interp
    except Exception:
        return False
    needed = (
        hasattr(interp, "ScanOps")
        and hasattr(interp.ScanOps, "generic_scan")
        and hasattr(interp.ScanOps, "to_tensor")
        and hasattr(interp, "_patch_lang")
        and hasattr(interp, "GridExecutor")
    )
    if not needed or getattr(interp, "_ssk_sped_up", False):
        return False
    interp.ScanOps.generic_scan = _vectorised_generic_scan

    original_patch = interp._patch_lang
    original_call = interp.GridExecutor.__call__
    active: dict[str, set | None] = {"patched": None}

    class _NoRestore:
        def restore(self) -> None:
            return None

    def _patch_lang(fn):
        key = frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))
        patched = active["patched"]
        if patched is not None and key in patched:
            return _NoRestore()
        scope = original_patch(fn)
        if patched is not None:
            patched.add(key)
        return scope

    def _call(self, *args, **kwargs):
        active["patched"] = set()
        try:
            return original_call(self, *args, **kwargs)
        finally:
            active["patched"] = None

    interp._patch_lang = _patch_lang
    interp.GridExecutor.__call__ = _call
    interp._ssk_sped_up = True
    return True
