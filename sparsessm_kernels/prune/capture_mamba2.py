"""The sequential, layer-by-layer pruning pipeline for Mamba-2 (SSD) models.

The same pipeline as :mod:`.capture` (Mamba-1): layer 0's inputs are captured, each layer visits
the device in turn, its selected modules are pruned in data-flow order (``in_proj``, ``conv1d``,
``A_log``, ``ssm_state``, ``out_proj``; :data:`~.config.MAMBA2_STAGE_ORDER`), each on activations
of the layer as pruned so far, and the pruned layer's outputs feed the next layer. Projections use
the shared SparseGPT / Wanda / magnitude / SNIP / random code and the sensitivity-aware
allocation; the SSM targets use :mod:`.ssd`.
"""

from __future__ import annotations

import logging
import time

import torch

from ..models import Mamba2LM
from ..models.conv import causal_conv_silu
from ..models.mamba2 import Mamba2Mixer
from ..ops import ssd_scan
from ..sparsity import kept_count
from .capture import (
    ModuleRecord,
    PruneResult,
    _normed,
    _sync,
    capture_layer0_inputs,
    check_calib_ids,
    projection_allocation,
    prune_projection_on_chunks,
    run_layers,
    snip_prepass,
)
from .config import PruneConfig, PruneConfigError, module_name
from .heads import FluctuationStatistics, channel_scores, keep_channels, keep_heads, remove_channels
from .ssd import SSDStatistics, head_mask, state_mask

__all__ = ["MAMBA2_INTERMEDIATE_STAGES", "mamba2_intermediates", "prune_mamba2_model"]

logger = logging.getLogger(__name__)

MAMBA2_INTERMEDIATE_STAGES = ("in_proj", "conv1d", "ssm", "out_proj", "out")
_STAGE_OF = {"A_log": "ssm", "ssm_state": "ssm"}


@torch.no_grad()
def mamba2_intermediates(
    mixer: Mamba2Mixer, hidden: torch.Tensor, upto: str = "out"
) -> dict[str, torch.Tensor]:
    """The inputs of every module of a Mamba-2 mixer, computed as ``Mamba2Mixer.forward`` does.

    Args:
        mixer: the layer's mixer (current weights and masks).
        hidden: ``(b, l, d_model)`` normalised layer input.
        upto: stop once this stage is known (:data:`MAMBA2_INTERMEDIATE_STAGES`, or a module kind:
            ``A_log`` / ``ssm_state`` = ``ssm``).

    Returns:
        keys (as far as computed): ``in_proj`` ``(b, l, d_model)``; ``conv1d`` ``(b, conv_dim, l)``
        (pre-conv ``x | B | C``), ``z`` ``(b, l, d_inner)``, ``dt`` ``(b, l, h)`` (before bias);
        ``x`` ``(b, l, h, p)``, ``B``, ``C`` ``(b, l, g, n)`` (the scan inputs); ``y`` ``(b, l, h, p)``
        (scan output, ``D`` skip included, before the gate) and ``out_proj`` ``(b, l, d_inner)``
        (gated, normalised: ``out_proj``'s input); ``out`` ``(b, l, d_model)`` (= ``mixer(hidden)``).
    """
    level = MAMBA2_INTERMEDIATE_STAGES.index(_STAGE_OF.get(upto, upto))
    out: dict[str, torch.Tensor] = {"in_proj": hidden}
    if level == 0:
        return out
    b, seqlen, _ = hidden.shape
    z, xbc, dt = mixer._split(mixer.in_proj(hidden))
    out["conv1d"], out["z"], out["dt"] = xbc.transpose(1, 2), z, dt
    if level == 1:
        return out
    xbc = causal_conv_silu(out["conv1d"], mixer.conv1d).transpose(1, 2)
    gn = mixer.ngroups * mixer.d_state
    x, B, C = xbc.split([mixer.d_inner, gn, gn], dim=-1)
    heads = (b, seqlen, mixer.nheads, mixer.headdim)
    out["x"] = x.reshape(heads)
    out["B"] = B.reshape(b, seqlen, mixer.ngroups, mixer.d_state)
    out["C"] = C.reshape(b, seqlen, mixer.ngroups, mixer.d_state)
    if level == 2:
        return out
    y = ssd_scan(
        out["x"],
        dt,
        mixer._A(),
        out["B"],
        out["C"],
        D=mixer._D(),
        z=None if mixer.rmsnorm else z.reshape(heads),
        dt_bias=mixer.dt_bias,
        dt_softplus=True,
        dt_limit=mixer.dt_limit,
        chunk_size=mixer.chunk_size,
        **mixer._sparse_args(hidden.device),
    )
    if mixer.rmsnorm:
        out["y"] = y
        gated = mixer.norm(y.reshape(b, seqlen, mixer.d_inner), z)
    else:  # the op applied the gate; y before it is the scan without z
        out["y"] = ssd_scan(
            out["x"],
            dt,
            mixer._A(),
            out["B"],
            out["C"],
            D=mixer._D(),
            dt_bias=mixer.dt_bias,
            dt_softplus=True,
            dt_limit=mixer.dt_limit,
            chunk_size=mixer.chunk_size,
            **mixer._sparse_args(hidden.device),
        )
        gated = y.reshape(b, seqlen, mixer.d_inner)
    out["out_proj"] = gated.to(hidden.dtype)
    if level == 3:
        return out
    out["out"] = mixer.out_proj(out["out_proj"])
    return out


