"""The CUDA backend: kernels (csrc/selective_scan), binding (python/bindings.cpp), ops.cuda wrapper.

Three groups:

* ``-m gpu`` (skipped without a GPU; skipped with the reason when ``sparsessm_kernels._C`` is not
  built): sweeps over the kernel variants (time segments, kept-state counts), strided /
  misaligned / mixed-dtype inputs and the binding's errors, through ``selective_scan_cuda``
  against the float64 reference. The named cases of ``tests/scan_cases.py`` run on this backend
  (GPU and emulated) with every other one in ``tests/ops/test_selective_scan.py``.
* CPU tests that always run: how ``cuda_status`` reports a missing extension or a missing GPU,
  and that ``setup.py`` stays pure Python without ``SPARSESSM_BUILD_CUDA``.
* CPU tests of the kernels that always run (about a minute of CPU): the standalone C++ test's
  kernel sweep (``--sweep ci``: every lanes count and kernel mode, odd lengths, misaligned and
  strided inputs, grouped B/C, identities between sparse and dense runs) compiled against the host
  emulation, the emulation's own race / alignment / bounds checkers, and the compile script's
  register-spill gate (with a stand-in nvcc).
* Build tests, opt-in with ``RUN_CUDA_BUILD_TESTS=1`` because they compile for minutes on a small
  machine (CI calls ``.ci/compile_cuda.sh`` directly): the compile-only check, the full sweep, and
  the same kernel sources compiled for the CPU through the host emulation (``csrc/emulation``)
  running every GPU test above without a GPU.
"""

from __future__ import annotations

import importlib
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sparsessm_kernels.ops.cuda as cuda_backend
from sparsessm_kernels.ops import StateLayout, selective_scan_ref
from sparsessm_kernels.ops.dispatch import BackendUnavailableError
from sparsessm_kernels.ops.selective_scan.cuda_backend import selective_scan_cuda
from tests.backends import cuda_runner, needs_build_flag
from tests.scan_cases import CASES, TOLERANCES, ScanCase, assert_close, backend_args, make_inputs, to_float64

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ runners
@pytest.fixture(
    params=[
        pytest.param("gpu", marks=pytest.mark.gpu),
        pytest.param("emulated", marks=[pytest.mark.slow, needs_build_flag]),
    ]
)
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Where the kernels run: the real extension on the GPU, or the host emulation on the CPU."""
    return cuda_runner(request.param, monkeypatch)


def _layout(mask: torch.Tensor | None, device: str) -> StateLayout | None:
    return None if mask is None else StateLayout(mask).to(device)


def _run(
    inputs: dict,
    layout: StateLayout | None,
    pruned_states: str,
    return_last_state: bool = True,
    time_segments: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``selective_scan_cuda`` with the plan the public op would build (``time_segments``: ``P``)."""
    return selective_scan_cuda(
        *backend_args(inputs, layout, pruned_states, "cuda", return_last_state, time_segments=time_segments)
    )


def _check(
    inputs: dict,
    mask: torch.Tensor | None,
    pruned_states: str,
    device: str,
    what: str,
    tol_dtype: torch.dtype | None = None,
    time_segments: int = 0,
) -> None:
    dev_inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    out, state = _run(dev_inputs, _layout(mask, device), pruned_states, time_segments=time_segments)
    ref, ref_state = selective_scan_ref(
        **to_float64(inputs), return_last_state=True, state_mask=mask, pruned_states=pruned_states
    )
    tol_dtype = tol_dtype or inputs["u"].dtype
    assert out.dtype == inputs["u"].dtype and out.shape == inputs["u"].shape
    assert state.dtype == torch.float32 and state.shape == ref_state.shape
    assert_close(out.cpu(), ref, tol_dtype, f"{what} out")
    assert_close(state.cpu(), ref_state, torch.float32, f"{what} last_state")


# ------------------------------------------------------------------- binding behaviour (GPU)
def test_float64_is_refused_with_a_clear_error(runner: SimpleNamespace) -> None:
    case = next(c for c in CASES if c.dtype == torch.float64)
    inputs, _ = make_inputs(case, device=runner.device)
    with pytest.raises(TypeError, match="float64"):
        _run(inputs, None, "zero_transition")


