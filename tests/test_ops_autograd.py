"""Gradients of the public ops against float64 finite differences (torch.autograd.gradcheck)."""

from __future__ import annotations

import pytest
import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.ops import StateLayout

B_, D_, N_, L_ = 2, 4, 4, 5  # small: gradcheck perturbs every input element


def _mask(kind: str) -> torch.Tensor | None:
    if kind == "dense":
        return None
    if kind == "column":
        return torch.tensor([True, False, True, False])
    g = torch.Generator().manual_seed(3)
    return torch.rand(D_, N_, generator=g) > 0.5  # per-channel, unequal rows


def _scan_inputs(grouped: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    bc = (B_, 2, N_, L_) if grouped else (B_, N_, L_)
    A = (-torch.rand(D_, N_, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    u, delta, z = rnd(B_, D_, L_), rnd(B_, D_, L_, scale=0.5), rnd(B_, D_, L_)
    return [u, delta, A, rnd(*bc), rnd(*bc), rnd(D_), z, rnd(D_)]


@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
@pytest.mark.parametrize("kind", ["dense", "column", "per_channel"])
def test_scan_gradcheck(kind: str, pruned_states: str) -> None:
    mask = _mask(kind)

    def scan(u, delta, A, B, C, D, z, bias):
        out, last = ssk.selective_scan(
            u, delta, A, B, C, D, z, bias, True, True, state_mask=mask, pruned_states=pruned_states,
            backend="torch",
        )  # fmt: skip
        return out, last

    assert torch.autograd.gradcheck(scan, _scan_inputs(), eps=1e-6, atol=1e-6)


def test_scan_gradcheck_grouped_and_prebuilt_layout() -> None:
    layout = StateLayout(_mask("per_channel"))

    def scan(*args):
        return ssk.selective_scan(*args, True, state_mask=layout, backend="torch")

    assert torch.autograd.gradcheck(scan, _scan_inputs(grouped=True), eps=1e-6, atol=1e-6)


def test_scan_gradcheck_time_invariant_b_c() -> None:
    """mamba_ssm's ``is_variable_B/C=False``: B and C of shape ``(d, n)``."""
    u, delta, A, _, _, D, z, bias = _scan_inputs()
    g = torch.Generator().manual_seed(5)
    B = torch.randn(D_, N_, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(D_, N_, generator=g, dtype=torch.float64, requires_grad=True)

    def scan(*args):
        return ssk.selective_scan(*args, True, state_mask=_mask("column"), backend="torch")

    assert torch.autograd.gradcheck(scan, [u, delta, A, B, C, D, z, bias], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("pruned_states", ["zero_transition", "remove"])
def test_pruned_entries_get_zero_gradient(pruned_states: str) -> None:
    pruned = pruned_states
    mask = _mask("per_channel")
    u, delta, A, B, C, D, z, bias = _scan_inputs()
    out = ssk.selective_scan(u, delta, A, B, C, D, z, bias, True, state_mask=mask, pruned_states=pruned)
    out.sum().backward()
    assert torch.all(A.grad[~mask] == 0) and torch.any(A.grad[mask] != 0)
    column = _mask("column")
    u, delta, A, B, C, D, z, bias = _scan_inputs()
    out = ssk.selective_scan(u, delta, A, B, C, D, z, bias, True, state_mask=column, pruned_states=pruned)
    out.sum().backward()
    assert torch.all(A.grad[:, ~column] == 0)
    if pruned_states == "remove":  # a removed state contributes nothing, not even through B / C
        assert torch.all(B.grad[:, ~column] == 0) and torch.all(C.grad[:, ~column] == 0)
    else:  # zero_transition keeps the feed-through C * delta * B * u
        assert torch.any(B.grad[:, ~column] != 0)


def test_scan_gradient_without_last_state_and_forward_unchanged() -> None:
    args = _scan_inputs()
    with torch.no_grad():
        want = ssk.selective_scan(*args, True, backend="torch")
    got = ssk.selective_scan(*args, True, backend="torch")
    assert torch.equal(got, want) and got.requires_grad  # the forward is the backend's, bit for bit
    got.square().sum().backward()
    assert all(t.grad is not None for t in args)


def test_step_gradcheck_dense_and_compact() -> None:
    g = torch.Generator().manual_seed(1)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    A = (-torch.rand(D_, N_, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    column = _mask("column")
    for mask, width in ((None, N_), (column, int(column.sum()))):
        state0 = torch.randn(B_, D_, width, generator=g, dtype=torch.float64)

        def step(x, dt, A, B, C, D, z, bias, state0=state0, mask=mask):
            state = state0.clone()
            y = ssk.selective_state_update(state, x, dt, A, B, C, D, z, bias, True, state_mask=mask)
            return y, state  # the updated state is differentiable too

        args = [rnd(B_, D_), rnd(B_, D_), A, rnd(B_, N_), rnd(B_, N_), rnd(D_), rnd(B_, D_), rnd(D_)]
        assert torch.autograd.gradcheck(step, args, eps=1e-6, atol=1e-6)


def test_mamba_lm_trains() -> None:
    """Recovery fine-tuning of a pruned model: loss goes down, pruned A_log entries get no gradient."""
    from sparsessm_kernels.models import MambaLM, MambaLMConfig
    from sparsessm_kernels.sparsity import unstructured_mask

    torch.manual_seed(0)
    model = MambaLM(MambaLMConfig(vocab_size=32, d_model=16, n_layer=2, d_state=4))
    with torch.no_grad():  # the constructor leaves A_log / D for a checkpoint to fill
        for blk in model.backbone.layers:
            blk.mixer.A_log.copy_(torch.arange(1, 5, dtype=torch.float32).log().expand(32, 4))
            blk.mixer.D.fill_(1.0)
    mask = unstructured_mask(torch.rand(32, 4), 0.5)
    model.set_state_mask(0, mask)
    ids = torch.randint(0, 32, (2, 12))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(4):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        a_log = model.backbone.layers[0].mixer.A_log
        assert torch.all(a_log.grad[~mask] == 0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
