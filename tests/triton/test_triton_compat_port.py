"""mamba_ssm's own selective-scan test parametrization, run on the Triton backend.

``tests/test_compat_mamba_ssm_port.py`` ports mamba_ssm's ``tests/ops/test_selective_scan.py``
to CPU against ``sparsessm_kernels.compat`` (the default backend); this runs the same checks with
``backend="triton"`` -- through Triton's interpreter on CPU, compiled on a GPU -- so
``compat.selective_scan_fn(..., backend="triton")`` is held to mamba_ssm's tests as the
no-compiler replacement of mamba_ssm's CUDA ``selective_scan_fn``.

The whole (B, C, groups, dtype) grid runs; inside each test a subset of mamba_ssm's 32
``has_D / has_z / has_delta_bias / delta_softplus / return_last_state`` combinations does (every
seventh: 5 combinations in which every flag is both on and off; sequence lengths 8, 33 and 128),
because the interpreter costs about 0.1-1 s per call, and ``mamba_inner_fn`` (768 channels, about
10 s a call interpreted) runs with input-dependent B and C only. On a GPU everything runs. Out of
scope, as for the default backend: complex weights (refused with ``TypeError``) and gradients
(the ops' backward recomputes through the reference whatever the forward backend).
"""

from __future__ import annotations

import pytest
import torch

from tests.test_compat_mamba_ssm_port import FLAGS, run_mamba_inner, run_scan_grid

from .conftest import INTERPRETED

COMBOS = list(enumerate(FLAGS))
TRITON_COMBOS = COMBOS[::7] if INTERPRETED else COMBOS


def test_the_subset_turns_every_flag_on_and_off() -> None:
    for flag in range(5):
        assert {flags[flag] for _, flags in TRITON_COMBOS} == {False, True}


@pytest.mark.parametrize("itype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("varBC_groups", [1, 2])
@pytest.mark.parametrize("is_variable_C", [False, True])
@pytest.mark.parametrize("is_variable_B", [False, True])
def test_selective_scan_on_triton(
    is_variable_B: bool, is_variable_C: bool, varBC_groups: int, itype: torch.dtype
) -> None:
    run_scan_grid(is_variable_B, is_variable_C, varBC_groups, itype, TRITON_COMBOS, backend="triton")


INNER = [(True, True)] if INTERPRETED else [(b, c) for b in (False, True) for c in (False, True)]


@pytest.mark.parametrize(("is_variable_B", "is_variable_C"), INNER)
def test_mamba_inner_fn_on_triton(is_variable_B: bool, is_variable_C: bool) -> None:
    run_mamba_inner(is_variable_B, is_variable_C, backend="triton")
