"""Triton kernel of the SparseSSM calibration statistics (transition saliency).

Computes :func:`sparsessm_kernels.ops.saliency.reference.state_saliency_ref`: for every state
``(c, s)`` the score ``mean_b dA_t^2 h_{t-1}^2`` with ``dA_t = exp(dt_t[c] A[c, s])``, either
summed over time with weights ``w_t`` (``(d, n)``) or per step (``(l, d, n)``), **without
materialising the** ``(b, l, d, n)`` **state trajectory**.

A program owns ``BLOCK_D`` channels and ``BLOCK_B`` batch rows and holds their states as a
``(BLOCK_B, BLOCK_D, next_pow2(n))`` register tile. It walks the sequence one timestep at a time:
``dA`` for the tile, the score ``sum_b (dA * h)^2`` (reduced over the batch rows in registers),
then ``h <- dA * h + dt * u * B``. Weighted sums go to a ``(batch-blocks, d, n)`` partial that the
host adds up (deterministic, no atomics); per-step sums are added row by row onto a zeroed
``(l, d, n)`` output, ``(d, n)`` contiguous per step, by one program per channel block walking
all batch blocks (the same load/store instructions each pass, so the same thread owns an element
every time). The host divides by ``b``. Time is sequential
inside a program: this is an offline calibration kernel, parallel over channels and batch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton._common import acc_dtype, device_guard, next_pow2, softplus, time_invariant_as_grouped


@triton.jit
def _saliency_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, w_ptr, out_ptr,
    b, d, l, n, dpg,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n, sB_b, sB_g, sB_n, sB_l, s_bias,
    PER_STEP: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, NB: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < d
    offs_n = tl.arange(0, NB)
    nmask = offs_n < n
    dn_mask = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=dn_mask, other=0.0).to(ACC)
    bias = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=dmask, other=0.0).to(ACC)
    grp = (offs_d // dpg).to(tl.int64)
    total = tl.zeros([BLOCK_D, NB], dtype=ACC)

    b_start = pid_b * BLOCK_B
    if PER_STEP:  # one program walks every batch block, adding onto the per-step rows
        b_stop = b
    else:
        b_stop = tl.minimum(b_start + BLOCK_B, b)
    for b0 in range(b_start, b_stop, BLOCK_B):
        offs_b = (b0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        bmask = offs_b < b
        bd_mask = bmask[:, None] & dmask[None, :]
        bdn_mask = bd_mask[:, :, None] & nmask[None, None, :]
        u_rows = u_ptr + offs_b[:, None] * su_b + offs_d[None, :] * su_d
        dt_rows = dt_ptr + offs_b[:, None] * sdt_b + offs_d[None, :] * sdt_d
        B_rows = (
            B_ptr + offs_b[:, None, None] * sB_b + grp[None, :, None] * sB_g + offs_n[None, None, :] * sB_n
        )
        h = tl.zeros([BLOCK_B, BLOCK_D, NB], dtype=ACC)
        for t in range(0, l):
            dt = tl.load(dt_rows + t * sdt_l, mask=bd_mask, other=0.0).to(ACC)
            if HAS_BIAS:
                dt = dt + bias[None, :]
            if SOFTPLUS:
                dt = softplus(dt)
            dt = tl.where(bd_mask, dt, 0.0)
            uu = tl.load(u_rows + t * su_l, mask=bd_mask, other=0.0).to(ACC)
            dA = tl.exp(dt[:, :, None] * A[None, :, :])
            decayed = dA * h
            score = tl.sum(decayed * decayed, axis=0)  # (BLOCK_D, NB): sum over the batch rows
            if PER_STEP:
                row = out_ptr + t * d * n + offs_d[:, None] * n + offs_n[None, :]
                tl.store(row, tl.load(row, mask=dn_mask, other=0.0) + score, mask=dn_mask)
            else:
                total += tl.load(w_ptr + t).to(ACC) * score
            Bt = tl.load(B_rows + t * sB_l, mask=bdn_mask, other=0.0).to(ACC)
            h = decayed + (dt * uu)[:, :, None] * Bt
    if not PER_STEP:
        part = out_ptr + pid_b * d * n + offs_d[:, None] * n + offs_n[None, :]
        tl.store(part, total, mask=dn_mask)


def state_saliency_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    time_weights: torch.Tensor,
    per_step: bool,
    *,
    block_b: int | None = None,
    block_d: int | None = None,
) -> torch.Tensor:
    """Saliency on the Triton kernel; arguments validated by ``ops.state_saliency``.

    ``time_weights`` ``(l,)`` float32 on the device. Returns ``(d, n)`` or ``(l, d, n)`` in float32
    (float64 for float64 inputs).
    """
    b, d, l = u.shape
    n = A.shape[1]
    dev = u.device
    acc_torch, acc_tl = acc_dtype(u, delta, A, B, delta_bias)
    B = time_invariant_as_grouped(B, b, l)  # (d, n) -> (b, d, n, l) view, stride 0 over b and l
    grouped = B.dim() == 4
    g = B.shape[1] if grouped else 1
    sB = (
        (B.stride(0), B.stride(1), B.stride(2), B.stride(3)) if grouped else (B.stride(0), 0, *B.stride()[1:])
    )
    nb = next_pow2(n)
    block_b = block_b or min(8, next_pow2(b))
    block_d = block_d or max(1, min(next_pow2(d), 2048 // (block_b * nb)))
    d_blocks = triton.cdiv(d, block_d)
    b_blocks = 1 if per_step else triton.cdiv(b, block_b)
    if per_step:
        out = torch.zeros((l, d, n), dtype=acc_torch, device=dev)
    else:
        out = torch.empty((b_blocks, d, n), dtype=acc_torch, device=dev)
    w = time_weights.to(device=dev, dtype=acc_torch).contiguous()
    with device_guard(dev):
        _saliency_kernel[(d_blocks, b_blocks)](
            u, delta, A, B, delta_bias if delta_bias is not None else w, w, out,
            b, d, l, n, d // g,
            *u.stride(), *delta.stride(), *A.stride(), *sB,
            delta_bias.stride(0) if delta_bias is not None else 0,
            PER_STEP=bool(per_step), HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
            BLOCK_B=block_b, BLOCK_D=block_d, NB=nb, ACC=acc_tl, num_warps=4,
        )  # fmt: skip
    if per_step:
        return out.div_(b)
    return out.sum(dim=0).div_(b)
