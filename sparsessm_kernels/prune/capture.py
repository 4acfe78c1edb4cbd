"""The sequential, layer-by-layer pruning pipeline (as SparseGPT runs it, but truly sequential).

1. Capture the inputs of layer 0 (the token embeddings) for the ``nsamples x seqlen``
   calibration tokens.
2. For each layer, on the device (one layer there at a time): for each selected module in
   data-flow order (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``out_proj``),
   run the layer's calibration inputs through the layer **as pruned so far** up to that module,
   gather its statistics, prune it. So every statistic is computed on activations produced by
   the already-pruned earlier layers and by the already-pruned modules before it in the same
   layer (SparseSSM's code fed the projection Hessians activations of the unpruned layer).
3. Recompute the layer's outputs with the pruned weights and masks (the model's own forward,
   so the kernels' semantics) and move on: they are the next layer's inputs.

With sensitivity-aware allocation (``alpha > 0``) a pre-pass over the dense model measures the
Hessian trace of every selected ``in_proj`` / ``out_proj`` first (the allocation must be known
before layer 0 is pruned).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._progress import progress as progress_bar
from ..models import Mamba2LM, MambaBlock, MambaLM, MambaMixer
from ..ops import MIXER_STAGES
from ..sparsity import kept_count
from .config import PruneConfig, PruneConfigError, module_name
from .projections import ConvStatistics, LinearStatistics, allocate_sparsity, prune_conv1d, prune_linear
from .snip import snip_saliency
from .ssm import SSMStatistics, apply_ssm_mask, module_seed, ssm_masks

__all__ = [
    "INTERMEDIATE_STAGES",
    "ModuleRecord",
    "PruneResult",
    "capture_layer0_inputs",
    "mixer_intermediates",
    "projection_allocation",
    "projection_statistics",
    "prune_model",
    "prune_projection",
    "prune_projection_on_chunks",
    "run_layers",
    "snip_prepass",
]

logger = logging.getLogger(__name__)

INTERMEDIATE_STAGES = MIXER_STAGES


# ---------------------------------------------------------------------- intermediates
@torch.no_grad()
def mixer_intermediates(
    mixer: MambaMixer, hidden: torch.Tensor, upto: str = "out"
) -> dict[str, torch.Tensor]:
    """The inputs of every module of a mixer, from the mixer's own staged forward
    (:meth:`MambaMixer.staged_forward`, i.e. :func:`sparsessm_kernels.ops.mixer_forward`).

    Args:
        mixer: the layer's mixer (current weights and state mask).
        hidden: ``(b, l, d_model)`` normalised layer input.
        upto: stop once the input of this module is known (see :data:`INTERMEDIATE_STAGES`).

    Returns:
        keys (as far as computed): ``in_proj`` ``(b, l, d_model)``, ``conv1d`` ``(b, d_inner, l)``
        (pre-conv x), ``x_proj`` ``(b, l, d_inner)``, ``u`` ``(b, d_inner, l)``, ``dt_proj``
        ``(b, l, dt_rank)``, ``delta`` ``(b, d_inner, l)`` (before bias and softplus), ``B``, ``C``
        ``(b, n, l)``, ``z`` ``(b, d_inner, l)``, ``out_proj`` ``(b, l, d_inner)`` (gated scan
        output) and ``out`` ``(b, l, d_model)`` (= ``mixer(hidden)``). ``z``, ``B`` and ``C`` are views
        of the ``in_proj`` / ``x_proj`` outputs, as the scan gets them.
    """
    if upto not in INTERMEDIATE_STAGES:
        raise ValueError(f"upto: expected one of {INTERMEDIATE_STAGES}, got {upto!r}")
    out: dict[str, torch.Tensor] = {}
    mixer.staged_forward(hidden, record=out, upto=upto)
    return out


def _normed(block: MambaBlock, hidden: torch.Tensor) -> torch.Tensor:
    """The block's normalised input (as ``MambaBlock.forward`` computes it)."""
    return block.norm(hidden.to(block.norm.weight.dtype))


