"""The baselines and timers of ``bench_scan.py``: transformers' fallbacks, mamba_ssm, ``do_bench``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import _common as common
from .scan_problems import Shape


# --------------------------------------------------------------------------------- baselines
@dataclass
class Baselines:
    tf_scan: Callable[..., Any] | None = None
    tf_step: Callable[..., Any] | None = None
    tf_reason: str = ""
    mamba_scan: Callable[..., Any] | None = None
    mamba_step: Callable[..., Any] | None = None
    mamba_reason: str = ""


def load_baselines(enabled: bool) -> Baselines:
    """Find transformers' pure PyTorch fallbacks and mamba_ssm's kernels, with reasons when absent.

    transformers wraps its fallbacks so that they dispatch to mamba_ssm when that is installed;
    the wrapper is peeled off with :func:`inspect.unwrap`, so ``transformers-fallback`` always
    measures the PyTorch path (and prints no fallback notice).
    """
    base = Baselines()
    if not enabled:
        base.tf_reason = base.mamba_reason = "baselines disabled (--no-baselines)"
        return base
    try:
        from transformers.models.mamba import modeling_mamba
    except Exception as exc:
        base.tf_reason = f"transformers' Mamba model does not import: {type(exc).__name__}: {exc}"
    else:
        scan = getattr(modeling_mamba, "mamba_selective_scan", None)
        step = getattr(modeling_mamba, "mamba_selective_state_update", None)
        base.tf_scan = inspect.unwrap(scan) if scan is not None else None
        base.tf_step = inspect.unwrap(step) if step is not None else None
        if scan is None or step is None:
            base.tf_reason = (
                "this transformers version has no module-level mamba_selective_scan / "
                "mamba_selective_state_update fallback"
            )
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        base.mamba_scan = selective_scan_fn
    except Exception as exc:
        base.mamba_reason = f"mamba_ssm does not import: {type(exc).__name__}: {exc}"
    else:
        try:
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update

            base.mamba_step = selective_state_update
        except Exception as exc:
            base.mamba_reason = f"mamba_ssm's Triton selective_state_update does not import: {exc}"
    return base


def tf_scan_bytes(shape: Shape) -> int:
    """Peak extra memory of transformers' fallback scan: three float32 (b, d, l, n) tensors."""
    return 3 * shape.b * shape.d * shape.l * shape.n * 4


# ------------------------------------------------------------------------------------ timing
TIMERS = ("auto", "events", "do_bench", "graph")


def resolve_timer(choice: str, device: torch.device) -> str:
    """``auto``: ``do_bench`` on CUDA when triton imports, else CUDA events / ``perf_counter``."""
    if device.type != "cuda":
        if choice in ("do_bench", "graph"):
            raise SystemExit(f"--timer {choice}: needs a CUDA device")
        return "events"
    if choice == "auto":
        try:
            import triton.testing  # noqa: F401
        except Exception:
            return "events"
        return "do_bench"
    return choice


def time_do_bench(fn: Callable[[], Any]) -> common.TimingStats:
    """Time ``fn`` with ``triton.testing.do_bench`` (CUDA events per call, warm-up, L2 flushed)."""
    from triton.testing import do_bench

    try:
        samples = do_bench(fn, return_mode="all")
    except (TypeError, ValueError, AssertionError):  # a Triton without return_mode="all"
        median, low, q1, q3, high = do_bench(fn, quantiles=[0.5, 0.0, 0.25, 0.75, 1.0])
        return common.TimingStats(median, low, q3 - q1, median, high, 0, q1, q3)  # 0: count not reported
    return common.summarize(list(samples))
