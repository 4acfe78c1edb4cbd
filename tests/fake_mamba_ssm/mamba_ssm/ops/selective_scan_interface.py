"""Stand-in for mamba_ssm's scan entry point: sparsessm_kernels' float reference."""

from sparsessm_kernels.ops import selective_scan_ref as selective_scan_fn

__all__ = ["selective_scan_fn"]
