"""Export a masked Mamba-2 model as a dense checkpoint that stock kernels run with the same outputs.

Stock transformers / mamba_ssm know nothing about masks, so they are baked into the weights:

* **State masks, ``pruned_states="remove"``**, per group (or per head with the heads of every
  group agreeing): a pruned state contributes nothing, which is exactly the dense model without
  that column of ``B`` / ``C``. ``B`` and ``C`` are rows of ``in_proj`` that go through the
  convolution (channels ``d_inner + g*n + s`` and ``d_inner + G*n + g*n + s`` of ``x | B | C``;
  the gated norm covers ``x`` only), so the export keeps, in every group of every layer, its kept
  states plus enough pruned ones to reach ``k*`` = the largest kept count of any group in any
  layer (an unmasked layer counts ``n``), and slices those ``in_proj`` rows and conv channels:
  the stock ``state_size`` becomes ``k*``. The filler states (groups keeping fewer than ``k*``)
  get zero ``in_proj`` rows (and bias), conv weights and conv bias, so ``B = C = silu(0) = 0``
  there, exactly. With the same kept count everywhere this is plain physical removal.
* **Head transition masks**: the transition-pruned heads get ``A_log = 60`` (``PRUNED_A_LOG``):
  ``exp(dt * -exp(60))`` is exactly 0 in float32 for every ``dt > ~9.1e-25``, the same bound as
  the Mamba-1 ``zero_transition`` export (``docs/models.md``). The heads stay (their
  feed-through and ``D`` skip are part of the model).

Not expressible, :class:`~.export.ExportError`: state masks with ``pruned_states=
"zero_transition"`` (``A`` is one scalar per head, so one state's transition cannot be zeroed
alone), and ``"remove"`` per-head masks whose heads differ inside a group (``B`` / ``C`` are
shared by the heads of a group). ``format="hf"`` also refuses what transformers'
``Mamba2ForCausalLM`` cannot run (LayerNorm block norms, no gated norm, ``norm_before_gate``,
``D_has_hdim``); ``format="mamba_ssm"`` writes those.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from .._io import atomic_directory
from .checkpoint import CONFIG_NAME, write_hf_checkpoint, write_mamba_ssm_checkpoint
from .export import EXPORT_FORMATS, PRUNED_A_LOG, ExportError

if TYPE_CHECKING:
    from .mamba2 import Mamba2LM


def _group_masks(model: Mamba2LM) -> list[torch.Tensor | None]:
    """Per layer: the bool ``(ngroups, n)`` kept states to bake in by removal, or None (unmasked)."""
    out: list[torch.Tensor | None] = []
    for i, blk in enumerate(model.backbone.layers):
        m = blk.mixer
        if m.layout is None:
            out.append(None)
            continue
        if m.pruned_states != "remove":
            raise ExportError(
                f"layer {i}: a state mask with pruned_states='zero_transition' cannot be exported for stock "
                "kernels: Mamba-2's A is one scalar per head, so the transition of single states cannot be "
                "zeroed; use pruned_states='remove', or keep this package's kernels"
            )
        if m.layout.group_mask is None:
            raise ExportError(
                f"layer {i}: a per-head state mask whose heads differ inside a group cannot be exported for "
                "stock kernels (B and C are shared by the heads of a group); use a per-group mask "
                "(ngroups, n), or keep this package's kernels"
            )
        out.append(m.layout.group_mask.to("cpu"))
    return out


def _kept_columns(group_mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each group the ``width`` state columns to keep -- its kept states, then pruned fillers --
    in ascending order: ``(columns (g, width) int64, filler (g, width) bool)``, ``width <= n``."""
    # kept states first (ascending), then pruned ones (ascending): a stable sort on "not kept"
    order = torch.sort((~group_mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    cols = torch.sort(order, dim=1).values
    return cols, ~torch.gather(group_mask, 1, cols)


@torch.no_grad()
def stock_mamba2_state_dict(model: Mamba2LM) -> tuple[dict[str, torch.Tensor], int]:
    """The dense HF-keyed state dict with the masks baked in, and the stock ``state_size``.

    Returns:
        ``(tensors, d_state)``: CPU tensors in the model dtype (``lm_head.weight`` included even
        when tied) and the state size every layer has after the export.
    """
    config = model.config
    n, g, d_inner = config.d_state, config.ngroups, config.d_inner
    masks = _group_masks(model)
    counts = [n if mk is None else int(mk.sum(dim=1).max()) for mk in masks]
    width = max(1, max(counts))  # a stock layer needs d_state >= 1
    tensors = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    for i, (blk, mk) in enumerate(zip(model.backbone.layers, masks)):
        pre = f"backbone.layers.{i}.mixer."
        heads = blk.mixer.head_transition_mask
        if heads is not None:
            tensors[pre + "A_log"][~heads.to("cpu")] = PRUNED_A_LOG
        if width == n and mk is None:
            continue
        group_mask = torch.ones(g, n, dtype=torch.bool) if mk is None else mk
        cols, filler = _kept_columns(group_mask, width)
        base = torch.arange(g)[:, None] * n  # (g, 1)
        b_rows = (base + cols).flatten()  # within the B block (g * n)
        keep_bc = torch.cat([d_inner + b_rows, d_inner + g * n + b_rows])  # within x | B | C
        zero_bc = torch.cat([filler.flatten(), filler.flatten()])
        conv_keep = torch.cat([torch.arange(d_inner), keep_bc])
        proj_keep = torch.cat(
            [
                torch.arange(d_inner),
                d_inner + conv_keep,
                torch.arange(d_inner + config.conv_dim, config.d_in_proj),
            ]
        )
        proj_zero = torch.cat(
            [
                torch.zeros(2 * d_inner, dtype=torch.bool),
                zero_bc,
                torch.zeros(config.nheads, dtype=torch.bool),
            ]
        )
        conv_zero = torch.cat([torch.zeros(d_inner, dtype=torch.bool), zero_bc])
        for key, keep, zero in (
            ("in_proj.weight", proj_keep, proj_zero),
            ("in_proj.bias", proj_keep, proj_zero),
            ("conv1d.weight", conv_keep, conv_zero),
            ("conv1d.bias", conv_keep, conv_zero),
        ):
            if pre + key in tensors:
                t = tensors[pre + key][keep].contiguous()
                t[zero] = 0
                tensors[pre + key] = t
    if config.tie_embeddings:
        tensors["lm_head.weight"] = tensors["backbone.embeddings.weight"]
    return tensors, width


def export_mamba2_for_stock_kernels(
    model: Mamba2LM, directory: str | os.PathLike, *, format: str = "hf", overwrite: bool = False
) -> None:
    """Write ``model`` (masks baked in) as a dense checkpoint for stock kernels.

    Args:
        model: the (masked) Mamba-2 model.
        directory: output directory, written atomically as a whole; missing or empty, or any with
            ``overwrite``.
        format: ``"hf"`` (transformers ``Mamba2ForCausalLM``: ``config.json`` + ``model.safetensors``)
            or ``"mamba_ssm"`` (``config.json`` + ``pytorch_model.bin``).
        overwrite: replace a non-empty ``directory`` (everything in it is removed).

    Raises:
        ExportError: ``zero_transition`` state masks; per-head ``remove`` masks that differ inside
            a group; with ``format="hf"``, an architecture transformers cannot run.
        OutputPathError (a ``ValueError``): ``directory`` is a file, is not empty and
            ``overwrite`` is false, or cannot be written; raised before anything is written.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format: expected one of {EXPORT_FORMATS}, got {format!r}")
    config = model.config
    unsupported = config.hf_unsupported
    if format == "hf" and unsupported:
        raise ExportError(
            f"transformers' Mamba2ForCausalLM cannot express {', '.join(unsupported)}; export with "
            "format='mamba_ssm'"
        )
    tensors, d_state = stock_mamba2_state_dict(model)
    stock_config = replace(config, d_state=d_state)
    write = write_hf_checkpoint if format == "hf" else write_mamba_ssm_checkpoint
    with atomic_directory(directory, overwrite=overwrite, key_files=(CONFIG_NAME,)) as staging:
        write(staging, stock_config, tensors, dtype=model.dtype)
