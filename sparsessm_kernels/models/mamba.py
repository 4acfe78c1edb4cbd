"""Mamba-1 language model whose selective scans go through the sparse kernels.

Module and parameter names are those of transformers' ``MambaForCausalLM``
(``backbone.embeddings``, ``backbone.layers.{i}.norm``, ``backbone.layers.{i}.mixer.*``,
``backbone.norm_f``, ``lm_head``), so ``state_dict()`` keys are HF checkpoint keys. The math is
transformers' eager path (RMSNorm in float32, residual in float32 when ``residual_in_fp32``,
depthwise causal conv + SiLU, ``x_proj`` split into ``dt, B, C``, ``dt_proj`` weight then
``delta_bias = dt_proj.bias`` with softplus inside the scan, ``A = -exp(A_log)``, ``D``, SiLU(z)
gate), computed by the mixer forward shared with the pruning capture and the integrations
(:func:`sparsessm_kernels.ops.mixer_forward` / :func:`~sparsessm_kernels.ops.mixer_step`); the scan
is :func:`sparsessm_kernels.ops.selective_scan` (prefill / full sequence) and
:func:`sparsessm_kernels.ops.selective_state_update` (decode), which honour a per-layer state mask.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import MixerConstants, SSMParams, StateLayout, mixer_forward, mixer_step
from ..ops.layout import PRUNED_STATES_CHOICES
from .cache import LayerCache, MambaCache
from .causal_lm import SSMCausalLM, initial_dt_bias
from .config import MambaLMConfig
from .conv import causal_conv_silu, conv_silu_step, fill_conv_state
from .zeroed_a_log import ZeroedALogWarning, find_zeroed_a_log_layers, zeroed_a_log_message

if TYPE_CHECKING:
    from .checkpoint import CheckpointContents


def a_log_name(layer_idx: int) -> str:
    """HF parameter name under which layer ``layer_idx``'s state mask is stored."""
    return f"backbone.layers.{layer_idx}.mixer.A_log"


# ---------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, computed in float32 (transformers' MambaRMSNorm).

    Input ``(..., d)`` of any dtype; the normalised value is cast back to the input dtype before
    the weight multiply (so the output dtype follows type promotion with ``weight``).
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(in_dtype)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias, computed in float32, output in the input dtype.

    mamba_ssm's norm when ``rms_norm=False``.
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def _make_norm(config: MambaLMConfig) -> nn.Module:
    cls = RMSNorm if config.norm_type == "rms_norm" else LayerNorm
    return cls(config.d_model, eps=config.norm_eps)