def test_return_last_state_false_gives_none(runner: SimpleNamespace) -> None:
    inputs, mask = make_inputs(ScanCase("no_state", mask="2:4"), device=runner.device)
    out, state = _run(inputs, _layout(mask, runner.device), "zero_transition", return_last_state=False)
    assert state is None and out.shape == inputs["u"].shape


# -------------------------------------------------------------------------- kernel variants
@pytest.mark.parametrize("segments", [1, 2, 4, 8, 16, 32, 64, 128])
@pytest.mark.parametrize("mask_kind", ["none", "column", "2:4", "unstructured_sparse"])
def test_every_time_segment_count(runner: SimpleNamespace, segments: int, mask_kind: str) -> None:
    inputs, mask = make_inputs(ScanCase("segments", batch=2, d=20, n=16, seqlen=70, mask=mask_kind), seed=1)
    for pruned_states in ("zero_transition", "remove"):
        what = f"P={segments} {mask_kind} {pruned_states}"
        _check(inputs, mask, pruned_states, runner.device, what, time_segments=segments)


@pytest.mark.parametrize("segments", [64, 128])
@pytest.mark.parametrize("mask_kind", ["none", "column", "2:4", "unstructured_sparse"])
def test_multi_warp_channels_across_chunks(runner: SimpleNamespace, segments: int, mask_kind: str) -> None:
    """P > 32: a channel spans 2 or 4 warps that combine their maps in shared memory; 2 or 3 chunks
    of 8 * P steps (the last one partial) carry the state, 3 channels leave part of a block idle."""
    case = ScanCase("multi_warp", batch=2, d=3, n=16, seqlen=2 * 8 * 128 + 37, mask=mask_kind)
    inputs, mask = make_inputs(case, seed=segments)
    for pruned_states in ("zero_transition", "remove"):
        what = f"P={segments} {mask_kind} {pruned_states}"
        _check(inputs, mask, pruned_states, runner.device, what, time_segments=segments)


def _mask_keeping(k: int, n: int, d: int, per_channel: bool, seed: int) -> torch.Tensor:
    """A column mask keeping exactly k states, or a per-channel mask with k_max = k (counts 0..k)."""
    gen = torch.Generator().manual_seed(seed)
    if not per_channel:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=gen)[:k]] = True
        return mask
    mask = torch.zeros(d, n, dtype=torch.bool)
    for c in range(d):
        count = k if c % 3 == 0 else int(torch.randint(0, k + 1, (1,), generator=gen))
        mask[c, torch.randperm(n, generator=gen)[:count]] = True
    return mask


# (k kept states, n): the compile-time kernels (4 ... 64) and the run-time one (5, 100, 256).
K_VARIANTS = [
    *[(4, 16), (8, 16), (12, 16), (16, 32), (24, 32), (32, 64), (64, 64)],
    *[(5, 16), (100, 128), (256, 256)],
]


@pytest.mark.parametrize("per_channel", [False, True], ids=["column", "per_channel"])
@pytest.mark.parametrize(("k", "n"), K_VARIANTS, ids=[f"k{k}_n{n}" for k, n in K_VARIANTS])
def test_every_kept_state_kernel(runner: SimpleNamespace, k: int, n: int, per_channel: bool) -> None:
    d = 10 if n > 64 else 40
    case = ScanCase("k", batch=1, d=d, n=n, seqlen=45 if n <= 64 else 19)
    inputs, _ = make_inputs(case, seed=k)
    mask = _mask_keeping(k, n, d, per_channel, seed=n)
    for pruned_states in ("zero_transition", "remove"):
        _check(inputs, mask, pruned_states, runner.device, f"k={k} n={n} {pruned_states}")


@pytest.mark.parametrize("n", [4, 12, 64, 128])
def test_dense_state_counts(runner: SimpleNamespace, n: int) -> None:
    inputs, _ = make_inputs(ScanCase("dense_n", batch=2, d=12, n=n, seqlen=30), seed=n)
    _check(inputs, None, "zero_transition", runner.device, f"dense n={n}")


def test_long_sequence_many_chunks(runner: SimpleNamespace) -> None:
    # P = 2: 16 timesteps per chunk, 40 chunks carry the state
    inputs, mask = make_inputs(ScanCase("long", batch=1, d=8, n=8, seqlen=640, mask="2:4"), seed=4)
    _check(inputs, mask, "zero_transition", runner.device, "long", time_segments=2)


