"""Pruning the projections of a Mamba mixer: SparseGPT, Wanda, magnitude, random.

Linear projections (``in_proj``, ``x_proj``, ``dt_proj``, ``out_proj``) are pruned along their
inputs: unstructured (an exact count per module) or N:M (every group of ``M`` consecutive input
columns of a row keeps ``N``). The depthwise ``conv1d`` is ``d_inner`` independent filters of
``d_conv`` taps: it is pruned per channel, each channel with its own ``(d_conv, d_conv)``
Hessian, never as a dense matrix.

* **SparseGPT** (Frantar & Alistarh, 2023): layer-wise OBS with the Hessian ``H = 2 X X^T / N``
  of the module's calibration inputs, dampening ``percdamp * mean(diag H)`` (1 %), blocks of 128
  columns with the adaptive mask chosen at the start of each block (saliency
  ``w^2 / [H^-1]_jj^2``), and the OBS update of the not-yet-processed weights.
* **Wanda** (Sun et al., 2023): ``|w_ij| * ||x_j||_2``, compared within each output row.
* **magnitude**: ``|w|`` over the whole module. **random**: seeded uniform scores.
* **SNIP** (Lee et al., 2019): ``|w * dL/dw|`` with ``L`` the calibration language-model loss of
  the dense model (:mod:`.snip` computes it), compared over the whole module like magnitude.

:func:`allocate_sparsity` implements the sensitivity-aware allocation (``--alpha``).
"""

from __future__ import annotations

import logging
import math

import torch

__all__ = [
    "ConvStatistics",
    "LinearStatistics",
    "allocate_sparsity",
    "damped_cholesky",
    "damped_inverse",
    "inverse_hessian_factor",
    "lowest_mask",
    "prune_conv1d",
    "prune_linear",
    "round_to_total",
    "sparsegpt_prune",
    "sparsegpt_prune_rows",
    "split_counts",
]

logger = logging.getLogger(__name__)

DAMP_RETRIES = 6


# ---------------------------------------------------------------------- integer bookkeeping
def round_to_total(ideal: list[float], total: int, caps: list[int] | None = None) -> list[int]:
    """Integers close to ``ideal`` that sum exactly to ``total`` (largest remainder method).

    Floors are taken first; the remaining units go to the largest fractional parts (ties: lower
    index first). ``caps`` bounds each entry from above. Deterministic.
    """
    caps = caps if caps is not None else [1 << 62] * len(ideal)
    base = [min(math.floor(x + 1e-9), c) for x, c in zip(ideal, caps)]
    base = [max(0, b) for b in base]
    rest = total - sum(base)
    order = sorted(range(len(ideal)), key=lambda i: (-(ideal[i] - base[i]), i))
    while rest > 0:
        progressed = False
        for i in order:
            if rest == 0:
                break
            if base[i] < caps[i]:
                base[i] += 1
                rest -= 1
                progressed = True
        if not progressed:
            raise ValueError(f"cannot distribute {total} units within caps {caps}")
    while rest < 0:
        progressed = False
        for i in reversed(order):
            if rest == 0:
                break
            if base[i] > 0:
                base[i] -= 1
                rest += 1
                progressed = True
        if not progressed:
            raise ValueError(f"cannot distribute {total} units")
    return base


