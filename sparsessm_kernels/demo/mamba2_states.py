"""Per-group state masks for the demo's Mamba-2 from weight magnitudes (no calibration).

These scorers belong to the demo and the quality benchmark only: they give the embedded tiny
Mamba-2 state masks with what the models layer offers today (:meth:`Mamba2LM.set_state_mask
<sparsessm_kernels.models.Mamba2LM.set_state_mask>`), as a baseline for calibrated methods.

In Mamba-2 state ``j`` of group ``g`` is read through the ``B`` / ``C`` columns ``(g, j)``, which come
from one row of ``in_proj`` each followed by one depthwise convolution channel each. Pruning the
state removes both rows and both channels (``pruned_states="remove"``: exactly zeroing those ``B``
/ ``C`` columns). The scorers:

* ``bc-magnitude``: ``|B row| * |B conv| * |C row| * |C conv|``, the L2 norms of the ``in_proj`` rows
  and convolution kernels that make the state's ``B`` and ``C`` columns (the state's contribution
  to the output is ``C . h`` with ``h`` driven by ``B``, so the product of the two magnitudes);
* ``random``: uniform random scores (seeded), the floor any scorer should beat.

Every group keeps the same number of states, ``n - round(sparsity * n)`` (at least 1), so the decode
cache is compact: ``(b, nheads, headdim, k)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models import Mamba2LM
from ..models.mamba2 import Mamba2Mixer

StateScorer = Callable[[Mamba2Mixer, torch.Generator], torch.Tensor]
"""``(mixer, generator) -> scores (ngroups, d_state)`` float, higher = more important."""


def _bc_weights(m: Mamba2Mixer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``in_proj`` rows ``(ngroups, d_state, d_model)`` and conv kernels ``(ngroups, d_state, d_conv)``
    of ``B`` and of ``C``."""
    gn = m.ngroups * m.d_state
    rows = m.in_proj.weight.detach().float()[m.d_inner : m.d_inner + m.conv_dim]  # x | B | C
    conv = m.conv1d.weight.detach().float()[:, 0]  # (conv_dim, d_conv)
    shape = (m.ngroups, m.d_state, -1)
    b_rows, c_rows = rows[m.d_inner : m.d_inner + gn].view(shape), rows[m.d_inner + gn :].view(shape)
    b_conv, c_conv = conv[m.d_inner : m.d_inner + gn].view(shape), conv[m.d_inner + gn :].view(shape)
    return b_rows, b_conv, c_rows, c_conv


def bc_magnitude_scores(m: Mamba2Mixer, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(ngroups, d_state)``: product of the L2 norms of the state's ``B`` / ``C`` ``in_proj`` rows
    and convolution kernels (``generator`` unused)."""
    return torch.stack([w.norm(dim=-1) for w in _bc_weights(m)]).prod(dim=0)


def random_scores(m: Mamba2Mixer, generator: torch.Generator) -> torch.Tensor:
    """``(ngroups, d_state)`` uniform random scores from ``generator``."""
    return torch.rand(m.ngroups, m.d_state, generator=generator)


STATE_SCORERS: dict[str, StateScorer] = {"bc-magnitude": bc_magnitude_scores, "random": random_scores}
"""The demo's Mamba-2 state scorers by name."""


def kept_per_group(d_state: int, sparsity: float) -> int:
    """States each group keeps at ``sparsity``: ``d_state - round(sparsity * d_state)``.

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)`` or pruning every state of a group.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: expected a fraction in [0, 1), got {sparsity!r}")
    keep = d_state - round(sparsity * d_state)
    if keep < 1:
        raise ValueError(
            f"sparsity: {sparsity:g} of d_state={d_state} prunes every state of a group; "
            f"expected at most {(d_state - 1) / d_state:g}"
        )
    return keep


def top_states(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool ``(ngroups, d_state)``: the ``keep`` highest scores of each group (ties: lower index)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :keep]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(-1, order, True)


def prune_states(model: Mamba2LM, method: str, sparsity: float, seed: int = 0) -> dict[str, object]:
    """Give every layer of ``model`` a per-group state mask from the scorer ``method``, in place.

    Args:
        model: the Mamba-2 LM (its masks are replaced, ``pruned_states="remove"``).
        method: a key of :data:`STATE_SCORERS`.
        sparsity: fraction of the ``d_state`` states each group loses.
        seed: the ``random`` scorer's seed.

    Returns:
        ``{"kept_per_group": k, "d_state": n, "pruned": states pruned in all layers and groups,
        "total": all of them, "sparsity": pruned / total}``.
    """
    if method not in STATE_SCORERS:
        raise ValueError(f"method: expected one of {sorted(STATE_SCORERS)}, got {method!r}")
    scorer = STATE_SCORERS[method]
    keep = kept_per_group(model.config.d_state, sparsity)
    generator = torch.Generator().manual_seed(seed)
    pruned = total = 0
    for i in range(model.config.n_layer):
        m = model.mixer(i)
        mask = top_states(scorer(m, generator), keep)
        model.set_state_mask(i, mask, pruned_states="remove")
        pruned += int((~mask).sum())
        total += mask.numel()
    return {
        "kept_per_group": keep,
        "d_state": model.config.d_state,
        "pruned": pruned,
        "total": total,
        "sparsity": pruned / total,
    }