def test_grouped_B_and_C_with_different_group_counts(runner: SimpleNamespace) -> None:
    b, d, n, l = 2, 12, 8, 21
    gen = torch.Generator().manual_seed(7)
    inputs, mask = make_inputs(ScanCase("groups", batch=b, d=d, n=n, seqlen=l, mask="unstructured"), seed=7)
    inputs["B"] = torch.randn(b, 2, n, l, generator=gen)
    inputs["C"] = torch.randn(b, 3, n, l, generator=gen)
    col = _mask_keeping(3, n, d, per_channel=False, seed=2)
    for m in (None, col, mask):
        for pruned_states in ("zero_transition", "remove"):
            _check(inputs, m, pruned_states, runner.device, f"gB=2 gC=3 {pruned_states}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_strided_and_misaligned_inputs(runner: SimpleNamespace, dtype: torch.dtype) -> None:
    case = ScanCase("strided", batch=2, d=12, n=8, seqlen=64, dtype=dtype, mask="column")
    inputs, mask = make_inputs(case, seed=9)
    b, d, l = inputs["u"].shape
    strided = dict(inputs)
    # u one element off the 16-byte alignment (scalar-load path), z a channel slice of a wider
    # tensor, B and C transposes of (b, l, n) tensors (as transformers passes them), A transposed.
    wide = torch.zeros(b, d, l + 1, dtype=dtype)
    wide[..., 1:] = inputs["u"]
    strided["u"] = wide[..., 1:]
    strided["z"] = torch.cat([inputs["z"], inputs["z"]], dim=1)[:, d:]
    strided["B"] = inputs["B"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["C"] = inputs["C"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["A"] = inputs["A"].t().contiguous().t()
    assert not strided["B"].is_contiguous() and strided["u"].data_ptr() % 16 != 0
    dev = runner.device
    dev_inputs = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in strided.items()}
    if dev != "cpu":  # .to() copies: rebuild the views on the device
        wide_d = wide.to(dev)
        dev_inputs["u"] = wide_d[..., 1:]
    out, state = _run(dev_inputs, _layout(mask, dev), "zero_transition")
    ref, ref_state = selective_scan_ref(**to_float64(inputs), return_last_state=True, state_mask=mask)
    assert_close(out.cpu(), ref, dtype, "strided out")
    assert_close(state.cpu(), ref_state, torch.float32, "strided state")


@pytest.mark.parametrize("mask_kind", ["none", "column", "unstructured_sparse"])
def test_time_invariant_B_C_with_any_strides(runner: SimpleNamespace, mask_kind: str) -> None:
    """A time-invariant (d, n) B / C (here transposed views of (n, d) parameters, float32 next to
    bf16 sequence tensors) reaches the kernel as a stride-0 grouped view: no copy of B / C."""
    case = ScanCase("fixed_strided", dtype=torch.bfloat16, mask=mask_kind, fixed="BC", seqlen=41)
    inputs, mask = make_inputs(case, seed=13)
    dev = runner.device
    args = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    args["B"], args["C"] = (args[k].float().t().contiguous().t() for k in ("B", "C"))
    assert not args["B"].is_contiguous()
    out, state = _run(args, _layout(mask, dev), "zero_transition")
    ref, ref_state = selective_scan_ref(**to_float64(inputs), return_last_state=True, state_mask=mask)
    assert_close(out.cpu(), ref, torch.bfloat16, "fixed strided out")
    assert_close(state.cpu(), ref_state, torch.float32, "fixed strided state")


def test_mixed_dtypes_are_promoted(runner: SimpleNamespace) -> None:
    inputs, mask = make_inputs(ScanCase("mixed", dtype=torch.bfloat16, mask="2:4"), seed=11)
    mixed = dict(inputs)
    mixed["delta"] = inputs["delta"].float()
    mixed["B"] = inputs["B"].float()
    out, _ = _run(
        {k: (v.to(runner.device) if isinstance(v, torch.Tensor) else v) for k, v in mixed.items()},
        _layout(mask, runner.device),
        "zero_transition",
    )
    assert out.dtype == torch.bfloat16
    ref = selective_scan_ref(**to_float64(mixed), state_mask=mask)
    assert_close(out.cpu(), ref, torch.bfloat16, "mixed out")


def test_binding_errors_name_the_argument(runner: SimpleNamespace) -> None:
    inputs, mask = make_inputs(ScanCase("errors", mask="2:4"), device=runner.device)
    layout = StateLayout(mask)
    ext = runner.ext
    base = dict(
        u=inputs["u"],
        delta=inputs["delta"],
        A=inputs["A"],
        B=inputs["B"],
        C=inputs["C"],
        D=inputs["D"],
        z=inputs["z"],
        delta_bias=inputs["delta_bias"],
        delta_softplus=True,
        return_last_state=True,
        kept_idx=layout.kept_idx,
        kept_count=layout.kept_count,
        pruned_states="zero_transition",
        time_segments=0,
    )
    bad = [
        ({"kept_idx": layout.kept_idx.long()}, TypeError, "kept_idx"),
        ({"B": inputs["B"][:, :-1]}, ValueError, "B:"),
        ({"delta": inputs["delta"].double()}, TypeError, "delta"),
        ({"A": inputs["A"].half()}, TypeError, "A:"),
        ({"D": inputs["D"][:-1]}, ValueError, "D:"),
        ({"u": inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)}, ValueError, "stride"),
        ({"kept_count": None}, ValueError, "kept_count"),
        ({"pruned_states": "drop"}, ValueError, "pruned_states"),
        ({"time_segments": 3}, ValueError, "time_segments"),
        ({"B": inputs["A"].half()}, (TypeError, ValueError), r"B:"),  # (d, n) B: the wrapper expands it
    ]
    for change, error, text in bad:
        with pytest.raises(error, match=text):
            ext.selective_scan_fwd(**{**base, **change})
    out, state = ext.selective_scan_fwd(**base)
    assert out.shape == inputs["u"].shape and state.shape == (*inputs["u"].shape[:2], inputs["A"].shape[1])


@pytest.mark.gpu
def test_gpu_binding_refuses_cpu_tensors() -> None:
    usable, reason = cuda_backend.cuda_status()
    if not usable:
        pytest.skip(reason)
    inputs, _ = make_inputs(ScanCase("cpu"))
    with pytest.raises(ValueError, match="u: expected a CUDA tensor"):
        _run(inputs, None, "zero_transition")


@pytest.mark.gpu
def test_gpu_uses_the_current_stream() -> None:
    usable, reason = cuda_backend.cuda_status()
    if not usable:
        pytest.skip(reason)
    inputs, mask = make_inputs(ScanCase("stream", mask="column"), device="cuda")
    expected, _ = _run(inputs, _layout(mask, "cuda"), "zero_transition")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out, _ = _run(inputs, _layout(mask, "cuda"), "zero_transition")
    stream.synchronize()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------ CPU: status
@pytest.fixture
def fresh_loader():
    loader = cuda_backend._load  # the cached loader (tests may monkeypatch the attribute)
    loader.cache_clear()
    yield
    loader.cache_clear()


def _not_built() -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {cuda_backend.EXTENSION!r}", name=cuda_backend.EXTENSION)


def _fail_import(monkeypatch: pytest.MonkeyPatch, exc: ImportError) -> None:
    real = importlib.import_module

    def fake(name: str, *args, **kwargs):
        if name == cuda_backend.EXTENSION:
            raise exc
        return real(name, *args, **kwargs)

    monkeypatch.setattr(cuda_backend.importlib, "import_module", fake)


def test_status_when_extension_is_not_built(monkeypatch: pytest.MonkeyPatch, fresh_loader) -> None:
    _fail_import(monkeypatch, _not_built())
    usable, reason = cuda_backend.cuda_status()
    assert not usable
    assert "not built" in reason and cuda_backend.BUILD_COMMAND in reason
    assert cuda_backend.BUILD_COMMAND == "SPARSESSM_BUILD_CUDA=1 pip install -e . --no-build-isolation"
    info = cuda_backend.extension_info()
    assert info["built"] is False and cuda_backend.BUILD_COMMAND in info["reason"]


def test_status_when_extension_fails_to_import(monkeypatch: pytest.MonkeyPatch, fresh_loader) -> None:
    _fail_import(monkeypatch, ImportError("_C.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"))
    usable, reason = cuda_backend.cuda_status()
    assert not usable
    assert "undefined symbol" in reason and "rebuild" in reason and cuda_backend.BUILD_COMMAND in reason


def test_status_when_no_gpu_is_visible(monkeypatch: pytest.MonkeyPatch, fresh_loader) -> None:
    fake = SimpleNamespace(cuda_archs="sm_80_sm_90", __file__="_C.so")
    monkeypatch.setattr(cuda_backend, "_load", lambda: (fake, ""))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    usable, reason = cuda_backend.cuda_status()
    assert not usable
    assert "no CUDA GPU is visible" in reason and "sm_80_sm_90" in reason


def test_status_on_this_machine_is_consistent() -> None:
    usable, reason = cuda_backend.cuda_status()
    assert isinstance(reason, str) and reason
    if importlib.util.find_spec(cuda_backend.EXTENSION) is None:
        assert not usable and cuda_backend.BUILD_COMMAND in reason
    if not torch.cuda.is_available():
        assert not usable


def test_calling_without_extension_raises_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch, fresh_loader
) -> None:
    _fail_import(monkeypatch, _not_built())
    inputs, _ = make_inputs(ScanCase("missing"))
    with pytest.raises(BackendUnavailableError, match="SPARSESSM_BUILD_CUDA=1 pip install"):
        _run(inputs, None, "zero_transition")


