"""SNIP saliency ``|w * dL/dw|`` of projection weights (Lee et al., 2019, as "On Pruning State-Space
LLMs" applies it to Mamba projections).

``L`` is the mean next-token cross-entropy of the *dense* model over every calibration window (the
gradient of the whole calibration loss, accumulated batch by batch, so the batch size does not
change it). Unlike the layer-wise methods this needs one backward pass through the whole model,
so the whole model visits ``device`` once, before the layer-by-layer pipeline starts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["snip_saliency"]


def snip_saliency(
    model: nn.Module,
    calib_ids: torch.Tensor,
    params: dict[str, nn.Parameter],
    *,
    device: torch.device | str,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """``{name: |w * dL/dw|}`` (float32, on the weight's device) of the given weights.

    Args:
        model: a causal LM whose ``model(ids)`` returns ``(b, l, vocab)`` logits.
        calib_ids: ``(nsamples, seqlen)`` int64 calibration tokens (``seqlen >= 2``).
        params: the weights to score, by name (each a parameter of ``model``).
        device: where the forward / backward runs (the model is moved there and back).
        batch_size: windows per forward.

    ``L = sum over windows and positions t < seqlen - 1 of CE(logits_t, ids_{t+1}) / count``; the
    model is left as it was (weights, ``requires_grad`` flags, no ``.grad``).
    """
    if calib_ids.dim() != 2 or calib_ids.shape[1] < 2:
        raise ValueError(f"calib_ids: expected (nsamples, seqlen >= 2) tokens, got {tuple(calib_ids.shape)}")
    device = torch.device(device)
    home = next(model.parameters()).device
    flags = {id(p): p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in params.values()}
    count = calib_ids.shape[0] * (calib_ids.shape[1] - 1)
    was_training = model.training
    model.eval()
    model.to(device)
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        with torch.enable_grad():
            for i in range(0, calib_ids.shape[0], batch_size):
                ids = calib_ids[i : i + batch_size].to(device)
                logits = model(ids)
                loss = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                    ids[:, 1:].reshape(-1),
                    reduction="sum",
                )
                (loss / count).backward()
        out = {}
        for name, p in params.items():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            out[name] = (p.detach().float() * grad.float()).abs()
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(flags[id(p)])
        model.to(home)
        model.train(was_training)
    return {name: s.to(home) for name, s in out.items()}