def _upto(kind: str) -> str:
    """How far the intermediates must go for an SSM kind (states need ``y`` for their weights)."""
    return "out_proj" if kind == "ssm_state" else "ssm"


def _prune_ssm(
    model: Mamba2LM,
    layer: int,
    kind: str,
    chunks: list[torch.Tensor],
    cfg: PruneConfig,
    seqlen: int,
    result: PruneResult,
) -> tuple[float, float]:
    """Score and prune one layer's heads (``A_log``) or states (``ssm_state``); returns seconds."""
    block = model.backbone.layers[layer]
    mixer = block.mixer
    device = mixer.A_log.device
    assert cfg.sparsity is not None
    t0 = time.perf_counter()
    stats = SSDStatistics(mixer, cfg, kind, seqlen)
    if stats.needs_data:
        for h in chunks:
            stats.add_batch(mamba2_intermediates(mixer, _normed(block, h), _upto(kind)))
    _sync(device)
    t1 = time.perf_counter()
    scores = stats.scores().to(device)
    name = module_name(layer, kind)
    if kind == "A_log":
        keep = head_mask(scores, cfg)
        model.set_head_transition_mask(layer, keep)
        h = mixer.nheads
        target = cfg.sparsity if cfg.nm is not None else 1.0 - kept_count(h, cfg.sparsity) / h
        record = ModuleRecord(
            name, layer, kind, [h], h, int((~keep).sum()), target, cfg.method, cfg.pattern,
            {"pruned_heads": "zero_transition"},
        )  # fmt: skip
    else:
        keep = state_mask(scores, cfg)
        model.set_state_mask(layer, keep, pruned_states="remove")
        g, n = keep.shape
        target = cfg.sparsity if cfg.nm is not None else 1.0 - kept_count(n, cfg.sparsity) / n
        record = ModuleRecord(
            name, layer, kind, [g, n], g * n, int((~keep).sum()), target, cfg.method, cfg.pattern,
            {"pruned_states": "remove", "kept_per_group": [int(k) for k in keep.sum(1)]},
        )  # fmt: skip
    if cfg.method == "sparsessm":
        record.extra["score"] = "ssd_output" if kind == "ssm_state" else cfg.score
        if kind == "A_log":
            record.extra.update({"aggregation": cfg.aggregation, "time_weights": cfg.time_weights})
    result.modules.append(record)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def _prune_structured(
    model: Mamba2LM,
    layer: int,
    kind: str,
    chunks: list[torch.Tensor],
    cfg: PruneConfig,
    result: PruneResult,
) -> tuple[float, float]:
    """Score one layer's channels on its ``out_proj`` inputs and remove heads (``kind="heads"``) or
    head channels (``"headdim"``) physically; returns seconds."""
    block = model.backbone.layers[layer]
    mixer = block.mixer
    device = mixer.A_log.device
    assert cfg.sparsity is not None
    t0 = time.perf_counter()
    stats = None
    if cfg.method == "flap":
        stats = FluctuationStatistics(mixer.d_inner, device)
        for h in chunks:
            stats.add(mamba2_intermediates(mixer, _normed(block, h), "out_proj")["out_proj"])
    _sync(device)
    t1 = time.perf_counter()
    seed = (int(cfg.seed) * 1_000_003 + 7919 * (layer + 1) + 29) % (2**63 - 1)
    scores = channel_scores(mixer, cfg.method, stats, seed)
    if kind == "heads":
        keep = keep_heads(scores, mixer.ngroups, cfg.sparsity)[:, None].expand_as(scores).clone()
    else:
        keep = keep_channels(scores, cfg.sparsity)
    before = sum(p.numel() for p in mixer.parameters())
    shape = [mixer.nheads, mixer.headdim]
    remove_channels(model, layer, keep)
    after = sum(p.numel() for p in mixer.parameters())
    kept_heads = [int(i) for i in torch.nonzero(keep.any(1)).flatten()]
    target = (
        1.0 - (len(kept_heads) if kind == "heads" else mixer.headdim) / shape[0 if kind == "heads" else 1]
    )
    record = ModuleRecord(
        module_name(layer, kind), layer, kind, [mixer.nheads, mixer.headdim], before, before - after,
        target, cfg.method, "column", {"heads_before": shape[0], "headdim_before": shape[1]},
    )  # fmt: skip
    if kind == "heads":
        record.extra["kept_heads"] = kept_heads
    result.modules.append(record)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def prune_mamba2_model(
    model: Mamba2LM,
    calib_ids: torch.Tensor,
    cfg: PruneConfig,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune a Mamba-2 ``model`` in place, layer by layer (what :func:`~.capture.prune_model` runs
    for a :class:`~sparsessm_kernels.models.Mamba2LM`).

    Head masks (``A_log``) are set with :meth:`Mamba2LM.set_head_transition_mask`, state masks
    (``ssm_state``) with :meth:`Mamba2LM.set_state_mask` (per group, ``pruned_states="remove"``),
    projections are pruned in place. Arguments and result as for :func:`~.capture.prune_model`.
    """
    t_start = time.perf_counter()
    cfg = cfg.resolve()
    plan = cfg.check_model(model.config)
    for layer, kinds in plan.items():
        mixer = model.mixer(layer)
        if "ssm_state" in kinds and mixer.layout is not None:
            raise PruneConfigError(
                f"layer {layer} already has a state mask; prune the states of an unmasked model "
                "(or exclude that layer)"
            )
        if "A_log" in kinds and mixer.head_transition_mask is not None:
            raise PruneConfigError(
                f"layer {layer} already has a head transition mask; prune A_log of an unmasked model "
                "(or exclude that layer)"
            )
    check_calib_ids(calib_ids)
    device = torch.device(device) if device is not None else model.device
    nsamples, seqlen = calib_ids.shape
    result = PruneResult(config=cfg)
    result.d_state_before = [model.mixer(i).d_state for i in range(model.config.n_layer)]
    model.eval()
    timings = dict.fromkeys(("capture", "sensitivity", "statistics", "prune", "forward"), 0.0)
    with torch.no_grad():
        t0 = time.perf_counter()
        chunks = capture_layer0_inputs(model, calib_ids, device, cfg.batch_size)
        _sync(device)
        timings["capture"] = time.perf_counter() - t0
        alloc = projection_allocation(
            model, calib_ids, plan, cfg, device, result, timings, intermediates=mamba2_intermediates
        )
        snip = snip_prepass(model, calib_ids, plan, cfg, device, timings)

        def prune_one(layer: int, kind: str, chunks: list[torch.Tensor]) -> tuple[float, float]:
            if kind in ("A_log", "ssm_state"):
                return _prune_ssm(model, layer, kind, chunks, cfg, seqlen, result)
            if kind in ("heads", "headdim"):
                return _prune_structured(model, layer, kind, chunks, cfg, result)
            return prune_projection_on_chunks(
                model, layer, kind, chunks, cfg, alloc, snip, result, intermediates=mamba2_intermediates
            )

        run_layers(model, chunks, plan, prune_one, result, timings, device, progress)
    result.d_state_after = [model.mixer(i).d_state for i in range(model.config.n_layer)]
    if model.config.d_inner != model.mixer(0).d_inner or model.config.headdim != model.mixer(0).headdim:
        raise RuntimeError("layers were left with different head counts; the model has no single config")
    timings["total"] = time.perf_counter() - t_start
    result.timings = timings
    logger.info(
        "pruned %d modules of %d calibration windows x %d tokens in %.1fs",
        len(result.modules),
        nsamples,
        seqlen,
        timings["total"],
    )
    return result