def test_wrapper_takes_the_backend_contract() -> None:
    import inspect

    from sparsessm_kernels.ops.selective_scan.torch_backend import selective_scan_torch

    ours = inspect.signature(selective_scan_cuda)
    theirs = inspect.signature(selective_scan_torch)
    assert list(ours.parameters) == list(theirs.parameters)


# ------------------------------------------------------------------------------- CPU: setup.py
def _setup_helpers() -> dict:
    return runpy.run_path(str(ROOT / "setup.py"), run_name="sparsessm_setup_helpers")


def test_setup_without_the_variable_builds_no_extension() -> None:
    # In a fresh interpreter: the pure-Python path must not even import torch.
    code = (
        "import runpy, sys; g = runpy.run_path('setup.py', run_name='helpers'); "
        "kw = g['setup_kwargs']({}); kw0 = g['setup_kwargs']({'SPARSESSM_BUILD_CUDA': '0'}); "
        "assert kw == {} and kw0 == {}, (kw, kw0); "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_setup_rejects_a_garbled_build_variable() -> None:
    helpers = _setup_helpers()
    with pytest.raises(SystemExit, match="SPARSESSM_BUILD_CUDA"):
        helpers["build_cuda_requested"]({"SPARSESSM_BUILD_CUDA": "maybe"})
    assert helpers["build_cuda_requested"]({"SPARSESSM_BUILD_CUDA": "1"}) is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.0;9.0", [("80", False), ("90", False)]),
        ("9.0a", [("90a", False)]),
        ("80,90a", [("80", False), ("90a", False)]),
        ("sm_90a, 8.0+PTX", [("90a", False), ("80", True)]),
        ("8.6 8.6 10.0", [("86", False), ("100", False)]),
    ],
)
def test_cuda_arch_parsing(text: str, expected: list) -> None:
    helpers = _setup_helpers()
    assert helpers["parse_cuda_archs"](text) == expected