# ---------------------------------------------------------------------- results
@dataclass
class ModuleRecord:
    """What happened to one pruned module."""

    name: str
    layer: int
    kind: str
    shape: list[int]
    params: int
    pruned: int
    target_sparsity: float
    method: str
    pattern: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Achieved fraction of pruned parameters (of the original module size)."""
        return self.pruned / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "layer": self.layer,
            "kind": self.kind,
            "shape": self.shape,
            "params": self.params,
            "pruned": self.pruned,
            "target_sparsity": round(self.target_sparsity, 8),
            "sparsity": round(self.sparsity, 8),
            "method": self.method,
            "pattern": self.pattern,
        }
        out.update(self.extra)
        return out


@dataclass
class PruneResult:
    """Outcome of :func:`prune_model`.

    Attributes:
        config: the resolved settings.
        modules: one :class:`ModuleRecord` per pruned module, in pipeline order.
        column_masks: ``{layer: bool (n,) keep mask}`` of physically removed states (column).
        allocation: ``{module name: {"sensitivity", "sparsity", "pruned"}}`` when ``alpha > 0``.
        timings: seconds per phase (``capture``, ``sensitivity``, ``statistics``, ``prune``,
            ``forward``, ``total``); ``statistics`` is the calibration time.
        layer_timings: per layer ``{"layer", "statistics", "prune", "forward"}`` seconds.
        d_state_before, d_state_after: state size of every layer.
    """

    config: PruneConfig
    modules: list[ModuleRecord] = field(default_factory=list)
    column_masks: dict[int, torch.Tensor] = field(default_factory=dict)
    allocation: dict[str, dict[str, float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    layer_timings: list[dict[str, float]] = field(default_factory=list)
    d_state_before: list[int] = field(default_factory=list)
    d_state_after: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def capture_layer0_inputs(
    model: MambaLM, calib_ids: torch.Tensor, device: torch.device, batch_size: int
) -> list[torch.Tensor]:
    """The inputs of layer 0 (token embeddings) of the calibration windows, in batches on ``device``."""
    emb = model.backbone.embeddings
    home = emb.weight.device
    emb.to(device)
    try:
        return [
            emb(calib_ids[i : i + batch_size].to(device)) for i in range(0, calib_ids.shape[0], batch_size)
        ]
    finally:
        emb.to(home)


def _module(mixer: MambaMixer, kind: str) -> torch.nn.Module:
    return getattr(mixer, kind)


def _sensitivity_prepass(
    model: MambaLM,
    calib_ids: torch.Tensor,
    plan: dict[int, list[str]],
    device: torch.device,
    batch_size: int,
    intermediates: Callable[..., dict[str, torch.Tensor]] = mixer_intermediates,
) -> dict[str, float]:
    """Hessian traces ``trace(2 X X^T / N)`` of the selected in_proj / out_proj on the dense model.

    ``intermediates(mixer, normed hidden, upto)`` gives the modules' inputs (the architecture's
    :func:`mixer_intermediates`)."""
    wanted = {layer: [k for k in kinds if k in ("in_proj", "out_proj")] for layer, kinds in plan.items()}
    last = max((layer for layer, kinds in wanted.items() if kinds), default=-1)
    traces: dict[str, float] = {}
    if last < 0:
        return traces
    hidden = capture_layer0_inputs(model, calib_ids, device, batch_size)
    for layer in range(last + 1):
        block = model.backbone.layers[layer]
        kinds = wanted[layer]
        home = block.norm.weight.device
        block.to(device)
        sums = dict.fromkeys(kinds, 0.0)
        ntok = 0
        for i, h in enumerate(hidden):
            if kinds:
                upto = "out_proj" if "out_proj" in kinds else "in_proj"
                inter = intermediates(block.mixer, _normed(block, h), upto)
                for k in kinds:
                    sums[k] += float(inter[k].float().square().sum())
                ntok += h.shape[0] * h.shape[1]
            if layer < last:
                hidden[i] = block(h)
        block.to(home)
        for k in kinds:
            traces[module_name(layer, k)] = 2.0 * sums[k] / max(ntok, 1)
    return traces


# ---------------------------------------------------------------------- the pipeline
def prune_model(
    model: MambaLM | Mamba2LM,
    calib_ids: torch.Tensor,
    cfg: PruneConfig,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` in place, layer by layer, on calibration windows ``calib_ids`` ``(N, l)``.

    A :class:`~sparsessm_kernels.models.Mamba2LM` goes to
    :func:`~.capture_mamba2.prune_mamba2_model` (same arguments and result).

    Args:
        model: the model (its weights stay where they are; each layer visits ``device`` in turn).
        calib_ids: ``(nsamples, seqlen)`` int64 calibration tokens.
        cfg: the settings (resolved and validated against the model here, before any work).
        device: where layers are processed (default: the model's device).
        progress: tqdm bar over layers.

    Returns:
        a :class:`PruneResult`. Unstructured / N:M ``A_log`` masks are set on the model
        (``zero_transition``); column pruning removes states (``model.config`` gets per-layer sizes).
    """
    if isinstance(model, Mamba2LM):
        from .capture_mamba2 import prune_mamba2_model  # it imports this module

        return prune_mamba2_model(model, calib_ids, cfg, device=device, progress=progress)
    t_start = time.perf_counter()
    cfg = cfg.resolve()
    plan = cfg.check_model(model.config)
    for layer, kinds in plan.items():
        if "A_log" in kinds and model.mixer(layer).layout is not None:
            raise PruneConfigError(
                f"layer {layer} already has a state mask; prune A_log of an unmasked model "
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

        alloc = projection_allocation(model, calib_ids, plan, cfg, device, result, timings)
        snip = snip_prepass(model, calib_ids, plan, cfg, device, timings)

        def prune_one(layer: int, kind: str, chunks: list[torch.Tensor]) -> tuple[float, float]:
            if kind == "A_log":
                return _prune_a_log(model, layer, chunks, cfg, seqlen, result)
            return prune_projection_on_chunks(model, layer, kind, chunks, cfg, alloc, snip, result)

        run_layers(model, chunks, plan, prune_one, result, timings, device, progress)

    result.d_state_after = [model.mixer(i).d_state for i in range(model.config.n_layer)]
    if result.d_state_after != result.d_state_before:
        model.config = model.config.with_layer_d_states(result.d_state_after)
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


def _prune_a_log(
    model: MambaLM,
    layer: int,
    chunks: list[torch.Tensor],
    cfg: PruneConfig,
    seqlen: int,
    result: PruneResult,
) -> tuple[float, float]:
    """Gather the ``A_log`` statistics of one layer (as pruned so far) and prune it.

    Returns ``(statistics seconds, prune seconds)``.
    """
    block = model.backbone.layers[layer]
    mixer = block.mixer
    name = module_name(layer, "A_log")
    device = mixer.A_log.device
    assert cfg.sparsity is not None
    t0 = time.perf_counter()
    stats = SSMStatistics(mixer, cfg, seqlen)
    if stats.needs_data:
        for h in chunks:
            inter = mixer_intermediates(mixer, _normed(block, h), "A_log")
            stats.add_batch(inter["u"], inter["delta"], inter["B"])
    _sync(device)
    t1 = time.perf_counter()
    keep, new_a_log = ssm_masks(stats)
    d, n = mixer.A_log.shape
    apply_ssm_mask(model, layer, keep, cfg.pattern, new_a_log)
    _sync(device)
    t2 = time.perf_counter()
    if cfg.pattern == "column":
        kept = int(keep.sum())
        extra = {"kept_states": [int(i) for i in torch.nonzero(keep).flatten()], "d_state": kept}
        pruned, target = d * (n - kept), 1.0 - kept_count(n, cfg.sparsity) / n
        result.column_masks[layer] = keep.cpu()
    else:
        pruned = int((~keep).sum())
        target = (d * n - kept_count(d * n, cfg.sparsity)) / (d * n) if cfg.nm is None else cfg.sparsity
        extra = {"pruned_states": "zero_transition"}
    record = ModuleRecord(name, layer, "A_log", [d, n], d * n, pruned, target, cfg.method, cfg.pattern, extra)
    result.modules.append(record)
    if cfg.method == "sparsessm":
        record.extra.update(
            {"score": cfg.score, "aggregation": cfg.aggregation, "time_weights": cfg.time_weights}
        )
    return t1 - t0, t2 - t1


def prune_projection_on_chunks(
    model: torch.nn.Module,
    layer: int,
    kind: str,
    chunks: list[torch.Tensor],
    cfg: PruneConfig,
    alloc: dict[str, tuple[float, int]],
    snip: dict[str, torch.Tensor],
    result: PruneResult,
    intermediates: Callable[..., dict[str, torch.Tensor]] = mixer_intermediates,
) -> tuple[float, float]:
    """Gather one projection's input statistics on the layer as pruned so far (``intermediates``:
    the architecture's :func:`mixer_intermediates`) and prune it.

    Returns ``(statistics seconds, prune seconds)``.
    """
    block = model.backbone.layers[layer]
    mixer = block.mixer
    module = _module(mixer, kind)
    device = module.weight.device
    t0 = time.perf_counter()
    conv = mixer.conv1d.weight.shape
    stats = projection_statistics(cfg, kind, module.weight, conv[0], conv[-1], device)
    if stats is not None:
        for h in chunks:
            stats.add(intermediates(mixer, _normed(block, h), kind)[kind])
    _sync(device)
    t1 = time.perf_counter()
    result.modules.append(prune_projection(module, layer, kind, stats, cfg, alloc, snip))
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


# ---------------------------------------------------------------------- shared by both architectures
def run_layers(
    model: torch.nn.Module,
    chunks: list[torch.Tensor],
    plan: dict[int, list[str]],
    prune_one: Callable[[int, str, list[torch.Tensor]], tuple[float, float]],
    result: PruneResult,
    timings: dict[str, float],
    device: torch.device,
    progress: bool,
) -> None:
    """The layer loop: each layer visits ``device``, ``prune_one(layer, kind, chunks)`` prunes its
    selected modules in ``plan`` order (returning ``(statistics s, prune s)``, after appending its
    :class:`ModuleRecord`), then the pruned layer's outputs become the next layer's inputs.

    ``chunks`` (the layer-0 inputs, in batches) is consumed; timings are added to ``timings`` and
    ``result.layer_timings``.
    """
    layers = model.backbone.layers
    for layer in progress_bar(range(len(layers)), desc="pruning layers", enabled=progress):
        block = layers[layer]
        home = block.norm.weight.device
        block.to(device)
        lt = {"layer": layer, "statistics": 0.0, "prune": 0.0, "forward": 0.0}
        for kind in plan[layer]:
            stat_s, prune_s = prune_one(layer, kind, chunks)
            result.modules[-1].extra["seconds"] = {"statistics": round(stat_s, 4), "prune": round(prune_s, 4)}
            lt["statistics"] += stat_s
            lt["prune"] += prune_s
        t0 = time.perf_counter()
        with torch.no_grad():
            chunks[:] = [block(h) for h in chunks]
        _sync(device)
        lt["forward"] = time.perf_counter() - t0
        block.to(home)
        for key in ("statistics", "prune", "forward"):
            timings[key] += lt[key]
        result.layer_timings.append(lt)
        logger.info(
            "layer %d: statistics %.2fs, prune %.2fs, forward %.2fs",
            layer,
            lt["statistics"],
            lt["prune"],
            lt["forward"],
        )
    chunks.clear()


def check_calib_ids(calib_ids: torch.Tensor) -> None:
    """``calib_ids`` must be ``(nsamples, seqlen)`` integer tokens."""
    if not isinstance(calib_ids, torch.Tensor) or calib_ids.dim() != 2 or calib_ids.dtype.is_floating_point:
        got = tuple(calib_ids.shape) if isinstance(calib_ids, torch.Tensor) else type(calib_ids).__name__
        raise ValueError(f"calib_ids: expected (nsamples, seqlen) integer tokens, got {got}")


def projection_statistics(
    cfg: PruneConfig,
    kind: str,
    weight: torch.Tensor,
    conv_channels: int,
    d_conv: int,
    device: torch.device,
) -> LinearStatistics | ConvStatistics | None:
    """Empty input statistics for one projection under ``cfg.method`` (``None``: the method needs none).

    ``conv_channels``: channels of the depthwise conv (``kind == "conv1d"``)."""
    if cfg.method not in ("sparsegpt", "sparsessm", "wanda"):
        return None
    full = cfg.method in ("sparsegpt", "sparsessm")
    if kind == "conv1d":
        return ConvStatistics(conv_channels, d_conv, full=full, device=device)
    return LinearStatistics(weight.shape[1], full=full, device=device)


def prune_projection(
    module: torch.nn.Module,
    layer: int,
    kind: str,
    stats: LinearStatistics | ConvStatistics | None,
    cfg: PruneConfig,
    alloc: dict[str, tuple[float, int]],
    snip: dict[str, torch.Tensor],
) -> ModuleRecord:
    """Prune one projection (linear or depthwise conv) in place with its gathered statistics.

    The pruned count: exact N:M, else the allocation's (``alpha > 0``), else the builders' rounding
    of ``cfg.sparsity``. ``snip``: saliencies by module name (method ``snip``).
    """
    name = module_name(layer, kind)
    weight = module.weight
    numel = weight.numel()
    assert cfg.sparsity is not None
    nm = cfg.nm
    if nm is not None:
        n_prune = None
        target = cfg.sparsity
    elif name in alloc:
        n_prune = alloc[name][1]
        target = alloc[name][0]
    else:
        n_prune = numel - kept_count(numel, cfg.sparsity)
        target = n_prune / numel
    kinds = ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj")
    seed = module_seed(cfg.seed, layer, salt=101 * (1 + kinds.index(kind)))
    saliency = snip.get(name)
    if kind == "conv1d":
        new, mask = prune_conv1d(
            weight,
            stats,  # type: ignore[arg-type]
            cfg.method,
            n_prune=n_prune,
            nm=nm,
            percdamp=cfg.percdamp,
            seed=seed,
            saliency=saliency,
        )
    else:
        new, mask = prune_linear(
            weight,
            stats,  # type: ignore[arg-type]
            cfg.method,
            n_prune=n_prune,
            nm=nm,
            blocksize=cfg.blocksize,
            percdamp=cfg.percdamp,
            seed=seed,
            saliency=saliency,
        )
    with torch.no_grad():
        weight.copy_(new.to(weight.dtype))
    method = "sparsegpt" if cfg.method == "sparsessm" else cfg.method
    return ModuleRecord(
        name, layer, kind, list(weight.shape), numel, int(mask.sum()), float(target), method, cfg.pattern
    )


def projection_allocation(
    model: torch.nn.Module,
    calib_ids: torch.Tensor,
    plan: dict[int, list[str]],
    cfg: PruneConfig,
    device: torch.device,
    result: PruneResult,
    timings: dict[str, float],
    intermediates: Callable[..., dict[str, torch.Tensor]] = mixer_intermediates,
) -> dict[str, tuple[float, int]]:
    """Sensitivity-aware allocation of the selected in_proj / out_proj (``{}`` when ``alpha == 0``).

    Fills ``result.allocation`` and ``timings["sensitivity"]``."""
    alloc: dict[str, tuple[float, int]] = {}
    if not (cfg.alpha and cfg.alpha > 0):
        return alloc
    t0 = time.perf_counter()
    traces = _sensitivity_prepass(model, calib_ids, plan, device, cfg.batch_size, intermediates)
    for kind in ("in_proj", "out_proj"):
        group = [
            (name, _module(model.mixer(int(name.split(".")[2])), kind).weight.numel(), trace)
            for name, trace in traces.items()
            if name.endswith("." + kind)
        ]
        assert cfg.sparsity is not None
        alloc.update(allocate_sparsity(group, cfg.sparsity, cfg.alpha))
    for name, (frac, count) in alloc.items():
        result.allocation[name] = {"sensitivity": traces[name], "sparsity": frac, "pruned": count}
    _sync(device)
    timings["sensitivity"] = time.perf_counter() - t0
    logger.info("allocation: %s", {k: round(v[0], 4) for k, v in alloc.items()})
    return alloc


def snip_prepass(
    model: torch.nn.Module,
    calib_ids: torch.Tensor,
    plan: dict[int, list[str]],
    cfg: PruneConfig,
    device: torch.device,
    timings: dict[str, float],
) -> dict[str, torch.Tensor]:
    """SNIP saliencies of every selected projection (``{}`` unless ``cfg.method == "snip"``), from
    the dense model; the time goes to ``timings["sensitivity"]``."""
    if cfg.method != "snip":
        return {}
    t0 = time.perf_counter()
    params = {
        module_name(layer, kind): _module(model.mixer(layer), kind).weight
        for layer, kinds in plan.items()
        for kind in kinds
    }
    with torch.enable_grad():
        out = snip_saliency(model, calib_ids, params, device=device, batch_size=cfg.batch_size)
    _sync(device)
    timings["sensitivity"] = timings.get("sensitivity", 0.0) + time.perf_counter() - t0
    return out
