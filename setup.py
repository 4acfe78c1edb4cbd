"""Build script.

Pure Python by default: ``pip install -e .`` needs no compiler, no CUDA toolkit and no torch at
build time. The compiled CUDA extension ``sparsessm_kernels._C`` (the ``"cuda"`` backend: kernels in
``csrc/selective_scan``, binding in ``python/bindings.cpp``) is opt-in::

    SPARSESSM_BUILD_CUDA=1 pip install -e . --no-build-isolation

(``--no-build-isolation`` so that the build sees the installed torch.) It compiles with
``torch.utils.cpp_extension`` (``CUDAExtension`` + ``BuildExtension``, ninja) for the architectures
in ``SPARSESSM_CUDA_ARCHS`` (default ``8.0;9.0``; ``9.0a`` style and comma lists accepted), with
``MAX_JOBS`` sized from free memory unless set. Metadata lives in pyproject.toml; docs/cuda.md has
the details. The helpers below are importable (``runpy.run_path("setup.py", run_name="...")``)
without running ``setup()``.
"""

from __future__ import annotations

import glob
import os
import re
import runpy
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
_BUILD = runpy.run_path(os.path.join(ROOT, "sparsessm_kernels", "ops", "cuda", "build.py"))
BUILD_COMMAND = _BUILD["BUILD_COMMAND"]
DEFAULT_CUDA_ARCHS = "8.0;9.0"
GB_PER_NVCC_JOB = 2.5
EXTENSION_NAME = _BUILD["EXTENSION"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def build_cuda_requested(env: dict[str, str]) -> bool:
    """Whether ``SPARSESSM_BUILD_CUDA`` asks for the CUDA extension (``1``; ``0`` or unset: no)."""
    value = env.get("SPARSESSM_BUILD_CUDA", "0").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SystemExit(f"SPARSESSM_BUILD_CUDA: expected 1 (build the CUDA extension) or 0, got {value!r}")


def parse_cuda_archs(text: str) -> list[tuple[str, bool]]:
    """``"8.0;9.0"``, ``"9.0a"``, ``"80,90a"``, ``"sm_90a"``, ``"8.0+PTX"`` -> ``[("80", False), ...]``.

    Entries are separated by ``;``, ``,`` or spaces. Each is ``major.minor`` or ``majorminor`` with
    an optional arch-specific suffix (``a``, ``f``) and an optional ``+PTX`` (also embed PTX for
    newer GPUs). Returns ``(compute capability without the dot, with_ptx)`` pairs, in order,
    without duplicates.
    """
    archs: list[tuple[str, bool]] = []
    for raw in re.split(r"[;,\s]+", text.strip()):
        if not raw:
            continue
        entry = raw.strip()
        ptx = entry.upper().endswith("+PTX")
        if ptx:
            entry = entry[: -len("+PTX")]
        entry = re.sub(r"^(sm|compute)_", "", entry.lower())
        match = re.fullmatch(r"(\d+)\.(\d)([af]?)|(\d+)(\d)([af]?)", entry)
        if not match:
            raise SystemExit(
                f"SPARSESSM_CUDA_ARCHS: cannot parse {raw!r}; expected entries like 8.0, 9.0, 9.0a, 90a "
                f"or 8.0+PTX separated by ';' or ',' (got {text!r})"
            )
        major, minor, suffix = (match.group(1), match.group(2), match.group(3))
        if major is None:
            major, minor, suffix = match.group(4), match.group(5), match.group(6)
        arch = f"{int(major)}{minor}{suffix}"
        if int(major) < 8:
            raise SystemExit(
                f"SPARSESSM_CUDA_ARCHS: {raw!r} is older than sm_80; the kernels need compute "
                "capability 8.0 or newer (Ampere, Hopper, ...)"
            )
        if (arch, ptx) not in archs:
            archs.append((arch, ptx))
    if not archs:
        raise SystemExit(f"SPARSESSM_CUDA_ARCHS: no architecture given (got {text!r})")
    return archs


def nvcc_arch_flags(archs: list[tuple[str, bool]]) -> list[str]:
    """``-gencode`` flags: SASS for every arch, plus PTX where ``+PTX`` was asked for."""
    flags = []
    for arch, ptx in archs:
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    return flags


def archs_token(archs: list[tuple[str, bool]]) -> str:
    """A shell-safe identifier naming the archs (``sm_80_sm_90a``), baked into the extension."""
    return "_".join(f"sm_{arch}" + ("_ptx" if ptx else "") for arch, ptx in archs)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_max_jobs(available_bytes: int | None, cpus: int | None) -> int:
    """Parallel nvcc jobs: one per ~2.5 GB of free memory, at most one per CPU, at least 1."""
    cpus = max(1, cpus or 1)
    if available_bytes is None:
        return max(1, min(cpus, 4))
    return max(1, min(cpus, int(available_bytes / (GB_PER_NVCC_JOB * 1024**3))))


def cuda_sources(root: str = ROOT) -> list[str]:
    """Relative paths of the extension's sources: the binding and every kernel .cu."""
    kernels = sorted(glob.glob(os.path.join(root, "csrc", "selective_scan", "*.cu")))
    return [os.path.join("python", "bindings.cpp")] + [os.path.relpath(p, root) for p in kernels]


def cuda_extension_kwargs(env: dict[str, str]) -> dict:
    """``ext_modules`` and ``cmdclass`` for the CUDA build (imports torch; only when requested)."""
    if not os.path.isdir(os.path.join(ROOT, "csrc", "selective_scan")):
        raise SystemExit(
            "SPARSESSM_BUILD_CUDA=1 was set, but this source tree has no CUDA kernels under "
            "csrc/selective_scan; unset it to install the pure-Python package."
        )
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:
        raise SystemExit(
            f"SPARSESSM_BUILD_CUDA=1 needs torch at build time ({exc}). Install torch first, then run "
            f"{BUILD_COMMAND} (--no-build-isolation lets the build see the installed torch)."
        ) from exc
    if torch.version.cuda is None:
        raise SystemExit(
            f"SPARSESSM_BUILD_CUDA=1: the installed torch {torch.__version__} is a CPU-only build; the CUDA "
            "extension needs a CUDA build of torch (and the matching CUDA toolkit)."
        )
    if CUDA_HOME is None:
        raise SystemExit(
            "SPARSESSM_BUILD_CUDA=1: torch.utils.cpp_extension found no CUDA toolkit; set CUDA_HOME "
            "to the toolkit directory (the one holding bin/nvcc)."
        )
    archs = parse_cuda_archs(env.get("SPARSESSM_CUDA_ARCHS", DEFAULT_CUDA_ARCHS))
    if "MAX_JOBS" not in os.environ:
        os.environ["MAX_JOBS"] = str(default_max_jobs(available_memory_bytes(), os.cpu_count()))
    print(
        f"sparsessm_kernels: building {EXTENSION_NAME} for {', '.join('sm_' + a for a, _ in archs)} "
        f"with MAX_JOBS={os.environ['MAX_JOBS']}",
        file=sys.stderr,
    )
    token = f"-DSPARSESSM_CUDA_ARCHS_TOKEN={archs_token(archs)}"
    extension = CUDAExtension(
        name=EXTENSION_NAME,
        sources=cuda_sources(),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", token],
            "nvcc": ["-O3", "-lineinfo", token, *nvcc_arch_flags(archs)],
        },
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


def setup_kwargs(env: dict[str, str]) -> dict:
    """Keyword arguments of ``setup()``: empty (pure Python) unless the CUDA build is requested."""
    if not build_cuda_requested(env):
        return {}
    return cuda_extension_kwargs(env)


if __name__ == "__main__":
    setup(**setup_kwargs(dict(os.environ)))