def test_cuda_arch_flags_and_errors() -> None:
    helpers = _setup_helpers()
    flags = helpers["nvcc_arch_flags"](helpers["parse_cuda_archs"]("8.0;9.0a+PTX"))
    assert flags == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_90a,code=compute_90a",
    ]
    assert helpers["archs_token"](helpers["parse_cuda_archs"]("8.0;9.0a")) == "sm_80_sm_90a"
    for bad in ("ampere", "7.5", ""):
        with pytest.raises(SystemExit, match="SPARSESSM_CUDA_ARCHS"):
            helpers["parse_cuda_archs"](bad)
    assert helpers["DEFAULT_CUDA_ARCHS"] == "8.0;9.0"


def test_max_jobs_is_sized_from_free_memory() -> None:
    jobs = _setup_helpers()["default_max_jobs"]
    gib = 1024**3
    assert jobs(10 * gib, 16) == 4
    assert jobs(1 * gib, 16) == 1
    assert jobs(100 * gib, 8) == 8
    assert jobs(None, 2) == 2


def test_setup_lists_every_kernel_source() -> None:
    sources = _setup_helpers()["cuda_sources"]()
    assert sources[0] == os.path.join("python", "bindings.cpp")
    on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "selective_scan").glob("*.cu"))
    assert sorted(sources[1:]) == on_disk and on_disk


