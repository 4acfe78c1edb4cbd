"""Gradients of the ops: backward passes that recompute through the float64-capable reference.

The forward kernels (torch, Triton, CUDA) are inference kernels; none has a backward of its own.
So that a pruned model can be fine-tuned (recovery training after pruning), the ops still have
exact gradients:

* ``sparsessm::selective_scan`` gets an autograd formula (``torch.library.register_autograd``):
  the backward re-runs :func:`~.reference.selective_scan_ref` on the saved inputs with autograd
  enabled and differentiates it. Time and memory are those of the reference (one timestep at a
  time, every step kept for the backward): correct, not fast.
* ``selective_state_update`` mutates its state, and ``torch.library`` gives no autograd formula to
  a mutating op; :func:`sparsessm_kernels.ops.selective_state_update` instead runs the
  differentiable reference itself when an input needs a gradient
  (:func:`sparsessm_kernels.ops.library.needs_grad`).

Pruned entries follow the semantics (docs/semantics.md): the gradient of ``A`` at a pruned state
is 0 under both ``pruned_states`` modes, and under ``remove`` nothing flows through a pruned
state's ``B`` / ``C`` columns.
"""

from __future__ import annotations

from typing import Any

import torch

from .reference import selective_scan_ref

_SCAN_TENSOR_ARGS = 8  # u, delta, A, B, C, D, z, delta_bias: the differentiable inputs
_SCAN_ARGS = 15  # every argument of sparsessm::selective_scan


def _scan_setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    state_mask = inputs[10]
    ctx.save_for_backward(*inputs[:_SCAN_TENSOR_ARGS], state_mask)
    ctx.delta_softplus, ctx.pruned_states = bool(inputs[8]), str(inputs[13])


def _scan_backward(ctx: Any, grad_out: torch.Tensor | None, grad_last: torch.Tensor | None) -> tuple:
    *saved, state_mask = ctx.saved_tensors
    wants = ctx.needs_input_grad[:_SCAN_TENSOR_ARGS]
    with torch.enable_grad():
        leaves = [
            None if t is None else t.detach().requires_grad_(bool(want)) for t, want in zip(saved, wants)
        ]
        out, last = selective_scan_ref(
            *leaves,
            delta_softplus=ctx.delta_softplus,
            return_last_state=True,
            state_mask=state_mask,
            pruned_states=ctx.pruned_states,
        )
        outputs, grads = [], []
        if grad_out is not None:
            outputs.append(out)
            grads.append(grad_out.to(out.dtype))
        if grad_last is not None and grad_last.numel():  # an empty last state was not requested
            outputs.append(last)
            grads.append(grad_last.to(last.dtype))
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad(outputs, wrt, grads, allow_unused=True) if outputs and wrt else ())
    result: list[torch.Tensor | None] = [
        next(got) if t is not None and t.requires_grad else None for t in leaves
    ]
    return (*result, *([None] * (_SCAN_ARGS - _SCAN_TENSOR_ARGS)))


def register(scan_op: Any) -> None:
    """Register the scan's autograd formula on the custom op ``scan_op``."""
    scan_op.register_autograd(_scan_backward, setup_context=_scan_setup_context)
