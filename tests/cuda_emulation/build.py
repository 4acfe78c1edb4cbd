"""Build the host emulation of the CUDA backend (tests only).

The kernels in ``csrc/selective_scan`` compile as plain C++ with ``SPARSESSM_EMULATE`` defined
(``csrc/emulation/cuda_emulation.h``); together with ``python/bindings.cpp`` they form a module with
the same ``selective_scan_fwd`` as ``sparsessm_kernels._C`` that takes CPU tensors (it needs a C++
compiler, ninja and the CUDA toolkit's headers -- ``cuda_fp16.h`` and friends --, not a GPU).
The standalone C++ test of ``csrc/tests`` (with its kernel sweep) and the test of the emulation's
own checkers build the same way without torch or ninja.
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


def missing_cpp_requirements() -> str | None:
    """Why the standalone C++ programs (the emulated kernel test, the detector test) cannot be
    built here, or None: they need a C++ compiler and the CUDA toolkit's headers."""
    if cuda_include_dir() is None:
        return "no CUDA toolkit headers (cuda_fp16.h) found"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler"
    return None


def missing_requirements() -> str | None:
    """Why the emulated extension cannot be built here, or None."""
    missing = missing_cpp_requirements()
    if missing is None and shutil.which("ninja") is None:
        return "ninja is not installed"
    return missing


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
DETECTORS_TEST = Path(__file__).resolve().parent / "detectors_test.cpp"


def _compile_cpp(source: Path, output: Path, extra: list[str]) -> list[str]:
    """Compile one emulation program (the kernels' sources included) with the host compiler."""
    import subprocess

    cxx = os.environ.get("CXX", "c++")
    command = [
        cxx,
        "-std=c++17",
        "-pthread",
        "-fno-strict-aliasing",
        "-Wno-unknown-pragmas",
        *extra,
        f"-I{ROOT / 'csrc'}",
        f"-I{cuda_include_dir()}",
        str(source),
        "-o",
        str(output),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return command


def build_emulated_cpp_test(output: Path) -> list[str]:
    """Compile the standalone C++ test (csrc/tests) against the emulation; returns the command.

    -O1: the kernels of every dtype, lanes count and mode compile in about half the time of -O2
    and run about as fast under the emulation."""
    return _compile_cpp(CPP_TEST, output, ["-O1"])


@functools.cache
def emulated_cpp_test() -> Path:
    """The emulated standalone test, built once per process (in a temporary directory)."""
    output = Path(tempfile.mkdtemp(prefix="sparsessm_emulated_test.")) / "emulated_test"
    build_emulated_cpp_test(output)
    return output


def build_detectors_test(output: Path, ucontext: bool = False) -> list[str]:
    """Compile the emulation's checker test (with the ucontext fiber switch when ``ucontext``)."""
    return _compile_cpp(DETECTORS_TEST, output, ["-O1", *(["-DSPARSESSM_EMU_UCONTEXT"] if ucontext else [])])
