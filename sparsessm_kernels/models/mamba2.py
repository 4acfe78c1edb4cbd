"""Mamba-2 language model whose SSD scans go through the sparse Mamba-2 ops.

Module and parameter names are those of transformers' ``Mamba2ForCausalLM`` (``backbone.embeddings``,
``backbone.layers.{i}.norm``, ``backbone.layers.{i}.mixer.{in_proj, conv1d, dt_bias, A_log, D,
norm, out_proj}``, ``backbone.norm_f``, ``lm_head``), so ``state_dict()`` keys are HF checkpoint keys
(mamba_ssm's differ only in ``backbone.embedding.weight``). The math is transformers' eager path:

* ``in_proj`` gives ``z | xBC | dt`` (``d_inner``, ``d_inner + 2 * ngroups * n``, ``nheads``
  columns); the depthwise causal conv + SiLU runs over ``xBC``, which then splits into
  ``x`` ``(b, l, nheads, headdim)``, ``B`` and ``C`` ``(b, l, ngroups, n)``;
* ``A = -exp(A_log)`` ``(nheads,)``, ``dt`` with ``dt_bias``, softplus and the ``dt_limit`` clamp
  inside the op, ``D`` ``(nheads,)`` (or ``(nheads, headdim)`` with ``D_has_hdim``);
* the gated RMSNorm ``norm(y * silu(z))`` over groups of ``d_inner / ngroups`` channels (float32,
  like transformers' ``MambaRMSNormGated``), then ``out_proj``;
* block norms RMSNorm in float32 (LayerNorm for mamba_ssm ``rms_norm=False``), residual in float32
  when ``residual_in_fp32``.

Only the scan is :func:`sparsessm_kernels.ops.ssd_scan` (full sequence / prefill) and
:func:`sparsessm_kernels.ops.ssd_state_update` (decode), which honour a per-layer state mask
(``(ngroups, n)`` / ``(nheads, n)``, ``pruned_states``) and a per-layer head transition mask.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import MixerConstants, SSDStateLayout, ssd_scan, ssd_state_update
from .cache import LayerCache, MambaCache
from .causal_lm import SSMCausalLM, initial_dt_bias
from .conv import causal_conv_silu, conv_silu_step, fill_conv_state
from .mamba import PRUNED_STATES_CHOICES, MambaBlock, _make_norm, a_log_name
from .mamba2_config import Mamba2LMConfig

DEFAULT_PRUNED_STATES = "remove"
"""``pruned_states`` of a Mamba-2 state mask unless given (the SSD ops' default)."""


def ssm_state_name(layer_idx: int) -> str:
    """Name under which layer ``layer_idx``'s Mamba-2 state mask is stored (``sparsity.safetensors``):
    ``backbone.layers.{i}.mixer.ssm_state``, the state whose ``n`` axis it masks.

    (Head transition masks are stored under the layer's ``A_log``, :func:`~.mamba.a_log_name`.)
    """
    return f"backbone.layers.{layer_idx}.mixer.ssm_state"


# ---------------------------------------------------------------------- gated norm
class GatedRMSNorm(nn.Module):
    """The Mamba-2 mixer's output norm: RMSNorm over groups of ``group_size`` channels, gated by ``z``.

    ``norm_before_gate=False`` (transformers and mamba_ssm's default): ``weight * rms(y * silu(z))``;
    ``True``: ``weight * rms(y) * silu(z)``. Computed in float32; the normalised value is cast back
    to ``y``'s dtype before the weight multiply (transformers' ``MambaRMSNormGated``).

    Args:
        d: channels (``d_inner``). group_size: ``d_inner / ngroups``. eps: epsilon.
    """

    def __init__(self, d: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``y``, ``z`` ``(..., d)`` -> ``(..., d)``."""
        in_dtype = y.dtype
        yf = y.float()
        gate = F.silu(z.float())
        if not self.norm_before_gate:
            yf = yf * gate
        grouped = yf.view(*yf.shape[:-1], -1, self.group_size)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        yf = grouped.view(yf.shape)
        if self.norm_before_gate:
            yf = yf * gate
        return self.weight * yf.to(in_dtype)


# ---------------------------------------------------------------------- mixer
class Mamba2Mixer(nn.Module):
    """One Mamba-2 mixer (``in_proj -> conv1d over x|B|C -> SSD scan -> gated norm -> out_proj``).

    Attributes:
        layout: the layer's :class:`~sparsessm_kernels.ops.SSDStateLayout` (``None`` = dense),
            set by :meth:`Mamba2LM.set_state_mask`.
        pruned_states: ``"remove"`` or ``"zero_transition"`` for the masked states.
        head_transition_mask: bool ``(nheads,)`` (``None`` = every head keeps its transition), set
            by :meth:`Mamba2LM.set_head_transition_mask`.
        constants: float32 ``A = -exp(A_log)``, ``D``, ``dt_bias`` (float64 ``D`` / ``dt_bias`` stay
            float64), built once (:class:`~sparsessm_kernels.ops.MixerConstants`; call
            ``constants.clear()`` after writing a parameter through ``.data``).
        frozen_constants: set by a :class:`~.decode.StaticDecoder` while it decodes (precomputed once).
    """

    def __init__(self, config: Mamba2LMConfig, layer_idx: int = 0) -> None:
        super().__init__()
        c = config
        self.d_model, self.d_inner, self.d_state = c.d_model, c.d_inner, c.d_state
        self.nheads, self.headdim, self.ngroups = c.nheads, c.headdim, c.ngroups
        self.d_conv, self.conv_dim, self.layer_idx = c.d_conv, c.conv_dim, layer_idx
        self.dt_limit, self.chunk_size = c.dt_limit, c.chunk_size
        self.rmsnorm, self.D_has_hdim = c.rmsnorm, c.D_has_hdim
        self.in_proj = nn.Linear(c.d_model, c.d_in_proj, bias=c.bias)
        self.conv1d = nn.Conv1d(
            c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim, padding=c.d_conv - 1, bias=c.conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(c.nheads))
        self.A_log = nn.Parameter(torch.empty(c.nheads))
        self.D = nn.Parameter(torch.empty(c.d_inner if c.D_has_hdim else c.nheads))
        if c.rmsnorm:
            self.norm = GatedRMSNorm(c.d_inner, c.d_inner // c.ngroups, c.norm_eps, c.norm_before_gate)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias)
        self.layout: SSDStateLayout | None = None
        self.pruned_states: str = DEFAULT_PRUNED_STATES
        self.head_transition_mask: torch.Tensor | None = None
        self._head_mask_copies: dict[torch.device, torch.Tensor] = {}
        self.constants = MixerConstants(keep_float64=True)
        self.frozen_constants: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # -------------------------------------------------------------- helpers
    def _sparse_args(self, device: torch.device) -> dict:
        """The sparsity arguments of the SSD ops, on ``device``."""
        heads = self.head_transition_mask
        if heads is not None and heads.device != device:
            copy = self._head_mask_copies.get(device)
            if copy is None:
                copy = self._head_mask_copies[device] = heads.to(device)
            heads = copy
        return {"state_mask": self.layout, "pruned_states": self.pruned_states, "head_transition_mask": heads}

    def _D(self) -> torch.Tensor:
        """``D`` as the ops take it: ``(nheads,)`` or ``(nheads, headdim)``."""
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _A(self) -> torch.Tensor:
        """``A = -exp(A_log)`` ``(nheads,)`` float32."""
        return -torch.exp(self.A_log.float())

    def fp32_constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A (nheads,), D, dt_bias (nheads,))`` as the SSD ops take them: ``A`` float32, ``D``
        ``(nheads,)`` or ``(nheads, headdim)`` and ``dt_bias`` in float32 (float64 stays float64).

        :attr:`frozen_constants` when set (a :class:`~.decode.StaticDecoder` precomputes them once
        and sets them while it decodes), else :attr:`constants` (built once per parameter version).
        """
        if self.frozen_constants is not None:
            return self.frozen_constants
        A, D, dt_bias = self.constants.get(self.A_log, self.D, self.dt_bias)
        return A, D.view(self.nheads, self.headdim) if self.D_has_hdim else D, dt_bias

    def _check_cache(self, lc: LayerCache) -> None:
        if lc.layout is not self.layout:
            raise RuntimeError(
                f"layer {self.layer_idx}: the state mask changed after the cache was allocated; "
                "allocate a new cache with model.allocate_cache()"
            )

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``in_proj`` output ``(..., d_in_proj)`` -> ``z (..., d_inner)``, ``xBC (..., conv_dim)``,
        ``dt (..., nheads)``."""
        z, xbc, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        return z, xbc, dt

    def _out(self, y: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Gated norm (when configured) and ``out_proj`` of ``y`` ``(..., d_inner)``."""
        if self.rmsnorm:
            y = self.norm(y, z)
        return self.out_proj(y.to(dtype))

    # -------------------------------------------------------------- full sequence / prefill
    def forward(self, hidden: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """Mix a whole sequence.

        Args:
            hidden: ``(b, l, d_model)`` normalised input.
            cache: when given, filled in place as a *prefill* from an empty state: ``conv_state``
                gets the last ``d_conv`` inputs of the convolution and ``ssm_state`` the final state.

        Returns:
            ``(b, l, d_model)`` in ``hidden.dtype``.
        """
        b, seqlen, _ = hidden.shape
        z, xbc, dt = self._split(self.in_proj(hidden))
        xbc = xbc.transpose(1, 2)  # (b, conv_dim, l)
        if cache is not None:
            self._check_cache(cache)
            fill_conv_state(cache.conv_state, xbc)
        xbc = causal_conv_silu(xbc, self.conv1d).transpose(1, 2)  # (b, l, conv_dim)
        gn = self.ngroups * self.d_state
        x, B, C = xbc.split([self.d_inner, gn, gn], dim=-1)
        heads = (b, seqlen, self.nheads, self.headdim)
        A, D, dt_bias = self.fp32_constants()
        result = ssd_scan(
            x.reshape(heads),
            dt,
            A,
            B.reshape(b, seqlen, self.ngroups, self.d_state),
            C.reshape(b, seqlen, self.ngroups, self.d_state),
            D=D,
            z=None if self.rmsnorm else z.reshape(heads),
            dt_bias=dt_bias,
            dt_softplus=True,
            dt_limit=self.dt_limit,
            return_final_states=cache is not None,
            chunk_size=self.chunk_size,
            **self._sparse_args(hidden.device),
        )
        if cache is not None:
            y, final = result  # final: (b, nheads, headdim, n) float32, pruned entries 0
            if cache.compact:
                final = cache.layout.compact_state(final)
            cache.ssm_state.copy_(final)
        else:
            y = result
        return self._out(y.reshape(b, seqlen, self.d_inner), z, hidden.dtype)

    # -------------------------------------------------------------- decode
    def step(self, hidden: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One decode step; ``cache`` is updated in place.

        Args:
            hidden: ``(b, d_model)`` normalised input of the new token.
            cache: this layer's cache (``conv_state`` ``(b, conv_dim, d_conv)``, ``ssm_state``
                ``(b, nheads, headdim, n)`` or compact ``(b, nheads, headdim, k)``).

        Returns:
            ``(b, d_model)`` in ``hidden.dtype``.
        """
        self._check_cache(cache)
        b = hidden.shape[0]
        z, xbc, dt = self._split(self.in_proj(hidden))
        xbc = conv_silu_step(cache.conv_state, xbc, self.conv1d)  # (b, conv_dim)
        gn = self.ngroups * self.d_state
        x, B, C = xbc.split([self.d_inner, gn, gn], dim=-1)
        heads = (b, self.nheads, self.headdim)
        A, D, dt_bias = self.fp32_constants()
        y = ssd_state_update(
            cache.ssm_state,
            x.reshape(heads),
            dt,
            A,
            B.reshape(b, self.ngroups, self.d_state),
            C.reshape(b, self.ngroups, self.d_state),
            D=D,
            z=None if self.rmsnorm else z.reshape(heads),
            dt_bias=dt_bias,
            dt_softplus=True,
            dt_limit=self.dt_limit,
            **self._sparse_args(hidden.device),
        )
        return self._out(y.reshape(b, self.d_inner), z, hidden.dtype)


class Mamba2Block(MambaBlock):
    """Pre-norm residual block around a :class:`Mamba2Mixer` (same residual math as Mamba-1)."""

    @staticmethod
    def _make_mixer(config: Mamba2LMConfig, layer_idx: int) -> nn.Module:
        return Mamba2Mixer(config, layer_idx)


class Mamba2Backbone(nn.Module):
    """Embedding, blocks and final norm (``backbone.*`` in HF names)."""

    def __init__(self, config: Mamba2LMConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList([Mamba2Block(config, i) for i in range(config.n_layer)])
        self.norm_f = _make_norm(config)


# ---------------------------------------------------------------------- the LM
class Mamba2LM(SSMCausalLM):
    """Mamba-2 causal LM with per-layer state masks, head transition masks and a (sparse) decode cache.

    Build with :meth:`from_pretrained` (an HF ``Mamba2ForCausalLM`` or mamba_ssm Mamba-2
    checkpoint, local or on the Hub) or :meth:`from_config` (random weights).
    ``model(input_ids)`` returns float32 logits; ``generate`` decodes with the cache.
    """

    def __init__(self, config: Mamba2LMConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Mamba2Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    # -------------------------------------------------------------- construction
    @torch.no_grad()
    def _init_weights(self) -> None:
        """mamba_ssm's initialisation: ``A`` uniform in [1, 16], ``D = 1``, ``dt`` log-uniform in
        [1e-3, 0.1] through the inverse softplus in ``dt_bias``, zero biases, embeddings N(0, 0.02)."""
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        for block in self.backbone.layers:
            m = block.mixer
            m.A_log.copy_(torch.log(torch.empty(m.nheads).uniform_(1.0, 16.0)))
            m.D.fill_(1.0)
            m.dt_bias.copy_(initial_dt_bias(m.nheads))
            for lin in (m.in_proj, m.out_proj):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        revision: str | None = None,
    ) -> Mamba2LM:
        """Load a Mamba-2 checkpoint (HF ``Mamba2ForCausalLM`` or mamba_ssm ``MambaLMHeadModel`` with
        ``ssm_cfg.layer = "Mamba2"``).

        Keys are matched strictly (missing / unexpected keys and shape mismatches raise
        :class:`~sparsessm_kernels.models.config.CheckpointFormatError` listing them). A
        ``sparsity.safetensors`` file in the directory (written by :meth:`save_pretrained`)
        restores the state masks and head transition masks.

        Args:
            path: a checkpoint directory, or a Hugging Face Hub repository id ``ORG/NAME`` when no
                such local path exists (see :meth:`MambaLM.from_pretrained <.mamba.MambaLM.from_pretrained>`).
            device: where to put the weights (default CPU).
            dtype: weight dtype (default float32; ``"auto"``: as stored); logits are always float32.
            revision: Hub branch, tag or commit hash (Hub ids only).
        """
        from .mamba2_checkpoint import read_mamba2_checkpoint

        ckpt = read_mamba2_checkpoint(path, revision)
        model = cls._from_tensors(ckpt.config, ckpt.tensors, ckpt.source, device, dtype)
        for layer_idx, (layout, pruned) in ckpt.state_masks.items():
            model.set_state_mask(layer_idx, layout, pruned_states=pruned)
        for layer_idx, heads in ckpt.head_masks.items():
            model.set_head_transition_mask(layer_idx, heads)
        return model

    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write this model as an HF-layout checkpoint that :meth:`from_pretrained` restores exactly.

        Files: ``config.json`` (``model_type: "mamba2"``, HF field names), ``model.safetensors``
        (HF keys, ``lm_head.weight`` omitted when tied) and, when any layer is masked,
        ``sparsity.safetensors``: state masks keyed by ``backbone.layers.{i}.mixer.ssm_state`` (with
        the per-layer ``pruned_states`` as JSON metadata) and head transition masks keyed by
        ``backbone.layers.{i}.mixer.A_log``. Written atomically as a whole, like
        :meth:`MambaLM.save_pretrained <.mamba.MambaLM.save_pretrained>`.

        An architecture transformers cannot run (``config.hf_unsupported``: LayerNorm, no gated
        norm, ``norm_before_gate``, ``D_has_hdim``, all mamba_ssm options) is written in mamba_ssm's
        layout instead (``config.json`` with ``ssm_cfg`` + ``pytorch_model.bin``, masks file the
        same), which mamba_ssm runs and transformers cannot mistake for a model it runs.

        Dense models are then plain stock checkpoints; masks need this package
        (:meth:`export_for_stock_kernels` bakes them into the weights).

        Raises:
            OutputPathError (a ``ValueError``): ``directory`` is a file, is not empty and
                ``overwrite`` is false, or cannot be written; raised before anything is written.
        """
        from .._io import atomic_directory
        from .checkpoint import CONFIG_NAME, write_hf_checkpoint, write_mamba_ssm_checkpoint

        write = write_mamba_ssm_checkpoint if self.config.hf_unsupported else write_hf_checkpoint
        with atomic_directory(directory, overwrite=overwrite, key_files=(CONFIG_NAME,)) as staging:
            write(
                staging,
                self.config,
                self.state_dict(),
                dtype=self.dtype,
                masks=self.state_masks(),
                pruned_states=self.pruned_states_map(),
                head_masks=self.head_transition_masks(),
            )

    def export_for_stock_kernels(
        self, directory: str | os.PathLike, *, format: str = "hf", overwrite: bool = False
    ) -> None:
        """Write a dense checkpoint that stock transformers / mamba_ssm run with this model's outputs.

        See :func:`sparsessm_kernels.models.mamba2_export.export_mamba2_for_stock_kernels`.
        """
        from .mamba2_export import export_mamba2_for_stock_kernels

        export_mamba2_for_stock_kernels(self, directory, format=format, overwrite=overwrite)

    # -------------------------------------------------------------- masks
    def mixer(self, layer_idx: int) -> Mamba2Mixer:
        """The mixer of layer ``layer_idx`` (raises ``IndexError`` naming the valid range)."""
        return super().mixer(layer_idx)  # type: ignore[return-value]

    def set_state_mask(
        self,
        layer_idx: int,
        mask: torch.Tensor | SSDStateLayout | None,
        pruned_states: str = DEFAULT_PRUNED_STATES,
    ) -> None:
        """Set (or clear) the state mask of one layer: which of the ``n`` columns of ``B`` / ``C``
        (states) each group or head keeps.

        Args:
            layer_idx: the layer.
            mask: ``None`` (dense), bool ``(ngroups, n)`` (per group: what pruning the ``B`` / ``C``
                rows of ``in_proj`` gives) or ``(nheads, n)`` (per head), ``True`` = kept, or a
                prebuilt :class:`~sparsessm_kernels.ops.SSDStateLayout` for this layer's sizes.
                A tensor becomes an ``SSDStateLayout`` once, here.
            pruned_states: ``"remove"`` (default: a pruned state contributes nothing) or
                ``"zero_transition"`` (its transition is 0, its feed-through stays); see
                ``docs/semantics.md``, "Sparse Mamba-2 states".

        Composes with :meth:`set_head_transition_mask`. Caches allocated before the change become
        invalid (the model raises when one is used).
        """
        m = self.mixer(layer_idx)
        if pruned_states not in PRUNED_STATES_CHOICES:
            raise ValueError(f"pruned_states: expected one of {PRUNED_STATES_CHOICES}, got {pruned_states!r}")
        if mask is None:
            m.layout, m.pruned_states = None, DEFAULT_PRUNED_STATES
            return
        if isinstance(mask, SSDStateLayout):
            try:
                mask.check(m.nheads, m.ngroups, m.d_state)
            except ValueError as exc:
                raise ValueError(f"layer {layer_idx}: {exc}") from exc
            layout = mask
        elif isinstance(mask, torch.Tensor):
            if mask.dtype == torch.bool and (
                mask.dim() != 2 or mask.shape[0] not in (m.ngroups, m.nheads) or mask.shape[1] != m.d_state
            ):
                raise ValueError(
                    f"layer {layer_idx}: state mask: expected shape (ngroups, n) = ({m.ngroups}, "
                    f"{m.d_state}) or (nheads, n) = ({m.nheads}, {m.d_state}), got {tuple(mask.shape)}"
                )
            layout = SSDStateLayout(_on_weights_device(mask, m.A_log), nheads=m.nheads, ngroups=m.ngroups)
        else:
            raise TypeError(
                f"mask: expected None, a bool tensor or an SSDStateLayout, got {type(mask).__name__}"
            )
        m.layout, m.pruned_states = layout, pruned_states

    def set_head_transition_mask(self, layer_idx: int, mask: torch.Tensor | None) -> None:
        """Set (or clear) which heads of one layer keep their state transition.

        Args:
            layer_idx: the layer.
            mask: ``None`` (every head keeps it) or bool ``(nheads,)``; ``False`` zeroes the head's
                transition ``exp(dt * A)`` (SparseSSM's ``A_log`` pruning on Mamba-2: one ``A_log``
                entry per head), so its state holds only the current step's drive ``dt * B * x``.
                The head is not removed: its feed-through and ``D`` skip stay.

        Composes with :meth:`set_state_mask`; the decode cache does not depend on it.
        """
        m = self.mixer(layer_idx)
        if mask is None:
            m.head_transition_mask = None
        else:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask: expected None or a bool torch.Tensor, got {type(mask).__name__}")
            if mask.dtype != torch.bool:
                raise TypeError(f"mask: expected dtype torch.bool (True = kept), got {mask.dtype}")
            if tuple(mask.shape) != (m.nheads,):
                raise ValueError(
                    f"layer {layer_idx}: head transition mask: expected shape (nheads,) = ({m.nheads},), "
                    f"got {tuple(mask.shape)}"
                )
            m.head_transition_mask = _on_weights_device(mask, m.A_log).clone()
        m._head_mask_copies = {}

    def state_layout(self, layer_idx: int) -> tuple[SSDStateLayout | None, str]:
        """``(layout or None, pruned_states)`` of layer ``layer_idx``."""
        m = self.mixer(layer_idx)
        return m.layout, m.pruned_states

    def head_transition_mask(self, layer_idx: int) -> torch.Tensor | None:
        """Layer ``layer_idx``'s head transition mask, bool ``(nheads,)``, or ``None``."""
        return self.mixer(layer_idx).head_transition_mask

    def state_masks(self) -> dict[str, torch.Tensor]:
        """State masks of the masked layers:
        ``{"backbone.layers.{i}.mixer.ssm_state": bool (ngroups, n) or (nheads, n)}``."""
        return {
            ssm_state_name(i): blk.mixer.layout.mask
            for i, blk in enumerate(self.backbone.layers)
            if blk.mixer.layout is not None
        }

    def pruned_states_map(self) -> dict[str, str]:
        """``pruned_states`` of the layers with a state mask, keyed like :meth:`state_masks`."""
        return {
            ssm_state_name(i): blk.mixer.pruned_states
            for i, blk in enumerate(self.backbone.layers)
            if blk.mixer.layout is not None
        }

    def head_transition_masks(self) -> dict[str, torch.Tensor]:
        """Head transition masks: ``{"backbone.layers.{i}.mixer.A_log": bool (nheads,)}``."""
        return {
            a_log_name(i): blk.mixer.head_transition_mask
            for i, blk in enumerate(self.backbone.layers)
            if blk.mixer.head_transition_mask is not None
        }

    def clear_head_transition_masks(self) -> None:
        """Remove every head transition mask (state masks stay)."""
        for i in range(len(self.backbone.layers)):
            self.set_head_transition_mask(i, None)

    # -------------------------------------------------------------- cache
    def allocate_cache(
        self,
        batch_size: int,
        *,
        compact: bool = True,
        device: torch.device | str | None = None,
    ) -> MambaCache:
        """An empty inference cache for the current state masks.

        Args:
            batch_size: ``b``.
            compact: store only the kept states, ``(b, nheads, headdim, k)``, for layers whose mask
                keeps the same number ``0 < k < n`` of states in every head; other layers get a dense
                ``(b, nheads, headdim, n)`` float32 state.
            device: default: the model's device.

        Per layer ``conv_state`` is ``(b, d_inner + 2 * ngroups * n, d_conv)`` in the model dtype.
        """
        device = torch.device(device) if device is not None else self.device
        layers = []
        for blk in self.backbone.layers:
            m = blk.mixer
            lay = m.layout
            use_compact = compact and lay is not None and lay.uniform and 0 < lay.n_kept < m.d_state
            n = lay.n_kept if use_compact else m.d_state
            layers.append(
                LayerCache(
                    conv_state=torch.zeros(batch_size, m.conv_dim, m.d_conv, dtype=self.dtype, device=device),
                    ssm_state=torch.zeros(
                        batch_size, m.nheads, m.headdim, n, dtype=torch.float32, device=device
                    ),
                    layout=lay,
                    compact=use_compact,
                )
            )
        return MambaCache(layers=layers, batch_size=batch_size)

    def extra_repr(self) -> str:
        c = self.config
        masked = len(self.state_masks())
        heads = len(self.head_transition_masks())
        return (
            f"d_model={c.d_model}, n_layer={c.n_layer}, nheads={c.nheads}, headdim={c.headdim}, "
            f"ngroups={c.ngroups}, d_state={c.d_state}, vocab={c.vocab_size}, state_masked_layers={masked}, "
            f"head_masked_layers={heads}"
        )


def _on_weights_device(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``mask`` on the device of ``weight`` (CPU while the weights are still on the meta device)."""
    dev = weight.device
    return mask.to("cpu" if dev.type == "meta" else dev)
