"""Build the host emulation of the CUDA backend as a CPU torch extension (tests only).

The kernels in ``csrc/selective_scan`` compile as plain C++ with ``SPARSESSM_EMULATE`` defined
(``csrc/emulation/cuda_emulation.h``); together with ``python/bindings.cpp`` they form a module with
the same ``selective_scan_fwd`` as ``sparsessm_kernels._C`` that takes CPU tensors. It needs a C++
compiler, ninja and the CUDA toolkit's headers (``cuda_fp16.h`` and friends), not a GPU.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "emulated_ext.cpp"


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include directory (from CUDA_HOME / CUDA_PATH or nvcc), or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
        # /usr/local/bin/nvcc may be a wrapper script: also try the usual toolkit location.
        candidates.append("/usr/local/cuda")
    for base in candidates:
        if base and (Path(base) / "include" / "cuda_fp16.h").is_file():
            return Path(base) / "include"
    return None


def missing_requirements() -> str | None:
    """Why the emulated extension cannot be built here, or None."""
    if cuda_include_dir() is None:
        return "no CUDA toolkit headers (cuda_fp16.h) found"
    if shutil.which("ninja") is None:
        return "ninja is not installed"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler"
    return None


@functools.cache
def load_emulated_extension():
    """Compile (cached per process, and by torch in the build directory) and import the module."""
    from torch.utils.cpp_extension import load

    build_dir = Path(tempfile.gettempdir()) / "sparsessm_cuda_emulation"
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name="sparsessm_cuda_emulated",
        sources=[str(SOURCE)],
        extra_cflags=[
            "-O2",
            "-fno-strict-aliasing",
            "-Wno-unknown-pragmas",
            "-pthread",
            "-DSPARSESSM_CUDA_ARCHS_TOKEN=emulated",
        ],
        extra_ldflags=["-pthread"],
        extra_include_paths=[str(ROOT / "csrc"), str(cuda_include_dir())],
        build_directory=str(build_dir),
        verbose=False,
    )


CPP_TEST = Path(__file__).resolve().parent / "emulated_test.cpp"


def build_emulated_cpp_test(output: Path) -> list[str]:
    """Compile the standalone C++ test (csrc/tests) against the emulation; returns the command."""
    cxx = os.environ.get("CXX", "c++")
    command = [
        cxx,
        "-std=c++17",
        "-O2",
        "-pthread",
        "-fno-strict-aliasing",
        "-Wno-unknown-pragmas",
        f"-I{ROOT / 'csrc'}",
        f"-I{cuda_include_dir()}",
        str(CPP_TEST),
        "-o",
        str(output),
    ]
    import subprocess

    subprocess.run(command, check=True, capture_output=True, text=True)
    return command
