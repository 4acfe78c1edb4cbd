"""Curated, named selective-scan cases and dtype-keyed tolerances shared by the op tests.

Every backend is tested on these cases against ``selective_scan_ref`` run in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# bf16 keeps 8 significant bits. Every backend computes in fp32 and converts its output to bf16
# once: rounding to nearest even (PyTorch, the CUDA kernels, compiled Triton) is off by at most
# 2^-8 relative, truncation toward zero by up to 2^-7. Triton's CPU interpreter truncates (its
# NumPy fp32 -> bf16 conversion drops the low mantissa bits), so the Triton tests widen the bf16
# tolerance to BF16_TRUNCATE exactly when the kernels run interpreted (tests/backends.py);
# compiled on a GPU they are held to the round-to-nearest bound like everything else.
BF16_ROUND_TO_NEAREST = 2.0**-8
BF16_TRUNCATE = 2.0**-7
_FP32_MATH = (1e-4, 1e-4)  # (rtol, atol) of the fp32 math itself, before the output conversion


def bf16_tolerance(truncating: bool) -> tuple[float, float]:
    """``(rtol, atol)`` of a bf16 output: the conversion bound plus the fp32 math's tolerance."""
    bound = BF16_TRUNCATE if truncating else BF16_ROUND_TO_NEAREST
    return bound + _FP32_MATH[0], _FP32_MATH[1]


# (rtol, atol) for comparing a backend's output against the float64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: _FP32_MATH,
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: bf16_tolerance(truncating=False),
}


@dataclass(frozen=True)
class ScanCase:
    name: str
    batch: int = 2
    d: int = 24
    n: int = 16
    seqlen: int = 33
    groups: int = 0  # 0: B/C (b, n, l); g >= 1: grouped (b, g, n, l)
    dtype: torch.dtype = torch.float32
    mask: str = "none"  # none | column | unstructured | unstructured_sparse | 2:4 | empty_channel
    #                      | all_pruned_column
    with_D: bool = True
    with_z: bool = True
    with_bias: bool = True
    softplus: bool = True
    chunk: int | None = None  # SPARSESSM_TORCH_CHUNK override
    fixed: str = ""  # time-invariant (d, n) B / C (mamba_ssm's is_variable_B=False): "", "B", "C", "BC"
    extra: dict = field(default_factory=dict)


CASES = [
    ScanCase("dense_basic"),
    ScanCase("l1", seqlen=1),
    ScanCase("l_crosses_chunk", seqlen=17, chunk=8),
    ScanCase("l_exact_chunks", seqlen=16, chunk=8),
    ScanCase("d_odd", d=37, n=5, seqlen=20),
    ScanCase("d_not_block_multiple", d=300, n=4, seqlen=9),
    ScanCase("n_1", n=1, seqlen=7),
    ScanCase("n_256", d=4, n=256, seqlen=5, batch=1),
    ScanCase("grouped_bc", groups=3, d=24),
    ScanCase("no_optionals", with_D=False, with_z=False, with_bias=False, softplus=False),
    ScanCase("column_mask", mask="column"),
    ScanCase("column_mask_chunks", mask="column", seqlen=41, chunk=16),
    ScanCase("unstructured_mask_masked_dense_path", mask="unstructured"),
    ScanCase("unstructured_sparse_gather_path", mask="unstructured_sparse", seqlen=21, chunk=8),
    ScanCase("unstructured_sparse_grouped", mask="unstructured_sparse", groups=3),
    ScanCase("nm_2_4_mask", mask="2:4", seqlen=40, chunk=16),
    ScanCase("nm_2_4_grouped", mask="2:4", groups=2),
    ScanCase("channel_with_no_state", mask="empty_channel"),
    ScanCase("column_all_pruned", mask="all_pruned_column"),
    ScanCase("fp16", dtype=torch.float16, mask="2:4"),
    ScanCase("bf16", dtype=torch.bfloat16, mask="column"),
    ScanCase("fp64_unstructured", dtype=torch.float64, mask="unstructured"),
    # time-invariant (d, n) B and / or C (S4-style), each with the other input-dependent or not
    ScanCase("fixed_B", fixed="B"),
    ScanCase("fixed_C", fixed="C", seqlen=17, chunk=8),
    ScanCase("fixed_BC", fixed="BC"),
    ScanCase("fixed_B_odd", fixed="B", d=37, n=5, seqlen=20),
    ScanCase("fixed_C_grouped_B", fixed="C", groups=3),
    ScanCase("fixed_B_column_mask", fixed="B", mask="column"),
    ScanCase("fixed_C_2_4", fixed="C", mask="2:4", seqlen=40, chunk=16),
    ScanCase("fixed_BC_unstructured_sparse", fixed="BC", mask="unstructured_sparse", seqlen=21, chunk=8),
    ScanCase("fixed_B_unstructured_masked_dense", fixed="B", mask="unstructured"),
    ScanCase("fixed_BC_empty_channel", fixed="BC", mask="empty_channel"),
    ScanCase("fixed_C_all_pruned_column", fixed="C", mask="all_pruned_column"),
    ScanCase("fixed_B_no_optionals", fixed="B", with_D=False, with_z=False, with_bias=False, softplus=False),
    ScanCase("fixed_BC_bf16", fixed="BC", dtype=torch.bfloat16, mask="column"),
    ScanCase("fixed_C_fp64", fixed="C", dtype=torch.float64, mask="unstructured_sparse"),
]


