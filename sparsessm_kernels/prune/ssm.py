"""Pruning the SSM state transition ``A_log`` of a Mamba mixer.

Statistics (:class:`SSMStatistics`) are gathered batch by batch from the scan inputs of a layer
(``u``, ``delta``, ``B``, ``delta_bias``: the outputs of the already-pruned projections) and turned
into importance scores (higher = kept) and masks by :func:`ssm_masks`:

* ``sparsessm`` / ``score="sparsessm"``: the OBS saliency of zeroing the discrete transition of
  state ``(c, s)`` at step ``t``, ``exp(delta_t A)^2 h_{t-1}^2``, averaged over calibration samples
  as a per-sample product (:func:`sparsessm_kernels.ops.state_saliency`).
* ``sparsessm`` / ``score="a_log"``: ``A_log^2 h_{t-1}^2`` (the paper's Theorem 1 form).
* aggregation over time ``weighted`` (``sum_t w_t score_t``, :func:`time_weights`) or ``vote``
  (:func:`vote_scores`).
* baselines: ``magnitude`` (smallest ``|A_log|`` pruned), ``sparsegpt`` (``A_log`` as a linear map
  with input ``h``, one ``(n, n)`` Hessian pooled over channels, OBS update of the kept entries),
  ``wanda`` (``|A_log| * ||h||``), ``random``.

Unstructured and N:M masks are applied with ``zero_transition`` semantics (``model.set_state_mask``);
column masks remove the states physically (:func:`remove_states`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models import MambaMixer
from ..ops import state_saliency
from ..sparsity import StateSparsity, column_mask, kept_count, nm_mask, unstructured_mask
from .config import PruneConfig
from .projections import damped_inverse, sparsegpt_prune

__all__ = [
    "SSMStatistics",
    "apply_ssm_mask",
    "remove_states",
    "ssm_masks",
    "state_trajectory_stats",
    "time_weights",
    "vote_scores",
]

VOTE_CHUNK = 64
"""Time steps per chunk when counting votes (bounds the ``(steps, K)`` index tensors)."""


# ---------------------------------------------------------------------- time weights
def time_weights(
    kind: str, seqlen: int, *, power: float = 1.0, gamma: float = 0.9, window: float = 0.25
) -> torch.Tensor:
    """Aggregation weights ``w_t`` over the steps ``t = 0 .. seqlen - 1``, normalised to sum 1.

    * ``power``: ``(t + 1) ** -power`` (SparseSSM's default, ``power = 1``);
    * ``uniform``: ``1``;
    * ``window``: ``1`` for the first ``ceil(window * seqlen)`` steps, else ``0``;
    * ``discount``: ``gamma ** t``.

    The normalisation does not change any ranking; it keeps scores comparable across ``seqlen``.
    """
    t = torch.arange(seqlen, dtype=torch.float64)
    if kind == "power":
        w = (t + 1.0).pow(-float(power))
    elif kind == "uniform":
        w = torch.ones(seqlen, dtype=torch.float64)
    elif kind == "window":
        k = max(1, math.ceil(window * seqlen))
        w = (t < k).to(torch.float64)
    elif kind == "discount":
        w = torch.full((seqlen,), float(gamma), dtype=torch.float64).pow(t)
    else:
        raise ValueError(f"time weights: expected power, uniform, window or discount, got {kind!r}")
    return (w / w.sum()).to(torch.float32)


# ---------------------------------------------------------------------- state trajectory
def _discretize(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, delta_bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    dt = F.softplus(dt)  # (b, d, l)
    return dt, (dt * u.float()), A.float(), B.float()


@torch.no_grad()
def state_trajectory_stats(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    *,
    weights: torch.Tensor | None = None,
    per_step: bool = False,
    hessian: bool = False,
) -> dict[str, torch.Tensor]:
    """Sums over samples of functions of the pre-transition states ``h_{t-1}`` of one layer.

    The recurrence is the model's (``delta_softplus=True``, dense ``A``): ``h_t = exp(dt_t A) h_{t-1}
    + dt_t u_t B_t``, ``h_{-1} = 0``. Runs one batched step per time step (vectorised over samples,
    channels and states).

    Args:
        u, delta: ``(b, d, l)``; A: ``(d, n)``; B: ``(b, n, l)``; delta_bias: ``(d,)``.
        weights: ``(l,)`` time weights for ``"h2"`` (default all ones).
        per_step: also return ``"h2_steps"`` ``(l, d, n)`` = ``sum_b h_{t-1}^2``.
        hessian: also return ``"H"`` ``(n, n)`` = ``sum_{b, t, c} h_{t-1}[c] h_{t-1}[c]^T``.

    Returns:
        ``{"h2": (d, n) sum_t w_t sum_b h_{t-1}^2, ...}`` in float32.
    """
    dt, dtu, A, B = _discretize(u, delta, A, B, delta_bias)
    b, d, l = u.shape
    n = A.shape[1]
    w = torch.ones(l) if weights is None else weights
    w = w.to(device=u.device, dtype=torch.float32)
    h = torch.zeros(b, d, n, device=u.device, dtype=torch.float32)
    h2 = torch.zeros(d, n, device=u.device, dtype=torch.float32)
    steps = torch.zeros(l, d, n, device=u.device, dtype=torch.float32) if per_step else None
    H = torch.zeros(n, n, device=u.device, dtype=torch.float64) if hessian else None
    for t in range(l):
        sq = h.square().sum(0)  # h_{t-1}^2 summed over samples
        h2.add_(sq, alpha=float(w[t]))
        if steps is not None:
            steps[t] = sq
        if H is not None and t > 0:
            flat = h.reshape(b * d, n)
            H += (flat.T @ flat).double()
        h = torch.exp(dt[:, :, t, None] * A) * h + dtu[:, :, t, None] * B[:, None, :, t]
    out = {"h2": h2}
    if steps is not None:
        out["h2_steps"] = steps
    if H is not None:
        out["H"] = H.float()
    return out


# ---------------------------------------------------------------------- statistics
class SSMStatistics:
    """Accumulates what the configured ``A_log`` method needs, one calibration batch at a time.

    Args:
        mixer: the layer (its ``A_log`` and ``dt_proj.bias`` are read).
        cfg: resolved :class:`PruneConfig`.
        seqlen: calibration window length (for the time weights).
    """

    def __init__(self, mixer: MambaMixer, cfg: PruneConfig, seqlen: int) -> None:
        self.cfg = cfg
        self.mixer = mixer
        self.seqlen = seqlen
        self.nsamples = 0
        self.weights = time_weights(
            cfg.time_weights, seqlen, power=cfg.power, gamma=cfg.gamma, window=cfg.window
        )
        self.acc: dict[str, torch.Tensor] = {}

    @property
    def needs_data(self) -> bool:
        """Whether the method uses calibration data at all."""
        return self.cfg.method not in ("magnitude", "random")

    def _add(self, key: str, value: torch.Tensor) -> None:
        if key in self.acc:
            self.acc[key] += value
        else:
            self.acc[key] = value.clone()

    @torch.no_grad()
    def add_batch(self, u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor) -> None:
        """Add one batch of scan inputs: ``u``, ``delta`` ``(b, d, l)`` (before bias), ``B`` ``(b, n, l)``."""
        cfg, mixer = self.cfg, self.mixer
        b = u.shape[0]
        self.nsamples += b
        A = -torch.exp(mixer.A_log.detach().float())
        bias = mixer.dt_proj.bias.detach().float()
        if cfg.method == "sparsessm" and cfg.score == "sparsessm":
            vote = cfg.aggregation == "vote"
            sal = state_saliency(
                u,
                delta,
                A,
                B,
                bias,
                True,
                time_weights=None if vote else self.weights.to(u.device),
                per_step=vote,
                backend=cfg.backend,
            )
            self._add("steps" if vote else "score", sal.float() * b)  # per-batch mean -> sum
        elif cfg.method == "sparsessm":  # score a_log: needs h^2
            vote = cfg.aggregation == "vote"
            stats = state_trajectory_stats(u, delta, A, B, bias, weights=self.weights, per_step=vote)
            self._add("h2_steps" if vote else "h2", stats["h2_steps" if vote else "h2"])
        elif cfg.method == "wanda":
            self._add("h2", state_trajectory_stats(u, delta, A, B, bias)["h2"])
        elif cfg.method == "sparsegpt":
            self._add("H", state_trajectory_stats(u, delta, A, B, bias, hessian=True)["H"])

    def scores(self) -> torch.Tensor | None:
        """``(d, n)`` importance (higher = kept) for weighted methods; ``None`` for vote / sparsegpt."""
        cfg = self.cfg
        a_log = self.mixer.A_log.detach().float()
        n = max(self.nsamples, 1)
        if cfg.method == "magnitude":
            return a_log.abs()
        if cfg.method == "random":
            g = torch.Generator().manual_seed(module_seed(cfg.seed, self.mixer.layer_idx))
            return torch.rand(a_log.shape, generator=g).to(a_log.device)
        if cfg.method == "wanda":
            return a_log.abs() * (self.acc["h2"] / n).sqrt()
        if cfg.method == "sparsessm" and cfg.aggregation == "weighted":
            if cfg.score == "sparsessm":
                return self.acc["score"] / n
            return a_log.square() * self.acc["h2"] / n
        return None

    def step_scores(self) -> torch.Tensor:
        """``(l, d, n)`` per-step scores for ``aggregation="vote"``."""
        n = max(self.nsamples, 1)
        if self.cfg.score == "sparsessm":
            return self.acc["steps"] / n
        return self.mixer.A_log.detach().float().square()[None] * self.acc["h2_steps"] / n


def module_seed(seed: int, layer: int, salt: int = 0) -> int:
    """The random seed of one module of ``layer`` (``salt`` tells modules of a layer apart), from
    the run's ``seed``: the same run prunes every module alike."""
    return (int(seed) * 1_000_003 + 7919 * (layer + 1) + salt) % (2**63 - 1)


# ---------------------------------------------------------------------- vote
@torch.no_grad()
def vote_scores(
    steps: torch.Tensor, pattern: str, sparsity: float, nm: tuple[int, int] | None
) -> torch.Tensor:
    """Keep-scores from per-step votes: every step flags its lowest entries, the most flagged go.

    Args:
        steps: ``(l, d, n)`` per-step scores (step 0 has ``h_{-1} = 0`` and is skipped).
        pattern: ``unstructured`` (each step flags its ``K`` globally lowest ``(c, s)``), ``N:M``
            (each step flags the ``M - N`` lowest of every group) or ``column`` (each step flags the
            ``K`` lowest states by the score summed over channels).
        sparsity: pruned fraction (``K`` from the builders' rounding rule).

    Returns:
        ``(d, n)`` (``(n,)`` for column) keep-scores: ``-votes`` plus a tie-break in ``[0, 1)``
        from the uniformly aggregated score, so the mask builders prune the most flagged entries
        and, among equal counts, the lowest total score.
    """
    l, d, n = steps.shape
    usable = steps[1:] if l > 1 else steps
    total = usable.double().sum(0)  # uniform aggregation, for ties
    if pattern == "column":
        per_state = usable.sum(1)  # (l', n)
        k = n - kept_count(n, sparsity)
        counts = torch.zeros(n, dtype=torch.float64, device=steps.device)
        if k > 0:
            idx = torch.topk(per_state, k, dim=-1, largest=False).indices
            counts.scatter_add_(
                0, idx.reshape(-1), torch.ones(idx.numel(), dtype=torch.float64, device=idx.device)
            )
        tie = total.sum(0)
    else:
        counts = torch.zeros(d * n, dtype=torch.float64, device=steps.device)
        for start in range(0, usable.shape[0], VOTE_CHUNK):
            chunk = usable[start : start + VOTE_CHUNK]
            c = chunk.shape[0]
            if nm is not None:
                keep_n, m = nm
                groups = chunk.reshape(c, d, n // m, m)
                idx = torch.topk(groups, m - keep_n, dim=-1, largest=False).indices  # (c, d, g, m-n)
                flags = torch.zeros_like(groups, dtype=torch.float64).scatter_(-1, idx, 1.0)
                counts += flags.sum(0).reshape(-1)
            else:
                k = d * n - kept_count(d * n, sparsity)
                if k == 0:
                    break
                idx = torch.topk(chunk.reshape(c, -1), k, dim=-1, largest=False).indices
                counts.scatter_add_(
                    0, idx.reshape(-1), torch.ones(idx.numel(), dtype=torch.float64, device=idx.device)
                )
        counts = counts.reshape(d, n)
        tie = total
    ranks = torch.empty_like(tie.reshape(-1))
    order = torch.sort(tie.reshape(-1), stable=True).indices
    ranks[order] = torch.arange(order.numel(), dtype=ranks.dtype, device=ranks.device)
    tie_break = (ranks / max(order.numel(), 1)).reshape(tie.shape)
    return (-counts + tie_break).float()


# ---------------------------------------------------------------------- masks
def _mask_from_scores(
    scores: torch.Tensor, pattern: str, sparsity: float, nm: tuple[int, int] | None
) -> torch.Tensor:
    if pattern == "column":
        return column_mask(scores, sparsity)
    if nm is not None:
        return nm_mask(scores, nm[0], nm[1])
    return unstructured_mask(scores, sparsity)


@torch.no_grad()
def _sparsegpt_a_log(stats: SSMStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on ``A_log`` (rows = channels, inputs = states, pooled ``(n, n)`` Hessian).

    Returns ``(keep mask, updated A_log)``. Column masks use the column OBS saliency
    ``sum_c w_cs^2 / [H^-1]_ss`` and the structured OBS update of the kept columns.
    """
    cfg = stats.cfg
    a_log = stats.mixer.A_log.detach().float()
    d, n = a_log.shape
    H = stats.acc["H"].to(a_log.device) * (2.0 / max(stats.nsamples * stats.seqlen * d, 1))
    if cfg.pattern == "column":
        Hd = H.clone()
        dead = torch.diag(Hd) == 0
        Hd[dead, dead] = 1.0
        Hinv = damped_inverse(Hd, cfg.percdamp)
        saliency = (a_log.square() / torch.diag(Hinv)[None]).sum(0)
        saliency[dead] = -1.0
        keep = column_mask(saliency.double(), cfg.sparsity)
        pruned = torch.nonzero(~keep).flatten()
        new = a_log.clone()
        if pruned.numel():
            sub = Hinv[pruned][:, pruned]
            new -= a_log[:, pruned] @ torch.linalg.solve(sub, Hinv[pruned])
        return keep, new
    n_prune = d * n - kept_count(d * n, cfg.sparsity)
    new, pruned_mask = sparsegpt_prune(
        a_log, H, n_prune=n_prune, nm=cfg.nm, blocksize=cfg.blocksize, percdamp=cfg.percdamp
    )
    return ~pruned_mask, new


@torch.no_grad()
def ssm_masks(stats: SSMStatistics) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The keep mask of a layer (``(d, n)``, or ``(n,)`` for column) and, for ``sparsegpt``, the
    OBS-updated ``A_log`` (``None`` otherwise)."""
    cfg = stats.cfg
    assert cfg.sparsity is not None
    if cfg.method == "sparsegpt":
        keep, new = _sparsegpt_a_log(stats)
        return keep, new
    scores = stats.scores()
    if scores is None:  # vote
        scores = vote_scores(stats.step_scores(), cfg.pattern, cfg.sparsity, cfg.nm)
    return _mask_from_scores(scores, cfg.pattern, cfg.sparsity, cfg.nm), None


# ---------------------------------------------------------------------- applying
@torch.no_grad()
def remove_states(mixer: MambaMixer, keep: torch.Tensor) -> None:
    """Physically remove the states with ``keep[s] == False`` from a mixer (``remove`` semantics).

    ``A_log`` loses those columns and ``x_proj`` the matching ``B`` and ``C`` rows (rows
    ``dt_rank + s`` and ``dt_rank + n + s``); ``mixer.d_state`` becomes the kept count.
    """
    if mixer.layout is not None:
        raise ValueError(f"layer {mixer.layer_idx}: cannot remove states from a layer that has a state mask")
    n, r = mixer.d_state, mixer.dt_rank
    keep = keep.to(mixer.A_log.device)
    kept = torch.nonzero(keep).flatten()
    if kept.numel() == 0:
        raise ValueError(f"layer {mixer.layer_idx}: removing every state is not allowed")
    rows = torch.cat([torch.arange(r, device=kept.device), r + kept, r + n + kept])
    mixer.A_log = nn.Parameter(mixer.A_log.detach()[:, kept].clone())
    mixer.x_proj.weight = nn.Parameter(mixer.x_proj.weight.detach()[rows].clone())
    mixer.x_proj.out_features = int(rows.numel())
    mixer.d_state = int(kept.numel())


@torch.no_grad()
def apply_ssm_mask(
    model, layer: int, keep: torch.Tensor, pattern: str, new_a_log: torch.Tensor | None = None
) -> None:
    """Apply a keep mask to ``model``'s layer: column -> :func:`remove_states`; unstructured / N:M ->
    ``model.set_state_mask(layer, StateSparsity(keep, pattern), "zero_transition")``."""
    mixer = model.mixer(layer)
    if new_a_log is not None:
        mixer.A_log.copy_(new_a_log.to(mixer.A_log.dtype))
    if pattern == "column":
        remove_states(mixer, keep)
        return
    model.set_state_mask(layer, StateSparsity(keep.cpu(), pattern), pruned_states="zero_transition")
