"""Build script.

Pure Python by default: ``pip install -e .`` needs no compiler and no CUDA toolkit.
The compiled CUDA extension (``sparsessm_kernels._C``) is opt-in through
``SPARSESSM_BUILD_CUDA=1`` and is added by the CUDA backend; until then this file
only declares the pure-Python package (metadata lives in pyproject.toml).
"""

import os

from setuptools import setup

HAS_CUDA_SOURCES = os.path.isdir(os.path.join("csrc", "selective_scan"))
if os.environ.get("SPARSESSM_BUILD_CUDA", "0") == "1" and not HAS_CUDA_SOURCES:
    raise SystemExit(
        "SPARSESSM_BUILD_CUDA=1 was set, but this source tree has no CUDA kernels under csrc/ yet; "
        "unset it to install the pure-Python package."
    )

setup()