def make_mask(kind: str, d: int, n: int, gen: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "column":
        scores = torch.rand(n, generator=gen)
        mask = scores >= scores.median()
        mask[0] = True
        return mask
    if kind == "all_pruned_column":
        return torch.zeros(n, dtype=torch.bool)
    if kind == "unstructured_sparse":  # few kept states: k_max well below the masked-dense cut-off
        mask = torch.rand(d, n, generator=gen) > 0.8
        mask[0] = False
        return mask
    if kind in ("unstructured", "empty_channel"):
        mask = torch.rand(d, n, generator=gen) > 0.5
        if kind == "empty_channel":
            mask[1] = False
            mask[2] = True
        return mask
    if kind == "2:4":
        assert n % 4 == 0
        scores = torch.rand(d, n // 4, 4, generator=gen)
        top = scores.topk(2, dim=-1).indices
        return torch.zeros(d, n // 4, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(d, n)
    raise ValueError(kind)


def make_inputs(case: ScanCase, seed: int = 0, device: str = "cpu") -> dict:
    """Random inputs for ``case`` with realistic ranges (A < 0, delta ~ softplus range)."""
    gen = torch.Generator().manual_seed(seed)
    b, d, n, l = case.batch, case.d, case.n, case.seqlen

    def randn(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale + shift

    bc_shape = (b, case.groups, n, l) if case.groups else (b, n, l)
    dt_ = case.dtype
    weight_dtype = torch.float64 if dt_ == torch.float64 else torch.float32

    def bc(name: str) -> torch.Tensor:
        # a time-invariant B / C is a weight, float32 like A (as mamba_ssm requires); float64 cases
        # keep float64
        return randn(d, n).to(weight_dtype) if name in case.fixed else randn(*bc_shape).to(dt_)

    inputs = {
        "u": randn(b, d, l).to(dt_),
        "delta": (
            randn(b, d, l, scale=0.5, shift=-1.0)
            if case.softplus
            else torch.rand(b, d, l, generator=gen) * 0.5 + 0.01
        ).to(dt_),
        "A": -torch.exp(randn(d, n, scale=0.5)).to(weight_dtype),
        "B": bc("B"),
        "C": bc("C"),
        "D": randn(d).to(weight_dtype) if case.with_D else None,
        "z": randn(b, d, l).to(dt_) if case.with_z else None,
        "delta_bias": randn(d, scale=0.1).to(weight_dtype) if case.with_bias else None,
        "delta_softplus": case.softplus,
    }
    mask = make_mask(case.mask, d, n, gen)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}, (
        None if mask is None else mask.to(device)
    )


def to_float64(inputs: dict) -> dict:
    return {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
    what: str,
    tolerances: dict[torch.dtype, tuple[float, float]] = TOLERANCES,
) -> None:
    rtol, atol = tolerances[dtype]
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}"
    )


SCAN_TENSORS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def backend_args(
    inputs: dict,
    layout,
    pruned_states: str,
    backend: str,
    return_last_state: bool = True,
    time_segments: int = 0,
):
    """``(plan, ScanInputs)`` for calling one backend directly, as the public op would."""
    from sparsessm_kernels.ops.checks import math_dtype
    from sparsessm_kernels.ops.plan import ScanInputs, build_plan

    args = ScanInputs(*(inputs.get(k) for k in SCAN_TENSORS))
    tables = (None, None, None) if layout is None else (layout.mask, layout.kept_idx, layout.kept_count)
    plan = build_plan(
        backend,
        args.A.shape[1],
        pruned_states,
        inputs.get("delta_softplus", False),
        math_dtype(*args),
        *tables,
        return_last_state=return_last_state,
        time_segments=time_segments,
    )
    return plan, args
