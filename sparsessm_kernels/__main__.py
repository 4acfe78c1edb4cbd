"""``python -m sparsessm_kernels``: same as the ``sparsessm`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
