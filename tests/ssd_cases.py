"""Curated, named Mamba-2 (SSD) cases shared by the SSD op tests.

Every backend is tested on these cases against ``ssd_scan_ref`` run in float64, with the
dtype-keyed tolerances of ``tests/scan_cases.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tests.scan_cases import TOLERANCES, assert_close

__all__ = ["CASES", "TOLERANCES", "SSDCase", "assert_close", "make_inputs", "step_inputs", "to_float64"]


@dataclass(frozen=True)
class SSDCase:
    name: str
    batch: int = 2
    seqlen: int = 33
    nheads: int = 4
    headdim: int = 8
    ngroups: int = 1
    d_state: int = 16
    dtype: torch.dtype = torch.float32
    D: str | None = "h"  # None | "h" (nheads,) | "hp" (nheads, headdim)
    with_z: bool = True
    with_bias: bool = True
    softplus: bool = True
    dt_limit: tuple[float, float] | None = None
    init: bool = False
    mask: str = "none"  # none | group | group_uniform | head | head_uniform | head_shared_in_group
    #                      | group_all_pruned | all_pruned
    head_prune: str = "none"  # none | some | all
    seq_idx: bool = False
    chunk: int = 16


CASES = [
    SSDCase("dense_basic"),
    SSDCase("l1", seqlen=1),
    SSDCase("l_crosses_chunk", seqlen=37, chunk=16),
    SSDCase("l_exact_chunks", seqlen=32, chunk=16),
    SSDCase("l_shorter_than_chunk", seqlen=10, chunk=64),
    SSDCase("chunk_1", seqlen=9, chunk=1),
    SSDCase("n64", d_state=64, seqlen=20),
    SSDCase("n128", d_state=128, seqlen=12, batch=1),
    SSDCase("headdim32", headdim=32, seqlen=20),
    SSDCase("headdim64", headdim=64, seqlen=12, batch=1),
    SSDCase("groups8", nheads=16, ngroups=8, headdim=4, seqlen=21),
    SSDCase("group_per_head", nheads=4, ngroups=4),
    SSDCase("D_per_dim", D="hp"),
    SSDCase("no_D", D=None),
    SSDCase("no_z", with_z=False),
    SSDCase("no_optionals", D=None, with_z=False, with_bias=False, softplus=False),
    SSDCase("initial_states", init=True, seqlen=40),
    SSDCase("dt_limit", dt_limit=(0.05, 0.3)),
    SSDCase("mask_group", mask="group", ngroups=2),
    SSDCase("mask_group_uniform", mask="group_uniform", ngroups=2, init=True),
    SSDCase("mask_head", mask="head", ngroups=2, init=True),
    SSDCase("mask_head_uniform", mask="head_uniform"),
    SSDCase("mask_head_shared_in_group", mask="head_shared_in_group", nheads=8, ngroups=2),
    SSDCase("mask_group_all_pruned", mask="group_all_pruned", ngroups=2),
    SSDCase("mask_all_pruned", mask="all_pruned", init=True),
    SSDCase("head_prune", head_prune="some", init=True),
    SSDCase("head_prune_mask_head", head_prune="some", mask="head", ngroups=2, init=True, seqlen=37),
    SSDCase("head_prune_all", head_prune="all", mask="group_uniform", init=True),
    SSDCase("seq_idx", seq_idx=True, seqlen=40),
    SSDCase("seq_idx_init_mask", seq_idx=True, init=True, mask="group", seqlen=37, head_prune="some"),
    SSDCase("groups8_mask_head_prune", nheads=16, ngroups=8, headdim=4, mask="group", head_prune="some"),
    SSDCase("fp16", dtype=torch.float16, mask="group_uniform", D="hp"),
    SSDCase("bf16", dtype=torch.bfloat16, mask="head", init=True),
    SSDCase("bf16_headdim64_n128", dtype=torch.bfloat16, headdim=64, d_state=128, seqlen=9, batch=1),
    SSDCase("fp64", dtype=torch.float64, mask="head", head_prune="some", init=True, D="hp"),
]


def make_mask(kind: str, nheads: int, ngroups: int, n: int, gen: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind in ("group", "head"):
        rows = ngroups if kind == "group" else nheads
        mask = torch.rand(rows, n, generator=gen) > 0.5
        mask[0, 0] = True
        return mask
    if kind in ("group_uniform", "head_uniform"):
        rows = ngroups if kind == "group_uniform" else nheads
        order = torch.rand(rows, n, generator=gen).argsort(dim=1)
        return torch.zeros(rows, n, dtype=torch.bool).scatter_(1, order[:, : max(1, n // 2)], True)
    if kind == "head_shared_in_group":
        group = torch.rand(ngroups, n, generator=gen) > 0.5
        return group.repeat_interleave(nheads // ngroups, dim=0)
    if kind == "group_all_pruned":
        mask = torch.rand(ngroups, n, generator=gen) > 0.5
        mask[0] = False
        mask[-1, 0] = True
        return mask
    if kind == "all_pruned":
        return torch.zeros(ngroups, n, dtype=torch.bool)
    raise ValueError(kind)


def make_head_mask(kind: str, nheads: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "all":
        return torch.zeros(nheads, dtype=torch.bool)
    return torch.arange(nheads) % 3 != 1  # heads 1, 4, 7, ... have their transition zeroed


def make_inputs(case: SSDCase, seed: int = 0) -> dict:
    """Keyword arguments of ``ssd_scan`` for ``case`` (realistic ranges: A < 0, softplus-range dt)."""
    gen = torch.Generator().manual_seed(seed)
    b, l, h, p, g, n = case.batch, case.seqlen, case.nheads, case.headdim, case.ngroups, case.d_state
    param = torch.float64 if case.dtype == torch.float64 else torch.float32

    def randn(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale + shift

    dt = randn(b, l, h, scale=0.5, shift=-1.0) if case.softplus else randn(b, l, h, scale=0.3, shift=0.1)
    inputs = {
        "x": randn(b, l, h, p).to(case.dtype),
        "dt": dt.to(case.dtype),
        "A": -torch.exp(randn(h, scale=0.8)).to(param),
        "B": randn(b, l, g, n).to(case.dtype),
        "C": randn(b, l, g, n).to(case.dtype),
        "D": None if case.D is None else randn(*((h,) if case.D == "h" else (h, p))).to(param),
        "z": randn(b, l, h, p).to(case.dtype) if case.with_z else None,
        "dt_bias": randn(h, scale=0.1).to(param) if case.with_bias else None,
        "dt_softplus": case.softplus,
        "initial_states": randn(b, h, p, n).to(param) if case.init else None,
        "state_mask": make_mask(case.mask, h, g, n, gen),
        "head_transition_mask": make_head_mask(case.head_prune, h),
    }
    if case.dt_limit is not None:
        inputs["dt_limit"] = case.dt_limit
    if case.seq_idx:
        cut = torch.randint(1, l, (b,), generator=gen)
        inputs["seq_idx"] = (torch.arange(l)[None, :] >= cut[:, None]).to(torch.int32)
        inputs["seq_idx"][0] += 1  # row 0 starts at index 1: its initial state does not apply
    return inputs


def to_float64(inputs: dict) -> dict:
    """Floating tensors to float64 (masks and indices unchanged)."""
    return {
        k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in inputs.items()
    }


def step_inputs(inputs: dict, t: int) -> dict:
    """The keyword arguments of ``ssd_state_update`` for timestep ``t`` of scan inputs."""
    step = {k: inputs[k] for k in ("A", "D", "dt_bias", "dt_softplus", "state_mask", "head_transition_mask")}
    step.update({k: None if inputs[k] is None else inputs[k][:, t] for k in ("x", "dt", "B", "C", "z")})
    if "dt_limit" in inputs:
        step["dt_limit"] = inputs["dt_limit"]
    return step
