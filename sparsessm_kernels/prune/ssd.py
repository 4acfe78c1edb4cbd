"""Pruning the SSM of a Mamba-2 (SSD) mixer: per-head transitions (``A_log``) and per-group states.

In Mamba-2 ``A`` is one scalar per head and the state columns of ``B`` / ``C`` are shared by the
heads of a group, so the two structured SSM targets are (``docs/pruning.md``, "Mamba-2"):

* ``A_log`` (``--targets ssm``): a head's transition is zeroed (``head_transition_mask``, the
  SparseSSM ``A_log`` pruning on Mamba-2). ``sparsessm`` scores a head by SparseSSM's saliency
  summed over its ``(p, n)`` states: ``sum_t w_t exp(dt_t A_h)^2 ||h_{t-1}[h]||^2`` (score
  ``sparsessm``) or ``A_log_h^2 sum_t w_t ||h_{t-1}[h]||^2`` (score ``a_log``), averaged over
  samples, or per-step votes (aggregation ``vote``); ``magnitude``: ``|A_log_h|``; ``random``.
* ``ssm_state`` (``--targets states``): state column ``n`` of group ``g`` is removed
  (``pruned_states="remove"``, a per-group state mask). ``sparsessm`` scores it by the OBS-style
  output saliency :func:`ssd_statistics` computes (derived in ``docs/pruning.md``); ``magnitude``:
  ``||W_B[g, n]|| * ||W_C[g, n]||``, the norms of the state's ``B`` and ``C`` rows of ``in_proj``;
  ``random``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.mamba2 import Mamba2Mixer
from ..ops.ssd.common import discretize_dt
from ..sparsity import column_mask, nm_mask, unstructured_mask
from .config import PruneConfig
from .ssm import time_weights, vote_scores

__all__ = [
    "SSDStatistics",
    "channel_weights",
    "head_mask",
    "ssd_statistics",
    "state_magnitude",
    "state_mask",
]


# ---------------------------------------------------------------------- statistics
def channel_weights(mixer: Mamba2Mixer, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Squared sensitivity of the mixer output to each scan output channel, ``(b, l, h, p)``.

    The scan output ``y`` goes through the gate / gated RMSNorm and ``out_proj``. Linearised with
    the RMS of each norm group held fixed, a change ``dy`` of channel ``c`` changes the norm's output
    by ``dy * silu(z) * w_norm[c] / rms``; with the diagonal of ``W_out^T W_out`` the squared error
    at the mixer output is ``sum_c dy_c^2 * k_c`` with ``k_c = (silu(z) w_norm[c] / rms)^2 *
    ||W_out[:, c]||^2`` -- what this returns. Without the gated norm ``k_c = silu(z)^2 ||W_out[:, c]||^2``.

    Args:
        mixer: the layer. y: ``(b, l, h, p)`` scan output before the gate (``D`` skip included).
        z: ``(b, l, d_inner)`` gate.
    """
    b, seqlen, h, p = y.shape
    gate = F.silu(z.float()).reshape(b, seqlen, h * p)
    col = mixer.out_proj.weight.detach().float().square().sum(0)  # (d_inner,)
    k = gate.square() * col
    if mixer.rmsnorm:
        yg = y.float().reshape(b, seqlen, h * p)
        if not mixer.norm.norm_before_gate:
            yg = yg * gate
        group = mixer.norm.group_size
        ms = yg.reshape(b, seqlen, -1, group).square().mean(-1, keepdim=True) + mixer.norm.eps
        inv = ms.rsqrt().expand(b, seqlen, h * p // group, group).reshape(b, seqlen, h * p)
        k = k * (mixer.norm.weight.detach().float() * inv).square()
    return k.reshape(b, seqlen, h, p)


@torch.no_grad()
def ssd_statistics(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    dt_bias: torch.Tensor | None,
    dt_limit: tuple[float, float],
    heads_kept: torch.Tensor | None = None,
    head_weights: torch.Tensor | None = None,
    head_per_step: bool = False,
    head_score: str = "sparsessm",
    state_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Saliencies of a layer's SSM, summed over the batch, from one float32 pass of the recurrence
    ``h_t = a_t h_{t-1} + dt_t x_t B_t^T`` (``a_t = exp(dt_t A)``, 0 for a transition-pruned head).

    Args:
        x: ``(b, l, h, p)``; dt: ``(b, l, h)`` before bias / softplus; A: ``(h,)``;
            B, C: ``(b, l, g, n)``; dt_bias: ``(h,)``; dt_limit: the clamp after softplus.
        heads_kept: bool ``(h,)``, the layer's current head transition mask (``None``: all).
        head_weights: ``(l,)`` time weights: also return ``"head"`` ``(h,)`` = ``sum_b sum_t w_t
            a_t^2 ||h_{t-1}||^2`` (score ``sparsessm``) or ``A_log^2``-free ``sum_b sum_t w_t
            ||h_{t-1}||^2`` (score ``a_log``; the caller multiplies by ``A_log^2``).
        head_per_step: with ``head_weights``, return ``"head_steps"`` ``(l, h)`` unweighted instead.
        state_weights: ``(b, l, h, p)`` output channel weights (:func:`channel_weights`): also
            return ``"state"`` ``(g, n)`` = ``sum_{b, t, h in g, p} k_{b,t,h,p} (C_t[g, n] h_t[h, p, n])^2``.
    """
    b, seqlen, nh, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dtm = discretize_dt(dt, dt_bias, True, dt_limit, torch.float32)  # (b, l, h)
    decay = torch.exp(dtm * A.float())
    if heads_kept is not None:
        decay = decay * heads_kept.to(decay.device, torch.float32)
    rep = nh // g
    Bh = B.float().repeat_interleave(rep, dim=2)  # (b, l, h, n)
    Ch = C.float().repeat_interleave(rep, dim=2)
    drive = dtm[..., None] * x.float()  # (b, l, h, p)
    state = torch.zeros(b, nh, p, n, dtype=torch.float32, device=x.device)
    out: dict[str, torch.Tensor] = {}
    if head_weights is not None:
        key = "head_steps" if head_per_step else "head"
        out[key] = torch.zeros((seqlen, nh) if head_per_step else (nh,), device=x.device)
    if state_weights is not None:
        out["state"] = torch.zeros(nh, n, device=x.device)
    for t in range(seqlen):
        a = decay[:, t]  # (b, h)
        if head_weights is not None:
            sq = state.square().sum((2, 3))  # ||h_{t-1}||^2 per (b, h)
            if head_score == "sparsessm":
                sq = sq * a.square()
            if head_per_step:
                out["head_steps"][t] = sq.sum(0)
            else:
                out["head"] += float(head_weights[t]) * sq.sum(0)
        state = a[:, :, None, None] * state + drive[:, t, :, :, None] * Bh[:, t, :, None, :]
        if state_weights is not None:
            contrib = (Ch[:, t, :, None, :] * state).square()  # (b, h, p, n)
            out["state"] += (contrib * state_weights[:, t, :, :, None].float()).sum((0, 2))
    if "state" in out:
        out["state"] = out["state"].reshape(g, rep, n).sum(1)
    return out


class SSDStatistics:
    """Accumulates one layer's ``A_log`` (``kind="A_log"``) or state (``kind="ssm_state"``)
    statistics batch by batch (per-sample means, like :class:`~.ssm.SSMStatistics`)."""

    def __init__(self, mixer: Mamba2Mixer, cfg: PruneConfig, kind: str, seqlen: int) -> None:
        self.mixer, self.cfg, self.kind, self.nsamples = mixer, cfg, kind, 0
        self.weights = time_weights(
            cfg.time_weights, seqlen, power=cfg.power, gamma=cfg.gamma, window=cfg.window
        )
        self.acc: torch.Tensor | None = None

    @property
    def needs_data(self) -> bool:
        return self.cfg.method == "sparsessm"

    @torch.no_grad()
    def add_batch(self, inter: dict[str, torch.Tensor]) -> None:
        """``inter``: the layer's scan inputs (``x``, ``dt``, ``B``, ``C``, and ``y``, ``z`` for states)
        from :func:`~.capture_mamba2.mamba2_intermediates`."""
        m, cfg = self.mixer, self.cfg
        self.nsamples += inter["x"].shape[0]
        A_log = m.A_log.detach().float()
        args = {
            "dt_bias": m.dt_bias.detach().float(),
            "dt_limit": m.dt_limit,
            "heads_kept": m.head_transition_mask,
        }
        if self.kind == "A_log":
            vote = cfg.aggregation == "vote"
            stats = ssd_statistics(
                inter["x"],
                inter["dt"],
                -torch.exp(A_log),
                inter["B"],
                inter["C"],
                head_weights=self.weights.to(inter["x"].device),
                head_per_step=vote,
                head_score=cfg.score,
                **args,
            )
            value = stats["head_steps" if vote else "head"]
            if cfg.score == "a_log":
                value = value * A_log.square()
        else:
            k = channel_weights(m, inter["y"], inter["z"])
            value = ssd_statistics(
                inter["x"], inter["dt"], -torch.exp(A_log), inter["B"], inter["C"], state_weights=k, **args
            )["state"]
        self.acc = value if self.acc is None else self.acc + value

    def scores(self) -> torch.Tensor:
        """Keep-scores (higher = kept): ``(h,)`` for ``A_log`` (or ``(l, h)`` per-step for vote),
        ``(g, n)`` for states."""
        m, cfg = self.mixer, self.cfg
        if cfg.method == "magnitude":
            return m.A_log.detach().float().abs() if self.kind == "A_log" else state_magnitude(m)
        if cfg.method == "random":
            shape = (m.nheads,) if self.kind == "A_log" else (m.ngroups, m.d_state)
            seed = int(cfg.seed) * 1_000_003 + 7919 * (m.layer_idx + 1) + (0 if self.kind == "A_log" else 13)
            return torch.rand(shape, generator=torch.Generator().manual_seed(seed % (2**63 - 1)))
        assert self.acc is not None
        return self.acc / max(self.nsamples, 1)


def state_magnitude(mixer: Mamba2Mixer) -> torch.Tensor:
    """``(g, n)``: ``||W_B[g, n]|| * ||W_C[g, n]||``, the norms of the state's ``B`` and ``C`` rows
    of ``in_proj`` (rows ``2 d_inner + g n + s`` and ``2 d_inner + G n + g n + s``)."""
    W = mixer.in_proj.weight.detach().float()
    gn = mixer.ngroups * mixer.d_state
    start = 2 * mixer.d_inner
    b_rows = W[start : start + gn].norm(dim=1)
    c_rows = W[start + gn : start + 2 * gn].norm(dim=1)
    return (b_rows * c_rows).reshape(mixer.ngroups, mixer.d_state)


# ---------------------------------------------------------------------- masks
def head_mask(scores: torch.Tensor, cfg: PruneConfig) -> torch.Tensor:
    """Bool ``(h,)`` kept heads from ``(h,)`` scores, or ``(l, h)`` per-step scores (vote)."""
    assert cfg.sparsity is not None
    if scores.dim() == 2:
        scores = vote_scores(scores[:, None, :], cfg.pattern, cfg.sparsity, cfg.nm)[0]
    nm = cfg.nm
    if nm is not None:
        return nm_mask(scores.float()[None], nm[0], nm[1])[0]
    return unstructured_mask(scores.float()[None], cfg.sparsity)[0]


def state_mask(scores: torch.Tensor, cfg: PruneConfig) -> torch.Tensor:
    """Bool ``(g, n)`` kept states from ``(g, n)`` scores: ``column`` keeps the
    ``round((1 - s) n)`` best of every group, ``N:M`` the ``N`` best of every ``M`` of a group."""
    assert cfg.sparsity is not None
    nm = cfg.nm
    if nm is not None:
        return nm_mask(scores.float(), nm[0], nm[1])
    return torch.stack([column_mask(row.float(), cfg.sparsity) for row in scores])