# ---------------------------------------------------------------------- mixer
class MambaMixer(nn.Module):
    """One Mamba-1 SSM mixer (``in_proj -> conv1d -> x_proj/dt_proj -> scan -> out_proj``).

    Args:
        d_model, d_inner, d_state, d_conv, dt_rank: sizes (``d_state`` is this layer's ``n``).
        conv_bias: the convolution has a bias. bias: ``in_proj`` / ``out_proj`` have biases.
        layer_idx: index in the model (for error messages).

    Attributes:
        layout: the layer's :class:`StateLayout` (``None`` = dense), built once by
            :meth:`MambaLM.set_state_mask`.
        pruned_states: ``"zero_transition"`` or ``"remove"`` for the masked states.
        constants: float32 ``A = -exp(A_log)``, ``D``, ``dt`` bias, built once
            (:class:`~sparsessm_kernels.ops.MixerConstants`; call ``constants.clear()`` after writing a
            parameter through ``.data``).
    """

    def __init__(
        self,
        d_model: int,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        conv_bias: bool = True,
        bias: bool = False,
        layer_idx: int = 0,
    ) -> None:
        super().__init__()
        self.d_model, self.d_inner, self.d_state = d_model, d_inner, d_state
        self.d_conv, self.dt_rank, self.layer_idx = d_conv, dt_rank, layer_idx
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.layout: StateLayout | None = None
        self.pruned_states: str = "zero_transition"
        self.constants = MixerConstants()
        self.frozen_constants: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # -------------------------------------------------------------- helpers
    def _layout_on(self, device: torch.device) -> StateLayout | None:
        return None if self.layout is None else self.layout.to(device)

    def _A(self) -> torch.Tensor:
        """``A = -exp(A_log)`` ``(d_inner, n)`` float32."""
        return -torch.exp(self.A_log.float())

    def fp32_constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A (d_inner, n), D (d_inner,), dt_bias (d_inner,))`` float32 as the decode step takes them.

        :attr:`frozen_constants` when set (a :class:`~.decode.StaticDecoder` precomputes them once
        and sets them while it decodes), else :attr:`constants` (built once per parameter version).
        """
        if self.frozen_constants is not None:
            return self.frozen_constants
        return self.constants.get(self.A_log, self.D, self.dt_proj.bias)

    def _check_cache(self, lc: LayerCache) -> None:
        if lc.layout is not self.layout:
            raise RuntimeError(
                f"layer {self.layer_idx}: the state mask changed after the cache was allocated; "
                "allocate a new cache with model.allocate_cache()"
            )

    def _ssm(self, device: torch.device) -> SSMParams:
        """The scan's per-layer inputs: float32 ``A``, ``D``, ``dt`` bias (built once, see
        :class:`~sparsessm_kernels.ops.MixerConstants`) and the state mask on ``device``."""
        A, D, dt_bias = self.fp32_constants()
        return SSMParams(A, D, dt_bias, self._layout_on(device), self.pruned_states)

    # -------------------------------------------------------------- full sequence / prefill
    def forward(self, hidden: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """Mix a whole sequence (:func:`sparsessm_kernels.ops.mixer_forward`).

        Args:
            hidden: ``(b, l, d_model)`` normalised input.
            cache: when given, filled in place as a *prefill* from an empty state: ``conv_state``
                gets the last ``d_conv`` conv inputs and ``ssm_state`` the final SSM state.

        Returns:
            ``(b, l, d_model)`` in ``hidden.dtype``.
        """
        if cache is not None:
            self._check_cache(cache)
        result = self.staged_forward(hidden, cache)
        if cache is None:
            return result
        out, last_state = result  # last_state: (b, d_inner, n) float32, pruned entries 0
        if cache.compact:
            last_state = cache.layout.to(last_state.device).compact_state(last_state)
        cache.ssm_state.copy_(last_state)
        return out

    def staged_forward(
        self,
        hidden: torch.Tensor,
        cache: LayerCache | None = None,
        *,
        record: dict[str, torch.Tensor] | None = None,
        upto: str | None = None,
    ) -> Any:
        """:func:`~sparsessm_kernels.ops.mixer_forward` on this layer's modules: the output (with
        ``cache``: ``(output, final ssm state)``, the conv state filled), or the intermediates up to
        stage ``upto`` in ``record`` (the pruning capture)."""

        def conv(x: torch.Tensor) -> torch.Tensor:
            if cache is not None:
                fill_conv_state(cache.conv_state, x)
            return causal_conv_silu(x, self.conv1d)

        return mixer_forward(
            self,
            hidden,
            conv=conv,
            ssm=self._ssm(hidden.device),
            return_last_state=cache is not None,
            record=record,
            upto=upto,
        )

    # -------------------------------------------------------------- decode
    def step(self, hidden: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One decode step (:func:`sparsessm_kernels.ops.mixer_step`); ``cache`` is updated in place.

        Args:
            hidden: ``(b, d_model)`` normalised input of the new token.
            cache: this layer's cache (``conv_state`` ``(b, d_inner, d_conv)``, ``ssm_state``
                ``(b, d_inner, n)`` or compact ``(b, d_inner, k)``).

        Returns:
            ``(b, d_model)`` in ``hidden.dtype``.
        """
        self._check_cache(cache)
        conv_state, conv1d = cache.conv_state, self.conv1d
        conv_step = lambda x: conv_silu_step(conv_state, x, conv1d)  # noqa: E731
        return mixer_step(self, hidden, cache.ssm_state, conv_step=conv_step, ssm=self._ssm(hidden.device))


