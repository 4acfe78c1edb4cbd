"""Triton prefill scan internals: launch configurations, chunk carries, dispatch, the configuration table.

The op's named cases run on every backend in ``tests/ops/test_selective_scan.py``; here the
Triton kernels are swept over launch configurations (channels per program, chunk lengths) against
the float64 reference. On CPU the kernels run through Triton's interpreter (see conftest.py), so
the shapes are tiny; ``@pytest.mark.gpu`` cases add full Mamba-1 layer sizes on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout, selective_scan_ref
from sparsessm_kernels.ops.selective_scan.triton_backend import ScanConfig, selective_scan_triton
from tests.scan_cases import (
    BF16_ROUND_TO_NEAREST,
    BF16_TRUNCATE,
    ScanCase,
    assert_close,
    backend_args,
    make_inputs,
    to_float64,
)

from .conftest import DEVICE, INTERPRETED, TRITON_TOLERANCES


@dataclass(frozen=True)
class TritonCase:
    case: ScanCase
    block_d: int | None = None  # None: the configuration table's choice
    chunk: int | None = None
    pruned: tuple[str, ...] = ("zero_transition", "remove")

    @property
    def config(self) -> ScanConfig | None:
        if self.block_d is None and self.chunk is None:
            return None
        return ScanConfig(self.block_d or 4, self.chunk or 16, 4)


def _c(name: str, **kw) -> ScanCase:
    return ScanCase(name, **{"batch": 1, "d": 12, "n": 4, "seqlen": 20, **kw})


CASES = [
    # sequence lengths: 1, inside one chunk, exact chunks, crossing chunks (carried states)
    TritonCase(_c("l1", seqlen=1)),
    TritonCase(_c("l1_chunk16", seqlen=1), block_d=4, chunk=16),
    TritonCase(_c("l13_one_padded_chunk", seqlen=13, batch=2), block_d=4, chunk=16),
    TritonCase(_c("l64_exact_chunks", seqlen=64, batch=2), block_d=4, chunk=16),
    TritonCase(_c("l63_crosses_chunks", seqlen=63, batch=2), block_d=4, chunk=16),
    TritonCase(_c("l300_2_4", seqlen=300, d=6, mask="2:4"), block_d=2, chunk=64),
    TritonCase(_c("l300_column", seqlen=300, d=6, mask="column"), chunk=64),
    TritonCase(_c("l300_n16_dense_default_config", seqlen=300, n=16, d=8, batch=2)),
    TritonCase(_c("l300_unstructured_n16", seqlen=300, n=16, d=8, mask="unstructured"), block_d=4, chunk=32),
    # d not a multiple of the channel block; one channel per program
    TritonCase(_c("d37_block16", d=37, batch=2), block_d=16, chunk=16),
    TritonCase(_c("d5_block1", d=5, seqlen=40, mask="column", n=8), block_d=1, chunk=16),
    TritonCase(_c("d7_block2_2_4", d=7, seqlen=40, mask="2:4", n=8), block_d=2, chunk=16),
    # n in {4, 16, 32}
    TritonCase(_c("n32_unstructured", n=32, d=6, seqlen=9, mask="unstructured_sparse")),
    # masks
    TritonCase(_c("column", n=16, mask="column", batch=2), chunk=16),
    TritonCase(_c("nm_2_4", n=16, mask="2:4", batch=2), chunk=16),
    TritonCase(_c("unstructured", n=16, mask="unstructured"), chunk=16),
    TritonCase(_c("all_kept_column", n=8, mask="all_kept")),
    TritonCase(_c("channel_with_every_state_pruned", n=8, mask="empty_channel"), chunk=16),
    TritonCase(_c("column_all_pruned", n=8, mask="all_pruned_column")),
    TritonCase(_c("column_all_pruned_chunks", n=8, seqlen=40, mask="all_pruned_column"), chunk=16),
    # grouped B/C: group per channel block (rows shared) and groups inside a block (gathers)
    TritonCase(_c("grouped_uniform_blocks", d=16, groups=2, mask="column"), block_d=8),
    TritonCase(_c("grouped_inside_block", d=12, groups=3, mask="none"), block_d=8),
    TritonCase(_c("grouped_2_4", d=16, n=8, groups=4, mask="2:4"), block_d=4, chunk=16),
    TritonCase(
        _c("grouped_column_inside_block", d=12, n=8, groups=3, mask="column", seqlen=40), block_d=8, chunk=16
    ),
    # optional inputs
    TritonCase(_c("no_D_no_bias", with_D=False, with_bias=False, mask="column", n=8)),
    # dtypes (fp32 state and math)
    TritonCase(_c("fp16_2_4", dtype=torch.float16, mask="2:4", n=8), chunk=16),
    TritonCase(_c("bf16_column", dtype=torch.bfloat16, mask="column", n=8)),
    TritonCase(_c("bf16_dense", dtype=torch.bfloat16, n=8), pruned=("zero_transition",)),
    TritonCase(_c("fp64_unstructured", dtype=torch.float64, mask="unstructured", n=8)),
    TritonCase(_c("fp64_column_chunks", dtype=torch.float64, mask="column", n=8, seqlen=40), chunk=16),
    # time-invariant (d, n) B / C: a value per (channel, state), no batch or time stride
    TritonCase(_c("fixed_C_chunks", fixed="C", seqlen=63, n=8, mask="column"), chunk=16),
    TritonCase(_c("fixed_BC_2_4", fixed="BC", n=8, mask="2:4", batch=2)),
    TritonCase(_c("fixed_B_unstructured_chunks", fixed="B", n=8, mask="unstructured"), chunk=16),
    TritonCase(_c("fixed_C_grouped_B_odd", fixed="C", d=15, n=5, groups=3, mask="column"), block_d=4),
    TritonCase(_c("fixed_BC_block1_rows", fixed="BC", d=5, n=4, mask="column"), block_d=1),
    TritonCase(_c("fixed_BC_empty_channel", fixed="BC", d=6, n=4, mask="empty_channel")),
    TritonCase(_c("fixed_B_bf16", fixed="B", dtype=torch.bfloat16, n=8, mask="column")),
]


def _mask(case: ScanCase, inputs_mask: torch.Tensor | None) -> torch.Tensor | None:
    if case.mask == "all_kept":
        return torch.ones(case.n, dtype=torch.bool, device=DEVICE)
    return inputs_mask


def _inputs(case: ScanCase, seed: int = 0):
    base = replace(case, mask="none") if case.mask == "all_kept" else case
    inputs, mask = make_inputs(base, seed=seed, device=DEVICE)
    return inputs, _mask(case, mask)


def _check(case: ScanCase, out, state, inputs, mask, pruned_states, return_last_state=True) -> None:
    ref = selective_scan_ref(
        **to_float64(inputs), return_last_state=True, state_mask=mask, pruned_states=pruned_states
    )
    assert out.dtype == inputs["u"].dtype and out.shape == inputs["u"].shape
    assert_close(out, ref[0], case.dtype, f"{case.name} out", tolerances=TRITON_TOLERANCES)
    if return_last_state:
        state_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
        assert state.dtype == state_dtype and state.shape == ref[1].shape
        assert_close(state, ref[1], state_dtype, f"{case.name} last_state", tolerances=TRITON_TOLERANCES)


def _cases_with_modes():
    for tc in CASES:
        modes = tc.pruned if tc.case.mask not in ("none",) else ("zero_transition",)
        for ps in modes:
            yield pytest.param(tc, ps, id=f"{tc.case.name}-{ps}")


@pytest.mark.parametrize(("tc", "pruned_states"), list(_cases_with_modes()))
def test_scan_matches_reference(tc: TritonCase, pruned_states: str) -> None:
    inputs, mask = _inputs(tc.case)
    layout = None if mask is None else StateLayout(mask)
    if tc.config is None:  # the public op, the configuration table
        out, state = ssk.selective_scan(
            **inputs, return_last_state=True, state_mask=layout, pruned_states=pruned_states, backend="triton"
        )
    else:
        out, state = selective_scan_triton(
            *backend_args(inputs, layout, pruned_states, "triton"), config=tc.config
        )
    _check(tc.case, out, state, inputs, mask, pruned_states)


@pytest.mark.parametrize(("mask_kind", "block_d"), [("none", 4), ("column", 2), ("2:4", 4)])
def test_B_and_C_with_different_group_counts(mask_kind: str, block_d: int) -> None:
    """B in 2 groups of 6 channels, C in 3 of 4: the feed-through pre-pass works on the 6 groups of
    2 channels both share; with 4 channels per program the rows are gathered per channel."""
    case = _c("groups_2_3", d=12, n=8, seqlen=20, mask=mask_kind, batch=2)
    inputs, mask = _inputs(case)
    gen = torch.Generator().manual_seed(1)
    inputs["B"] = torch.randn(2, 2, 8, 20, generator=gen).to(DEVICE)
    inputs["C"] = torch.randn(2, 3, 8, 20, generator=gen).to(DEVICE)
    layout = None if mask is None else StateLayout(mask)
    for pruned_states in ("zero_transition", "remove"):
        out, state = selective_scan_triton(
            *backend_args(inputs, layout, pruned_states, "triton"), config=ScanConfig(block_d, 16, 4)
        )
        _check(case, out, state, inputs, mask, pruned_states)


def test_carried_chunks_equal_one_chunk() -> None:
    """The carry between chunks (the buffer written at a chunk's end, read at the next) changes
    nothing: chunks of 8 and 16 give what one chunk of 64 gives."""
    case = _c("chunks", n=8, mask="column", seqlen=40, batch=2)
    inputs, mask = _inputs(case)
    layout = StateLayout(mask)
    args = backend_args({**inputs, "delta_softplus": True}, layout, "zero_transition", "triton")
    one = selective_scan_triton(*args, config=ScanConfig(4, 64, 4))
    for chunk in (8, 16):
        many = selective_scan_triton(*args, config=ScanConfig(4, chunk, 4))
        torch.testing.assert_close(one[0], many[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(one[1], many[1], rtol=1e-5, atol=1e-5)


def test_bf16_conversion_is_what_the_tolerance_assumes() -> None:
    """TRITON_TOLERANCES widens bf16 only under the interpreter, which truncates fp32 -> bf16;
    compiled Triton rounds to nearest even. If a Triton release changes either, this says so."""
    import triton
    import triton.language as tl

    @triton.jit
    def to_bf16(x_ptr, y_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    # 1 + 2^-8 + 2^-12 lies just above the midpoint of two bf16 neighbours: nearest gives 1 + 2^-7
    x = torch.tensor([1.0 + 2**-8 + 2**-12, -(1.0 + 2**-8 + 2**-12)], device=DEVICE)
    y = torch.empty(2, dtype=torch.bfloat16, device=DEVICE)
    to_bf16[(1,)](x, y, N=2)
    expected = torch.tensor([1.0, -1.0]) if INTERPRETED else x.cpu().bfloat16().float()
    assert torch.equal(y.float().cpu(), expected)
    rtol, _ = TRITON_TOLERANCES[torch.bfloat16]
    assert rtol > (BF16_TRUNCATE if INTERPRETED else BF16_ROUND_TO_NEAREST)


def test_auto_backend_never_picks_triton_for_cpu_tensors() -> None:
    from sparsessm_kernels.ops.dispatch import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    if INTERPRETED:
        assert resolve_backend("triton", torch.device("cpu")) == "triton"


def test_auto_backend_picks_triton_on_gpu_without_the_cuda_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """A default install (no compiled extension) runs every op on Triton for CUDA tensors; with the
    extension built, the prefill scan goes to it except for float64, the other ops stay on Triton."""
    from sparsessm_kernels.ops import dispatch

    cuda = torch.device("cuda")
    if not dispatch.available_backends()["cuda"][0]:  # this machine, unmocked: Triton is usable here
        assert dispatch.resolve_backend("auto", cuda) == "triton"
    monkeypatch.setenv("SPARSESSM_BACKEND", "auto")
    monkeypatch.setattr(dispatch, "_triton_probe", lambda: (True, "triton kernels on CUDA", False))
    monkeypatch.setattr(dispatch, "_cuda_probe", lambda: (False, "the CUDA extension is not built"))
    for op in ("selective_scan", "selective_state_update", "state_saliency"):
        assert dispatch.resolve_backend("auto", cuda, op=op) == "triton"
    assert dispatch.resolve_backend("auto", cuda, float64=True) == "triton"
    monkeypatch.setattr(dispatch, "_cuda_probe", lambda: (True, "compiled CUDA kernels"))
    assert dispatch.resolve_backend("auto", cuda) == "cuda"
    assert dispatch.resolve_backend("auto", cuda, float64=True) == "triton"
    assert dispatch.resolve_backend("auto", cuda, op="selective_state_update") == "triton"


def test_opcheck_and_compile_on_triton() -> None:
    case = _c("opcheck", n=8, mask="2:4", seqlen=6, d=8, batch=2)
    inputs, mask = _inputs(case)
    layout = StateLayout(mask)
    args = (
        *(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
        True,
        True,
        layout.mask,
        layout.kept_idx,
        layout.kept_count,
        "zero_transition",
        "triton",
    )
    torch.library.opcheck(
        torch.ops.sparsessm.selective_scan.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )

    def layer(u, delta, A, B, C, D, z, delta_bias):
        return ssk.selective_scan(
            u, delta, A, B, C, D, z, delta_bias, True, True, state_mask=layout, backend="triton"
        )

    tensors = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out, last = compiled(*tensors)
    ref_out, ref_last = layer(*tensors)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(last, ref_last)


# ------------------------------------------------------------------------------------ GPU only
GPU_SHAPES = [(1, 1536, 16, 2048), (2, 2048, 16, 1024), (1, 4096, 16, 512)]


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", ["none", "column", "2:4", "unstructured"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_full_size_layers_on_gpu(shape: tuple[int, int, int, int], mask_kind: str) -> None:
    b, d, n, l = shape
    case = ScanCase(f"gpu_{mask_kind}", batch=b, d=d, n=n, seqlen=l, dtype=torch.bfloat16, mask=mask_kind)
    inputs, mask = make_inputs(case, device="cuda")
    out, state = ssk.selective_scan(**inputs, return_last_state=True, state_mask=mask, backend="triton")
    _check(case, out, state, inputs, mask, "zero_transition")


@pytest.mark.gpu
def test_cuda_graph_capture_replays_the_scan() -> None:
    case = ScanCase("graph", batch=1, d=256, n=16, seqlen=512, mask="2:4")
    inputs, mask = make_inputs(case, device="cuda")
    layout = StateLayout(mask)
    run = lambda: ssk.selective_scan(**inputs, state_mask=layout, backend="triton")  # noqa: E731
    expected = run()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expected)


# ------------------------------------------------------------------------------ configuration
def test_gpu_configuration_table_and_rule() -> None:
    from sparsessm_kernels.ops.selective_scan.triton_backend import CONFIG_TABLE, gpu_config

    bf16, f32, f64 = torch.bfloat16, torch.float32, torch.float64
    # the benchmark grid: the table, at batch 1 and 8 on 132 SMs
    for (d, l, k, dtype), entry in CONFIG_TABLE.items():
        for b in (1, 8):
            assert gpu_config(b, d, l, k, dtype, f32, 132) == entry
    assert gpu_config(1, 1536, 2048, 16, bf16, f32, 132) == ScanConfig(4, 256, 4)
    # the rule: 8 timesteps per thread for 16-bit inputs, 4 for float32, 1 for float64 math
    assert gpu_config(8, 1000, 4096, 16, bf16, f32, 132) == ScanConfig(4, 256, 4)
    assert gpu_config(8, 1000, 4096, 16, f32, f32, 132) == ScanConfig(4, 128, 4)
    assert gpu_config(8, 1000, 4096, 16, bf16, f64, 132) == ScanConfig(4, 32, 4)
    # short sequences: one chunk of the next power of 2 (at least 16)
    assert gpu_config(8, 1000, 100, 16, bf16, f32, 132).chunk == 128
    assert gpu_config(8, 1000, 3, 16, bf16, f32, 132).chunk == 16
    # few programs (small batch and width) or odd B / C groups: 2 channels per program
    assert gpu_config(1, 256, 2048, 16, bf16, f32, 132) == ScanConfig(2, 256, 2)
    assert gpu_config(8, 1536, 2048, 16, bf16, f32, 132, group_size=6) == ScanConfig(2, 256, 2)
    assert gpu_config(8, 1536, 2048, 16, bf16, f32, 132, group_size=768) == ScanConfig(4, 256, 4)
    assert gpu_config(1, 1536, 2048, 16, bf16, f32, 132, group_size=6) == ScanConfig(2, 256, 2)
    # a layer narrower than a program
    assert gpu_config(1, 1, 64, 16, bf16, f32, 132) == ScanConfig(1, 64, 2)


def test_configuration_override_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsessm_kernels.ops.selective_scan.triton_backend import CONFIG_ENV, scan_config

    args = (1, 12, 20, 4, torch.float32, torch.float32, torch.device(DEVICE))
    monkeypatch.setenv(CONFIG_ENV, "2, 16, 2")
    assert scan_config(*args) == ScanConfig(2, 16, 2)
    case = _c("env_config", seqlen=40, mask="column", n=8)
    inputs, mask = _inputs(case)
    out, state = ssk.selective_scan(**inputs, return_last_state=True, state_mask=mask, backend="triton")
    _check(case, out, state, inputs, mask, "zero_transition")
    for bad in ("4,256", "3,256,4", "4,256,16", "a,b,c"):
        monkeypatch.setenv(CONFIG_ENV, bad)
        with pytest.raises(ValueError, match=f"{CONFIG_ENV}: expected 'block_d,chunk,num_warps'"):
            scan_config(*args)
