"""How the compiled extension is named and built: read by ``setup.py`` (by path, before anything
is installed) and by the loader in this package. No imports, so ``setup.py`` can run it alone."""

EXTENSION = "sparsessm_kernels._C"
BUILD_COMMAND = "SPARSESSM_BUILD_CUDA=1 pip install -e . --no-build-isolation"
