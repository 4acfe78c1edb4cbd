"""Export a masked model as a dense checkpoint that stock kernels run with the same outputs.

Stock transformers / mamba_ssm know nothing about state masks, so the masks are baked into the
weights:

* ``zero_transition`` (any mask kind): pruned states get ``A_log = 60.0``. Then
  ``A = -exp(60) ~ -1.14e26`` and ``delta * A < -104`` for every ``delta > ~1e-24``, so
  ``exp(delta * A)`` underflows to exactly ``0`` in float32: the pruned state's transition is 0
  while its feed-through ``C * delta * B * u`` stays -- exactly the zero-transition semantics.
  (See docs/models.md for where this stops being exact.)
* ``remove`` with a column mask (or a per-channel mask whose rows are all equal): the pruned
  states are dropped physically -- the ``A_log`` columns and the matching ``B`` / ``C`` rows of
  ``x_proj`` (rows ``dt_rank + n`` and ``dt_rank + N + n``) -- which is exact.
* ``remove`` with a genuinely per-channel mask cannot be expressed: ``B`` / ``C`` are shared by
  all channels and ``A_log = 60`` keeps the feed-through. It raises :class:`ExportError`.

A transformers config has one ``state_size``; if physical removal leaves layers with different
state sizes the export raises :class:`ExportError` naming them. LayerNorm models (mamba_ssm
``rms_norm=False``) cannot be written for transformers (``format="mamba_ssm"`` works).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from .._io import atomic_directory
from .checkpoint import CONFIG_NAME, write_hf_checkpoint, write_mamba_ssm_checkpoint
from .config import CheckpointFormatError

if TYPE_CHECKING:
    from .mamba import MambaLM

PRUNED_A_LOG = 60.0
"""``A_log`` written for zero-transition pruned states (``A = -exp(60) ~ -1.14e26``)."""

EXPORT_FORMATS = ("hf", "mamba_ssm")


class ExportError(CheckpointFormatError):
    """The masked model cannot be expressed as a stock (dense) checkpoint."""


@torch.no_grad()
def stock_state_dict(model: MambaLM) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The dense HF-keyed state dict with the masks baked in, and the per-layer state sizes.

    Returns:
        ``(tensors, d_states)``: CPU tensors in the model dtype (``lm_head.weight`` included even
        when tied) and the state size of every layer after physical removal.
    """
    config = model.config
    tensors = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    d_states: list[int] = []
    for i, blk in enumerate(model.backbone.layers):
        mixer = blk.mixer
        n, d, r = mixer.d_state, mixer.d_inner, mixer.dt_rank
        layout, mode = mixer.layout, mixer.pruned_states
        if layout is None:
            d_states.append(n)
            continue
        mask = layout.to("cpu").channel_mask(d)  # (d, n) bool
        a_key = f"backbone.layers.{i}.mixer.A_log"
        if mode == "zero_transition":
            a_log = tensors[a_key]
            a_log[~mask] = PRUNED_A_LOG
            d_states.append(n)
            continue
        # remove
        if not bool((mask == mask[:1]).all()):
            raise ExportError(
                f"layer {i}: a per-channel mask with pruned_states='remove' cannot be exported for stock "
                "kernels (B and C are shared by all channels, so a state cannot be removed from some "
                "channels only, and A_log=60 would keep its feed-through); use pruned_states="
                "'zero_transition', a column mask, or keep this package's kernels"
            )
        kept = torch.nonzero(mask[0]).flatten()
        if kept.numel() == 0:
            raise ExportError(
                f"layer {i}: the 'remove' mask prunes every state; a stock layer needs d_state >= 1"
            )
        if kept.numel() < n:
            x_key = f"backbone.layers.{i}.mixer.x_proj.weight"
            rows = torch.cat([torch.arange(r), r + kept, r + n + kept])
            tensors[a_key] = tensors[a_key][:, kept].contiguous()
            tensors[x_key] = tensors[x_key][rows].contiguous()
        d_states.append(int(kept.numel()))
    if config.tie_embeddings:
        tensors["lm_head.weight"] = tensors["backbone.embeddings.weight"]
    return tensors, d_states


def export_for_stock_kernels(
    model: MambaLM, directory: str | os.PathLike, *, format: str = "hf", overwrite: bool = False
) -> None:
    """Write ``model`` (masks included) as a dense checkpoint for stock kernels.

    Args:
        model: the (masked) model.
        directory: output directory, written atomically as a whole (see
            :meth:`MambaLM.save_pretrained`); missing or empty, or any with ``overwrite``.
        format: ``"hf"`` (transformers ``MambaForCausalLM``: ``config.json`` +
            ``model.safetensors``) or ``"mamba_ssm"`` (``config.json`` + ``pytorch_model.bin``).
        overwrite: replace a non-empty ``directory`` (everything in it is removed).

    Raises:
        ExportError: per-channel ``remove`` masks; layers left with different state sizes;
            LayerNorm models for ``format="hf"``.
        OutputPathError (a ``ValueError``): ``directory`` is a file, is not empty and
            ``overwrite`` is false, or cannot be written; raised before anything is written.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format: expected one of {EXPORT_FORMATS}, got {format!r}")
    config = model.config
    if format == "hf" and config.norm_type != "rms_norm":
        raise ExportError(
            "this model uses LayerNorm (mamba_ssm rms_norm=False), which transformers' MambaForCausalLM "
            "cannot express; export with format='mamba_ssm'"
        )
    tensors, d_states = stock_state_dict(model)
    if len(set(d_states)) > 1:
        listing = ", ".join(f"layer {i}: d_state={n}" for i, n in enumerate(d_states))
        raise ExportError(
            "a stock checkpoint holds one state size for all layers, but after removing pruned states the "
            f"layers differ ({listing}); use pruned_states='zero_transition' or the same column mask size "
            "in every layer"
        )
    stock_config = config.with_layer_d_states(d_states)
    write = write_hf_checkpoint if format == "hf" else write_mamba_ssm_checkpoint
    with atomic_directory(directory, overwrite=overwrite, key_files=(CONFIG_NAME,)) as staging:
        write(staging, stock_config, tensors, dtype=model.dtype)