# ------------------------------------------------------------------------------- build checks
@pytest.mark.slow
@needs_build_flag
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_ci_compile_script_succeeds() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "compile_cuda.sh")], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "compile_cuda: OK" in result.stdout


def _emulated_cpp_test() -> Path:
    """The standalone C++ test built against the emulation (once per test run), or skip."""
    from tests.cuda_emulation.build import emulated_cpp_test, missing_cpp_requirements

    missing = missing_cpp_requirements()
    if missing:
        pytest.skip(f"cannot build the CUDA emulation here: {missing}")
    return emulated_cpp_test()


def _run_ok(command: list[str], last_line: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith(last_line), result.stdout[-2000:]


@pytest.mark.slow
@needs_build_flag
def test_standalone_cpp_test_passes_under_emulation() -> None:
    _run_ok([str(_emulated_cpp_test())], "OK:")


@pytest.mark.slow
def test_kernel_sweep_under_emulation() -> None:
    """Every (lanes per channel, mask kind) once, dtype and condition rotating (C++: --sweep ci)."""
    _run_ok(
        [str(_emulated_cpp_test()), "--sweep", "ci"], "OK: sweep (ci) of 40 cases, 32 with an identity check"
    )


@pytest.mark.slow
@needs_build_flag
def test_full_kernel_sweep_under_emulation() -> None:
    _run_ok([str(_emulated_cpp_test()), "--sweep", "full"], "OK: sweep (full)")


@pytest.mark.parametrize("ucontext", [False, True], ids=["fast_switch", "ucontext"])
def test_emulation_reports_races_misalignment_and_bounds(tmp_path: Path, ucontext: bool) -> None:
    from tests.cuda_emulation.build import build_detectors_test, missing_cpp_requirements

    missing = missing_cpp_requirements()
    if missing:
        pytest.skip(f"cannot build the CUDA emulation here: {missing}")
    exe = tmp_path / "detectors_test"
    build_detectors_test(exe, ucontext=ucontext)
    _run_ok([str(exe)], "OK: 13 checks, 0 failed")


def _fake_nvcc(tmp_path: Path, spill_bytes: int) -> Path:
    """An nvcc stand-in: creates the object and reports one kernel with ``spill_bytes`` of spills."""
    fake = tmp_path / "nvcc"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = --version ]; then echo "Cuda compilation tools, stand-in"; exit 0; fi\n'
        'out=""; while [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done\n'
        'touch "$out"\n'
        "echo \"ptxas info    : Compiling entry function '_Z6kernelv' for 'sm_80'\" >&2\n"
        f'echo "    0 bytes stack frame, {spill_bytes} bytes spill stores, '
        f'{spill_bytes} bytes spill loads" >&2\n'
        'echo "ptxas info    : Used 128 registers, used 1 barriers" >&2\n'
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("spill_bytes", [0, 8])
def test_ci_compile_script_fails_on_register_spills(tmp_path: Path, spill_bytes: int) -> None:
    env = {**os.environ, "NVCC": str(_fake_nvcc(tmp_path, spill_bytes)), "SKIP_BINDING": "1", "JOBS": "2"}
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "compile_cuda.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if spill_bytes == 0:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "compile_cuda: OK" in result.stdout and "(warnings)" not in result.stdout
    else:
        assert result.returncode != 0
        assert "register spills" in result.stderr and "sm_80 _Z6kernelv: 8 B spill stores" in result.stderr


def test_ci_compile_script_skips_without_nvcc(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "CUDA_HOME": str(tmp_path / "none")}
    result = subprocess.run(
        ["/bin/bash", str(ROOT / ".ci" / "compile_cuda.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "nvcc not found" in result.stdout and "skipping" in result.stdout


def test_tolerances_cover_kernel_dtypes() -> None:
    assert all(dt in TOLERANCES for dt in (torch.float32, torch.float16, torch.bfloat16))