def split_counts(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` pruned entries over groups in proportion to their ``sizes`` (exact sum)."""
    whole = sum(sizes)
    if whole == 0:
        return [0] * len(sizes)
    return round_to_total([total * s / whole for s in sizes], total, caps=list(sizes))


def lowest_mask(
    scores: torch.Tensor,
    n_prune: int | None = None,
    *,
    nm: tuple[int, int] | None = None,
    per_row: bool = False,
) -> torch.Tensor:
    """Bool ``(rows, cols)`` mask, ``True`` = pruned, of the lowest ``scores``.

    Args:
        scores: ``(rows, cols)`` (lower = pruned first; ties: lower index first).
        n_prune: entries to prune (unstructured). With ``per_row`` they are split over rows as
            evenly as possible (:func:`split_counts`), else taken over the whole matrix.
        nm: ``(N, M)``: in every row, every group of ``M`` consecutive columns prunes ``M - N``.
    """
    rows, cols = scores.shape
    if nm is not None:
        keep_n, m = nm
        groups = scores.reshape(rows, cols // m, m)
        order = torch.sort(groups, dim=-1, stable=True).indices
        mask = torch.zeros_like(groups, dtype=torch.bool)
        mask.scatter_(-1, order[..., : m - keep_n], True)
        return mask.reshape(rows, cols)
    assert n_prune is not None
    if per_row:
        counts = torch.tensor(split_counts(n_prune, [cols] * rows), device=scores.device)
        order = torch.sort(scores, dim=1, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(cols, device=scores.device).expand(rows, cols).contiguous())
        return ranks < counts[:, None]
    flat = scores.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    mask[order[:n_prune]] = True
    return mask.reshape(rows, cols)


# ---------------------------------------------------------------------- statistics
class LinearStatistics:
    """Input statistics of one linear module: ``X^T X`` (``full``) or its diagonal.

    ``add(x)`` takes the module's inputs ``(..., d_in)``; :meth:`hessian` returns
    ``H = 2 X^T X / N`` (SparseGPT's normalisation) and :meth:`col_sq` the column sums ``||x_j||^2``.
    """

    def __init__(self, d_in: int, *, full: bool, device: torch.device | str) -> None:
        self.full = full
        self.ntok = 0
        self.xtx = torch.zeros((d_in, d_in) if full else (d_in,), dtype=torch.float32, device=device)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        X = x.reshape(-1, x.shape[-1]).float()
        self.ntok += X.shape[0]
        if self.full:
            self.xtx.addmm_(X.T, X)
        else:
            self.xtx += X.square().sum(0)

    def hessian(self) -> torch.Tensor:
        return self.xtx * (2.0 / max(self.ntok, 1))

    def col_sq(self) -> torch.Tensor:
        return torch.diagonal(self.xtx) if self.full else self.xtx


class ConvStatistics:
    """Per-channel input statistics of the depthwise causal conv1d.

    The output of channel ``c`` at step ``t`` is ``sum_j w[c, j] x[c, t - k + 1 + j]``: a linear map
    of the window ``X_{c,t} = x[c, t-k+1 .. t]`` (zero left padding). ``H_c = 2 sum_t X X^T / N``,
    ``(d, k, k)`` (``full``) or its diagonal ``(d, k)``.
    """

    def __init__(self, d: int, k: int, *, full: bool, device: torch.device | str) -> None:
        self.k, self.full, self.ntok = k, full, 0
        shape = (d, k, k) if full else (d, k)
        self.xtx = torch.zeros(shape, dtype=torch.float32, device=device)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """``x``: the conv input ``(b, d, l)`` (the x half of ``in_proj``'s output)."""
        b, _, l = x.shape
        self.ntok += b * l
        xp = torch.nn.functional.pad(x.float(), (self.k - 1, 0))
        win = xp.unfold(-1, self.k, 1)  # (b, d, l, k)
        if self.full:
            self.xtx += torch.einsum("bdlj,bdlk->djk", win, win)
        else:
            self.xtx += win.square().sum((0, 2))

    def hessian(self) -> torch.Tensor:
        return self.xtx * (2.0 / max(self.ntok, 1))

    def col_sq(self) -> torch.Tensor:
        return torch.diagonal(self.xtx, dim1=-2, dim2=-1) if self.full else self.xtx


# ---------------------------------------------------------------------- inverse Hessians
def damped_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Lower Cholesky factor of ``H + damp I`` (batched over leading dims).

    ``damp = percdamp * mean(diag H)``; if the factorisation fails (H only positive semi-definite
    in float32) the dampening is multiplied by 10, up to 6 times, with a warning.
    """
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    damp = percdamp * diag.mean(-1, keepdim=True)
    damp = torch.where(damp > 0, damp, torch.ones_like(damp))
    eye = torch.eye(H.shape[-1], device=H.device, dtype=H.dtype)
    for attempt in range(DAMP_RETRIES + 1):
        L, info = torch.linalg.cholesky_ex(H + damp[..., None] * eye)
        if not bool((info != 0).any()):
            if attempt:
                logger.warning(
                    "Hessian needed %dx the requested dampening to be positive definite", 10**attempt
                )
            return L
        damp = damp * 10
    raise RuntimeError("Hessian is not positive definite even with 1e6 x the requested dampening")


def damped_inverse(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """``(H + damp I)^-1``."""
    return torch.cholesky_inverse(damped_cholesky(H, percdamp))


def inverse_hessian_factor(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1`` (SparseGPT's ``Hinv``; batched)."""
    return torch.linalg.cholesky(damped_inverse(H, percdamp), upper=True)


# ---------------------------------------------------------------------- SparseGPT
@torch.no_grad()
def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    n_prune: int | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one weight matrix ``W`` ``(rows, cols)`` with input Hessian ``H`` ``(cols, cols)``.

    Args:
        n_prune: exact number of entries to prune (unstructured); split over the column blocks
            in proportion to their width, chosen in each block by the adaptive OBS saliency.
        nm: ``(N, M)`` along the columns (chosen at the start of every group of ``M``; the block
            size is rounded down to a multiple of ``M``).

    Returns:
        ``(W', pruned)``: float32 weights with pruned entries exactly 0 and the kept ones OBS-updated,
        and the bool mask of pruned entries. Inputs that never fire (``H_jj = 0``) are pruned first.
    """
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    rows, cols = W.shape
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    Hinv = inverse_hessian_factor(H, percdamp)
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    if nm is not None:  # N:M groups never straddle a block
        blocksize = max(nm[1], blocksize - blocksize % nm[1])
    starts = list(range(0, cols, blocksize))
    block_counts = (
        split_counts(n_prune, [rows * (min(s + blocksize, cols) - s) for s in starts]) if nm is None else None
    )
    for bi, i1 in enumerate(starts):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diagonal(Hinv1)
        dead1 = dead[i1:i2]
        if nm is None:
            assert block_counts is not None
            sal = W1.square() / d1[None].square()
            sal[:, dead1] = -1.0
            mask1 = lowest_mask(sal, block_counts[bi])
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                m = nm[1]
                sal = W1[:, j : j + m].square() / d1[None, j : j + m].square()
                sal[:, dead1[j : j + m]] = -1.0
                mask1[:, j : j + m] = lowest_mask(sal, nm=nm)
            w = W1[:, j]
            q = torch.where(mask1[:, j], torch.zeros_like(w), w)
            Q1[:, j] = q
            err = (w - q) / Hinv1[j, j]
            W1[:, j:] -= err[:, None] * Hinv1[j, j:][None, :]
            Err1[:, j] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W[pruned] = 0.0
    return W, pruned


@torch.no_grad()
def sparsegpt_prune_rows(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    n_prune: int | None = None,
    nm: tuple[int, int] | None = None,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT where every row has its own Hessian: ``W`` ``(r, k)``, ``H`` ``(r, k, k)``.

    Used for the depthwise conv (a row = a channel's filter). The mask is chosen once over the
    whole module (``n_prune``, saliency ``w^2 / [H_r^-1]_jj^2``) or per N:M group, then the OBS
    update runs column by column, batched over rows.
    """
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    k = W.shape[1]
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    dead = diag == 0
    diag.add_(dead.float())  # H[r, j, j] = 1 where the input never fires (diagonal is a view)
    Hinv = inverse_hessian_factor(H, percdamp)  # (r, k, k)
    d = torch.diagonal(Hinv, dim1=-2, dim2=-1)
    sal = W.square() / d.square()
    sal[dead] = -1.0
    pruned = lowest_mask(sal, n_prune, nm=nm)
    for j in range(k):
        w = W[:, j]
        q = torch.where(pruned[:, j], torch.zeros_like(w), w)
        err = (w - q) / Hinv[:, j, j]
        W[:, j:] -= err[:, None] * Hinv[:, j, j:]
        W[:, j] = q
    W[pruned] = 0.0
    return W, pruned


# ---------------------------------------------------------------------- per-module entry points
def _random_scores(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(shape, generator=g).to(device)


@torch.no_grad()
def prune_linear(
    weight: torch.Tensor,
    stats: LinearStatistics | None,
    method: str,
    *,
    n_prune: int | None,
    nm: tuple[int, int] | None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    seed: int = 0,
    saliency: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a linear weight ``(out, in)`` along its inputs; returns ``(new weight float32, pruned mask)``.

    ``method``: ``sparsegpt`` (and ``sparsessm``, which uses SparseGPT for projections), ``wanda``,
    ``magnitude``, ``snip``, ``random``. ``stats`` is required for sparsegpt (full) and wanda,
    ``saliency`` (the weight's shape, higher = kept) for snip.
    """
    W = weight.detach().float()
    if method in ("sparsegpt", "sparsessm"):
        assert stats is not None and stats.full
        return sparsegpt_prune(
            W, stats.hessian(), n_prune=n_prune, nm=nm, blocksize=blocksize, percdamp=percdamp
        )
    if method == "wanda":
        assert stats is not None
        scores = W.abs() * stats.col_sq().sqrt()[None, :]
        mask = lowest_mask(scores, n_prune, nm=nm, per_row=True)
    elif method == "magnitude":
        mask = lowest_mask(W.abs(), n_prune, nm=nm)
    elif method == "snip":
        mask = lowest_mask(_checked_saliency(saliency, W), n_prune, nm=nm)
    elif method == "random":
        mask = lowest_mask(_random_scores(tuple(W.shape), seed, W.device), n_prune, nm=nm)
    else:
        raise ValueError(f"method: unknown projection pruning method {method!r}")
    return W.masked_fill(mask, 0.0), mask


def _checked_saliency(saliency: torch.Tensor | None, W: torch.Tensor) -> torch.Tensor:
    """``saliency`` as float32 in ``W``'s 2-D shape (the weight's own shape is accepted)."""
    if saliency is None:
        raise ValueError("saliency: method snip needs the |w * grad| saliency of the weight, got None")
    if saliency.numel() != W.numel():
        raise ValueError(
            f"saliency: expected {W.numel()} entries (weight shape {tuple(W.shape)}), "
            f"got {tuple(saliency.shape)}"
        )
    return saliency.detach().float().reshape(W.shape).to(W.device)


@torch.no_grad()
def prune_conv1d(
    weight: torch.Tensor,
    stats: ConvStatistics | None,
    method: str,
    *,
    n_prune: int | None,
    nm: tuple[int, int] | None,
    percdamp: float = 0.01,
    seed: int = 0,
    saliency: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune the depthwise conv weight ``(d, 1, k)`` per channel; returns ``(new weight, pruned mask)``
    in the weight's shape (float32). ``saliency`` as for :func:`prune_linear` (snip)."""
    d, _, k = weight.shape
    W = weight.detach().float().reshape(d, k)
    if method in ("sparsegpt", "sparsessm"):
        assert stats is not None and stats.full
        new, mask = sparsegpt_prune_rows(W, stats.hessian(), n_prune=n_prune, nm=nm, percdamp=percdamp)
        return new.reshape(d, 1, k), mask.reshape(d, 1, k)
    if method == "wanda":
        assert stats is not None
        mask = lowest_mask(W.abs() * stats.col_sq().sqrt(), n_prune, nm=nm, per_row=True)
    elif method == "magnitude":
        mask = lowest_mask(W.abs(), n_prune, nm=nm)
    elif method == "snip":
        mask = lowest_mask(_checked_saliency(saliency, W), n_prune, nm=nm)
    elif method == "random":
        mask = lowest_mask(_random_scores((d, k), seed, W.device), n_prune, nm=nm)
    else:
        raise ValueError(f"method: unknown projection pruning method {method!r}")
    return W.masked_fill(mask, 0.0).reshape(d, 1, k), mask.reshape(d, 1, k)


# ---------------------------------------------------------------------- allocation
def allocate_sparsity(
    modules: list[tuple[str, int, float]], sparsity: float, alpha: float
) -> dict[str, tuple[float, int]]:
    """Sensitivity-aware sparsity allocation over a set of modules.

    Args:
        modules: ``(name, parameter count, sensitivity)``; higher sensitivity = pruned less.
        sparsity: the target ``p``; alpha: half-width of the allowed range ``[p - alpha, p + alpha]``.

    Returns:
        ``{name: (sparsity_i, pruned_count_i)}``. Modules ranked by decreasing sensitivity get
        linearly increasing sparsities from ``p - alpha`` (most sensitive) to ``p + alpha`` (least),
        shifted (and clipped to the range) so the parameter-weighted mean is ``p``; the integer
        counts then sum exactly to ``round(p * total)`` (the builders' rounding rule), so the
        parameter-weighted mean is exactly ``p`` up to that one rounding.
    """
    if not modules:
        return {}
    names = [m[0] for m in modules]
    params = [int(m[1]) for m in modules]
    order = sorted(range(len(modules)), key=lambda i: (-float(modules[i][2]), i))
    k = len(modules)
    raw = [0.0] * k
    for rank, i in enumerate(order):
        raw[i] = sparsity if k == 1 else sparsity - alpha + 2 * alpha * rank / (k - 1)
    lo, hi = sparsity - alpha, sparsity + alpha
    total_params = sum(params)

    def mean_with(shift: float) -> float:
        return sum(p * min(hi, max(lo, r + shift)) for p, r in zip(params, raw)) / total_params

    a, b = -2 * alpha - 1e-12, 2 * alpha + 1e-12
    for _ in range(200):
        mid = 0.5 * (a + b)
        if mean_with(mid) < sparsity:
            a = mid
        else:
            b = mid
    shift = 0.5 * (a + b)
    if abs(mean_with(0.0) - sparsity) <= 1e-15:
        shift = 0.0
    fractions = [min(hi, max(lo, r + shift)) for r in raw]
    total = total_params - math.floor((1.0 - sparsity) * total_params + 0.5)
    counts = round_to_total([f * p for f, p in zip(fractions, params)], total, caps=params)
    return {name: (frac, cnt) for name, frac, cnt in zip(names, fractions, counts)}