class MambaBlock(nn.Module):
    """Pre-norm residual block: ``h + mixer(norm(h))`` (residual in float32 when configured)."""

    def __init__(self, config: MambaLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = _make_norm(config)
        self.mixer = self._make_mixer(config, layer_idx)

    @staticmethod
    def _make_mixer(config: MambaLMConfig, layer_idx: int) -> nn.Module:
        """The mixer of layer ``layer_idx`` (subclasses of the block build other mixers)."""
        return MambaMixer(
            config.d_model,
            config.d_inner,
            config.layer_d_state(layer_idx),
            config.d_conv,
            int(config.dt_rank),
            config.conv_bias,
            config.bias,
            layer_idx,
        )

    def _pre(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden
        normed = self.norm(hidden.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return normed, residual

    def forward(self, hidden: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """``(b, l, d_model)`` -> ``(b, l, d_model)`` (float32 when ``residual_in_fp32``)."""
        normed, residual = self._pre(hidden)
        return residual + self.mixer(normed, cache)

    def step(self, hidden: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """``(b, d_model)`` -> ``(b, d_model)``, one decode step."""
        normed, residual = self._pre(hidden)
        return residual + self.mixer.step(normed, cache)


class MambaBackbone(nn.Module):
    """Embedding, blocks and final norm (``backbone.*`` in HF names)."""

    def __init__(self, config: MambaLMConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList([MambaBlock(config, i) for i in range(config.n_layer)])
        self.norm_f = _make_norm(config)


# ---------------------------------------------------------------------- the LM
class MambaLM(SSMCausalLM):
    """Mamba-1 causal LM with per-layer state masks and a (sparse) decode cache.

    Build with :meth:`from_pretrained` (an HF or mamba_ssm checkpoint, local or on the Hub) or
    :meth:`from_config` (random weights). ``model(input_ids)`` returns float32 logits.
    """

    def __init__(self, config: MambaLMConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    # -------------------------------------------------------------- construction
    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        for block in self.backbone.layers:
            m = block.mixer
            n = m.d_state
            m.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(m.d_inner, n))
            m.D.fill_(1.0)
            std = m.dt_rank**-0.5
            nn.init.uniform_(m.dt_proj.weight, -std, std)
            m.dt_proj.bias.copy_(initial_dt_bias(m.d_inner))
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
    ) -> MambaLM:
        """Load a Mamba-1 checkpoint (HF ``MambaForCausalLM`` or mamba_ssm format).

        Keys are matched strictly (missing / unexpected keys and shape mismatches raise
        :class:`~sparsessm_kernels.models.config.CheckpointFormatError` listing them); per-layer
        state sizes are read from the ``A_log`` tensors. A ``sparsity.safetensors`` file in the
        directory (written by :meth:`save_pretrained`) restores the state masks.

        ``A_log`` entries that are exactly 0 beyond what an initial value explains -- how the
        SparseSSM authors' code stores pruned states -- are loaded as they are (``A = -1``) with
        one :class:`~sparsessm_kernels.models.zeroed_a_log.ZeroedALogWarning` naming the layers
        and ``sparsessm convert --zero-a-log-pruned`` (see ``docs/models.md``).

        Args:
            path: a checkpoint directory, or a Hugging Face Hub repository id ``ORG/NAME`` when no
                such local path exists (resolved through the ``huggingface_hub`` cache:
                ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``; needs the ``[hf]`` extra).
            device: where to put the weights (default CPU).
            dtype: weight dtype (default float32; ``"auto"``: as stored); logits are always float32.
            revision: Hub branch, tag or commit hash (Hub ids only).
        """
        from .checkpoint import read_checkpoint

        ckpt = read_checkpoint(path, revision)
        model = cls._from_tensors(ckpt.config, ckpt.tensors, ckpt.source, device, dtype)
        _warn_zeroed_a_log(ckpt, path, revision)
        for layer_idx, (layout, pruned) in ckpt.layer_masks.items():
            model.set_state_mask(layer_idx, layout, pruned_states=pruned)
        return model

    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write this model as an HF-layout checkpoint that :meth:`from_pretrained` restores exactly.

        Files: ``config.json`` (``model_type: "mamba"``, HF field names), ``model.safetensors``
        (HF keys, ``lm_head.weight`` omitted when tied) and, when any layer has a state mask,
        ``sparsity.safetensors`` (masks keyed by ``backbone.layers.{i}.mixer.A_log`` with the
        per-layer ``pruned_states`` as JSON metadata).

        The directory is written atomically as a whole (built in a hidden sibling directory,
        renamed into place when complete, see :func:`sparsessm_kernels._io.atomic_directory`): an
        interrupted save leaves no directory that loads.

        Dense models with uniform state size and RMSNorm are plain transformers checkpoints; masks
        need this package (use :meth:`export_for_stock_kernels` for stock kernels).

        Args:
            directory: the output directory; missing or empty, or any with ``overwrite``.
            overwrite: replace a non-empty ``directory`` (everything in it is removed).

        Raises:
            OutputPathError (a ``ValueError``): ``directory`` is a file, is not empty and
                ``overwrite`` is false, or cannot be written; raised before anything is written.
        """
        from .._io import atomic_directory
        from .checkpoint import CONFIG_NAME, write_hf_checkpoint

        masks = self._layer_masks()
        with atomic_directory(directory, overwrite=overwrite, key_files=(CONFIG_NAME,)) as staging:
            write_hf_checkpoint(
                staging,
                self.config,
                self.state_dict(),
                dtype=self.dtype,
                masks={a_log_name(i): lay for i, (lay, _) in masks.items()},
                pruned_states={a_log_name(i): ps for i, (_, ps) in masks.items()},
            )

    def export_for_stock_kernels(
        self, directory: str | os.PathLike, *, format: str = "hf", overwrite: bool = False
    ) -> None:
        """Write a dense checkpoint that stock transformers / mamba_ssm run with this model's outputs.

        See :func:`sparsessm_kernels.models.export.export_for_stock_kernels`.
        """
        from .export import export_for_stock_kernels

        export_for_stock_kernels(self, directory, format=format, overwrite=overwrite)

    # -------------------------------------------------------------- masks
    def set_state_mask(
        self,
        layer_idx: int,
        mask: torch.Tensor | StateLayout | None,
        pruned_states: str = "zero_transition",
    ) -> None:
        """Set (or clear) the state mask of one layer.

        Args:
            layer_idx: the layer.
            mask: ``None`` (dense), bool ``(n,)`` column or ``(d_inner, n)`` per-channel mask
                (``True`` = kept), or a prebuilt :class:`StateLayout` (e.g. a ``StateSparsity``).
                A tensor is turned into a :class:`StateLayout` once, here.
            pruned_states: ``"zero_transition"`` or ``"remove"`` (see ``docs/semantics.md``).

        Caches allocated before the change become invalid.
        """
        mixer = self.mixer(layer_idx)
        if pruned_states not in PRUNED_STATES_CHOICES:
            raise ValueError(f"pruned_states: expected one of {PRUNED_STATES_CHOICES}, got {pruned_states!r}")
        if mask is None:
            mixer.layout, mixer.pruned_states = None, "zero_transition"
            return
        if isinstance(mask, StateLayout):
            layout = mask
        elif isinstance(mask, torch.Tensor):
            dev = mixer.A_log.device
            layout = StateLayout(mask.to("cpu" if dev.type == "meta" else dev))
        else:
            raise TypeError(f"mask: expected None, a bool tensor or a StateLayout, got {type(mask).__name__}")
        if layout.d_state != mixer.d_state:
            raise ValueError(
                f"layer {layer_idx}: mask has n={layout.d_state} states but the layer has "
                f"d_state={mixer.d_state} (mask shape {tuple(layout.mask.shape)})"
            )
        if layout.kind == "channel" and layout.d_inner != mixer.d_inner:
            raise ValueError(
                f"layer {layer_idx}: per-channel mask has {layout.d_inner} rows but the layer has "
                f"d_inner={mixer.d_inner} channels"
            )
        mixer.layout, mixer.pruned_states = layout, pruned_states

    def state_layout(self, layer_idx: int) -> tuple[StateLayout | None, str]:
        """``(layout or None, pruned_states)`` of layer ``layer_idx``."""
        mixer = self.mixer(layer_idx)
        return mixer.layout, mixer.pruned_states

    def _layer_masks(self) -> dict[int, tuple[StateLayout, str]]:
        return {
            i: (blk.mixer.layout, blk.mixer.pruned_states)
            for i, blk in enumerate(self.backbone.layers)
            if blk.mixer.layout is not None
        }

    def state_masks(self) -> dict[str, torch.Tensor]:
        """Masks of the masked layers: ``{"backbone.layers.{i}.mixer.A_log": bool (n,) or (d, n)}``."""
        return {a_log_name(i): lay.mask for i, (lay, _) in self._layer_masks().items()}

    def pruned_states_map(self) -> dict[str, str]:
        """``pruned_states`` of the masked layers, keyed like :meth:`state_masks`."""
        return {a_log_name(i): ps for i, (_, ps) in self._layer_masks().items()}

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
            compact: store only the kept states, ``(b, d_inner, k)``, for layers whose mask is
                uniform (column or N:M) and keeps ``0 < k < n`` states; other layers get a dense
                ``(b, d_inner, n)`` float32 state.
            device: default: the model's device.
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
                    conv_state=torch.zeros(batch_size, m.d_inner, m.d_conv, dtype=self.dtype, device=device),
                    ssm_state=torch.zeros(batch_size, m.d_inner, n, dtype=torch.float32, device=device),
                    layout=lay,
                    compact=use_compact,
                )
            )
        return MambaCache(layers=layers, batch_size=batch_size)

    def extra_repr(self) -> str:
        c = self.config
        masked = len(self._layer_masks())
        return f"d_model={c.d_model}, n_layer={c.n_layer}, vocab={c.vocab_size}, masked_layers={masked}"


def _warn_zeroed_a_log(ckpt: CheckpointContents, path: str | os.PathLike, revision: str | None) -> None:
    """One :class:`ZeroedALogWarning` when the checkpoint's ``A_log`` looks SparseSSM-pruned."""
    a_logs = {i: ckpt.tensors[a_log_name(i)] for i in range(ckpt.config.n_layer)}
    layouts = {i: layout for i, (layout, _) in ckpt.layer_masks.items()}
    found = find_zeroed_a_log_layers(a_logs, layouts)
    if found:
        rev = f" --revision {revision}" if revision is not None else ""
        hint = f"sparsessm convert {path}{rev} --out DIR --zero-a-log-pruned"
        warnings.warn(zeroed_a_log_message(str(path), found, hint), ZeroedALogWarning, stacklevel=3)
