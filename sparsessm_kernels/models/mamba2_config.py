"""Configuration of a Mamba-2 language model, and its two on-disk spellings.

:class:`Mamba2LMConfig` is format-neutral. It is read from (and written to) either

* a Hugging Face transformers ``Mamba2ForCausalLM`` ``config.json`` (``model_type: "mamba2"``,
  ``hidden_size``, ``num_heads``, ``head_dim``, ``n_groups``, ``state_size``, ...), see
  :func:`config_from_hf_mamba2_dict` / :meth:`Mamba2LMConfig.to_hf_dict` -- for the architectures
  transformers runs (:attr:`Mamba2LMConfig.hf_unsupported` is empty), or
* a mamba_ssm ``MambaLMHeadModel`` ``config.json`` whose ``ssm_cfg.layer`` is ``"Mamba2"``
  (``d_model``, ``n_layer``, ``ssm_cfg.headdim``, ``ssm_cfg.ngroups``, ...), see
  :func:`config_from_mamba_ssm_mamba2_dict` / :meth:`Mamba2LMConfig.to_mamba_ssm_dict`.

The defaults of each parser are that format's own defaults (transformers' ``Mamba2Config``,
mamba_ssm's ``MambaConfig`` and ``Mamba2`` module); the dataclass defaults are mamba_ssm's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .config import NORM_TYPES, CheckpointFormatError, _bool, _int, _req

INF = float("inf")
DEFAULT_DT_LIMIT = (0.0, INF)


@dataclass
class Mamba2LMConfig:
    """Hyper-parameters of a Mamba-2 LM (``Mamba2ForCausalLM`` / ``MambaLMHeadModel`` with Mamba2 layers).

    Attributes:
        vocab_size: rows of the embedding matrix = width of the logits (mamba_ssm: the *padded*
            vocabulary).
        d_model: hidden size.
        n_layer: number of Mamba-2 blocks.
        d_state: SSM state size ``n`` (per group).
        headdim: ``p``, channels per head; ``nheads = d_inner / headdim``.
        ngroups: ``g``, groups of ``B`` / ``C`` (``nheads % ngroups == 0``).
        d_conv: depthwise causal convolution width (over the ``x | B | C`` channels).
        expand: ``d_inner = expand * d_model``; an integer, except after heads or head channels
            were removed (``sparsessm prune --targets heads / headdim``): then any number with
            ``expand * d_model`` an integer (mamba_ssm's ``Mamba2`` takes ``int(expand * d_model)``;
            transformers' config only integers, see :attr:`hf_unsupported`).
        conv_bias: the convolution has a bias. bias: ``in_proj`` / ``out_proj`` have biases.
        norm_type: the block and final norms: ``"rms_norm"`` (HF and default mamba_ssm) or
            ``"layer_norm"`` (mamba_ssm ``rms_norm=False``).
        norm_eps: epsilon of every norm (the gated norm's too).
        rmsnorm: the mixer's output goes through the gated RMSNorm ``norm(y * silu(z))`` (every
            production model); without it the gate is ``y * silu(z)`` (mamba_ssm
            ``ssm_cfg.rmsnorm=False``).
        norm_before_gate: the gated norm computes ``norm(y) * silu(z)`` instead (mamba_ssm
            ``ssm_cfg.norm_before_gate=True``; False in HF and by default).
        D_has_hdim: ``D`` has one entry per channel, stored ``(d_inner,)`` = ``(nheads * headdim,)``
            (mamba_ssm ``ssm_cfg.D_has_hdim=True``), instead of one per head ``(nheads,)``.
        dt_limit: ``(lo, hi)`` clamp of the time step after softplus (HF ``time_step_limit``).
        chunk_size: chunk length of the SSD scan (speed and float rounding only).
        residual_in_fp32: keep the residual stream in float32.
        tie_embeddings: ``lm_head.weight`` is ``backbone.embeddings.weight``.
        extra: format fields carried through (``bos_token_id``, ``eos_token_id``, ``pad_token_id``;
            ``unpadded_vocab_size`` of a mamba_ssm config).
    """

    vocab_size: int
    d_model: int
    n_layer: int
    d_state: int = 128
    headdim: int = 64
    ngroups: int = 1
    d_conv: int = 4
    expand: int | float = 2
    conv_bias: bool = True
    bias: bool = False
    norm_type: str = "rms_norm"
    norm_eps: float = 1e-5
    rmsnorm: bool = True
    norm_before_gate: bool = False
    D_has_hdim: bool = False
    dt_limit: tuple[float, float] = DEFAULT_DT_LIMIT
    chunk_size: int = 256
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "n_layer",
            "d_state",
            "headdim",
            "ngroups",
            "d_conv",
            "chunk_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointFormatError(f"config: {name} must be a positive integer, got {value!r}")
        expand = self.expand
        if (
            isinstance(expand, bool)
            or not isinstance(expand, (int, float))
            or not math.isfinite(expand)
            or expand <= 0
            or abs(expand * self.d_model - round(expand * self.d_model)) > 1e-6
            or round(expand * self.d_model) < 1
        ):
            raise CheckpointFormatError(
                f"config: expand must be a positive number with expand * d_model an integer, got {expand!r} "
                f"(d_model={self.d_model})"
            )
        if isinstance(expand, float) and expand.is_integer():
            self.expand = int(expand)
        if self.norm_type not in NORM_TYPES:
            raise CheckpointFormatError(
                f"config: norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}"
            )
        if self.d_inner % self.headdim:
            raise CheckpointFormatError(
                f"config: d_inner = expand * d_model = {self.d_inner} is not a multiple of "
                f"headdim={self.headdim}"
            )
        if self.nheads % self.ngroups:
            raise CheckpointFormatError(
                f"config: nheads = d_inner / headdim = {self.nheads} is not a multiple of "
                f"ngroups={self.ngroups}"
            )
        limit = self.dt_limit
        if (
            not isinstance(limit, (tuple, list))
            or len(limit) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in limit)
            or math.isnan(limit[0])
            or math.isnan(limit[1])
            or limit[0] > limit[1]
        ):
            raise CheckpointFormatError(f"config: dt_limit must be two numbers lo <= hi, got {limit!r}")
        self.dt_limit = (float(limit[0]), float(limit[1]))

    # ------------------------------------------------------------------ derived sizes
    @property
    def d_inner(self) -> int:
        """Channels of the SSM: ``expand * d_model`` = ``nheads * headdim``."""
        return round(self.expand * self.d_model)

    @property
    def nheads(self) -> int:
        """Heads: ``d_inner / headdim``."""
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the convolution: ``x | B | C`` = ``d_inner + 2 * ngroups * d_state``."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        """Rows of ``in_proj``: ``z | x | B | C | dt`` = ``2 * d_inner + 2 * ngroups * d_state + nheads``."""
        return self.d_inner + self.conv_dim + self.nheads

    @property
    def hf_unsupported(self) -> list[str]:
        """What transformers' ``Mamba2ForCausalLM`` cannot run in this architecture (empty: it can)."""
        out = []
        if self.norm_type != "rms_norm":
            out.append("LayerNorm block norms (mamba_ssm rms_norm=False)")
        if not self.rmsnorm:
            out.append("no gated RMSNorm (mamba_ssm ssm_cfg.rmsnorm=False)")
        if self.norm_before_gate:
            out.append("norm_before_gate=True")
        if self.D_has_hdim:
            out.append("D with one entry per channel (D_has_hdim=True)")
        if not isinstance(self.expand, int):
            out.append(f"a non-integer expand={self.expand:g} (heads or head channels removed)")
        return out

    def describe(self) -> str:
        """The architecture in one phrase, for error messages."""
        return (
            f"a Mamba-2 LM with d_model={self.d_model}, n_layer={self.n_layer}, "
            f"vocab_size={self.vocab_size}, d_inner={self.d_inner}, nheads={self.nheads}, "
            f"headdim={self.headdim}, ngroups={self.ngroups}, d_state={self.d_state}, d_conv={self.d_conv}"
        )

    # ------------------------------------------------------------------ serialisation
    def to_hf_dict(self) -> dict[str, Any]:
        """Fields of a transformers ``Mamba2Config`` ``config.json`` (``model_type: "mamba2"``).

        ``time_step_limit`` is written only when it is not the default ``(0, inf)`` (an infinite
        bound as the JSON literal ``Infinity``, which Python's and transformers' readers accept).

        Raises:
            CheckpointFormatError: the architecture has what transformers cannot run
                (:attr:`hf_unsupported`); such models are written in mamba_ssm's format.
        """
        if self.hf_unsupported:
            raise CheckpointFormatError(
                f"config: transformers' Mamba2ForCausalLM cannot express {', '.join(self.hf_unsupported)}"
            )
        out: dict[str, Any] = {
            "architectures": ["Mamba2ForCausalLM"],
            "model_type": "mamba2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "state_size": self.d_state,
            "expand": self.expand,
            "num_heads": self.nheads,
            "head_dim": self.headdim,
            "n_groups": self.ngroups,
            "conv_kernel": self.d_conv,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "layer_norm_epsilon": self.norm_eps,
            "residual_in_fp32": self.residual_in_fp32,
            "tie_word_embeddings": self.tie_embeddings,
            "chunk_size": self.chunk_size,
            "hidden_act": "silu",
        }
        if self.dt_limit != DEFAULT_DT_LIMIT:
            out["time_step_limit"] = list(self.dt_limit)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key in self.extra:
                out[key] = self.extra[key]
        return out

    def to_mamba_ssm_dict(self) -> dict[str, Any]:
        """Fields of a mamba_ssm ``MambaConfig`` ``config.json`` with Mamba2 layers (no padding).

        Raises:
            CheckpointFormatError: ``norm_eps`` is not 1e-5 (mamba_ssm fixes every norm epsilon).
        """
        if self.norm_eps != 1e-5:
            raise CheckpointFormatError(
                f"config: mamba_ssm's config fixes every norm epsilon at 1e-5, this model has "
                f"norm_eps={self.norm_eps}"
            )
        ssm_cfg: dict[str, Any] = {
            "layer": "Mamba2",
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "headdim": self.headdim,
            "ngroups": self.ngroups,
            "rmsnorm": self.rmsnorm,
            "norm_before_gate": self.norm_before_gate,
            "D_has_hdim": self.D_has_hdim,
            "conv_bias": self.conv_bias,
            "bias": self.bias,
            "chunk_size": self.chunk_size,
        }
        if self.dt_limit != DEFAULT_DT_LIMIT:
            ssm_cfg["dt_limit"] = list(self.dt_limit)
        return {
            "d_model": self.d_model,
            "d_intermediate": 0,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": ssm_cfg,
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": self.norm_type == "rms_norm",
            "residual_in_fp32": self.residual_in_fp32,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": 1,
            "tie_embeddings": self.tie_embeddings,
        }


def expand_for(d_inner: int, d_model: int) -> int | float:
    """The ``expand`` that gives ``d_inner`` channels: an ``int`` when ``d_model`` divides it, else
    the float ``d_inner / d_model``, nudged up where needed so that mamba_ssm's truncating
    ``int(expand * d_model)`` is exactly ``d_inner`` too."""
    if d_inner % d_model == 0:
        return d_inner // d_model
    expand = d_inner / d_model
    while int(expand * d_model) != d_inner:
        expand = math.nextafter(expand, math.inf)
    return expand


# ---------------------------------------------------------------------- parsing
def _float(value: Any, key: str, source: str) -> float:
    """A number, ``Infinity`` / ``-Infinity`` (JSON literal or string), or transformers' encoding of
    a non-finite float, ``{"__float__": "Infinity"}``."""
    if isinstance(value, dict) and set(value) == {"__float__"}:
        value = value["__float__"]
    if isinstance(value, str) and value in ("Infinity", "-Infinity", "inf", "-inf"):
        return float(value.replace("Infinity", "inf"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointFormatError(f"{source}: field {key!r} must hold numbers, got {value!r}")
    return float(value)


def _number(value: Any, key: str, source: str) -> int | float:
    """An integer, or a float (an integral float becomes an ``int``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointFormatError(f"{source}: field {key!r} must be a number, got {value!r}")
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _dt_limit(value: Any, key: str, source: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise CheckpointFormatError(f"{source}: field {key!r} must be a pair [lo, hi], got {value!r}")
    return (_float(value[0], key, source), _float(value[1], key, source))


def config_from_hf_mamba2_dict(cfg: dict[str, Any], source: str = "config.json") -> Mamba2LMConfig:
    """Parse a transformers ``Mamba2Config`` dict (``model_type: "mamba2"``).

    Required: ``hidden_size``, ``num_hidden_layers``, ``vocab_size``. Other fields take
    transformers' defaults (``num_heads`` 128, ``head_dim`` 64, ``n_groups`` 8, ``state_size``
    128, ``tie_word_embeddings`` false, ...); ``hidden_size * expand`` must equal
    ``num_heads * head_dim``, as transformers checks.
    """
    model_type = cfg.get("model_type", "mamba2")
    if model_type != "mamba2":
        raise CheckpointFormatError(f"{source}: model_type {model_type!r} is not a Mamba-2 model ('mamba2')")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointFormatError(f"{source}: hidden_act {act!r} is not supported (Mamba-2 uses 'silu')")
    d_model = _int(_req(cfg, "hidden_size", source, "the model width"), "hidden_size", source)
    expand = _int(cfg.get("expand", 2), "expand", source)
    nheads = _int(cfg.get("num_heads", 128), "num_heads", source)
    headdim = _int(cfg.get("head_dim", 64), "head_dim", source)
    if d_model * expand != nheads * headdim:
        raise CheckpointFormatError(
            f"{source}: hidden_size * expand = {d_model * expand} must equal num_heads * head_dim = "
            f"{nheads} * {headdim} = {nheads * headdim}"
        )
    extra = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    return Mamba2LMConfig(
        vocab_size=_int(_req(cfg, "vocab_size", source, "embedding rows"), "vocab_size", source),
        d_model=d_model,
        n_layer=_int(_req(cfg, "num_hidden_layers", source, "number of layers"), "num_hidden_layers", source),
        d_state=_int(cfg.get("state_size", 128), "state_size", source),
        headdim=headdim,
        ngroups=_int(cfg.get("n_groups", 8), "n_groups", source),
        d_conv=_int(cfg.get("conv_kernel", 4), "conv_kernel", source),
        expand=expand,
        conv_bias=_bool(cfg.get("use_conv_bias", True), "use_conv_bias", source),
        bias=_bool(cfg.get("use_bias", False), "use_bias", source),
        norm_eps=_float(cfg.get("layer_norm_epsilon", 1e-5), "layer_norm_epsilon", source),
        dt_limit=_dt_limit(cfg.get("time_step_limit", DEFAULT_DT_LIMIT), "time_step_limit", source),
        chunk_size=_int(cfg.get("chunk_size", 256), "chunk_size", source),
        residual_in_fp32=_bool(cfg.get("residual_in_fp32", True), "residual_in_fp32", source),
        tie_embeddings=_bool(cfg.get("tie_word_embeddings", False), "tie_word_embeddings", source),
        extra=extra,
    )


_MAMBA2_SSM_CFG_FIELDS = {
    "layer",
    "d_state",
    "d_conv",
    "conv_init",
    "expand",
    "headdim",
    "d_ssm",
    "ngroups",
    "A_init_range",
    "D_has_hdim",
    "rmsnorm",
    "norm_before_gate",
    "dt_min",
    "dt_max",
    "dt_init_floor",
    "dt_limit",
    "bias",
    "conv_bias",
    "chunk_size",
    "use_mem_eff_path",
}
"""``ssm_cfg`` fields of mamba_ssm's ``Mamba2`` module (initialisation-only ones are ignored)."""


def config_from_mamba_ssm_mamba2_dict(cfg: dict[str, Any], source: str = "config.json") -> Mamba2LMConfig:
    """Parse a mamba_ssm ``MambaConfig`` dict whose ``ssm_cfg.layer`` is ``"Mamba2"``.

    Required: ``d_model``, ``n_layer``, ``vocab_size``. ``ssm_cfg`` takes the ``Mamba2`` module's
    defaults (``d_state`` 128, ``headdim`` 64, ``ngroups`` 1, ``chunk_size`` 256, ...). Attention
    layers (``attn_layer_idx``), MLPs (``d_intermediate > 0``) and a gated-MLP part of the mixer
    (``d_ssm`` smaller than ``d_inner``) are rejected. The vocabulary is padded up to a multiple of
    ``pad_vocab_size_multiple`` (default 8) and every norm epsilon is mamba_ssm's 1e-5.
    """
    d_model = _int(_req(cfg, "d_model", source, "the model width"), "d_model", source)
    n_layer = _int(_req(cfg, "n_layer", source, "number of layers"), "n_layer", source)
    vocab = _int(_req(cfg, "vocab_size", source, "vocabulary size"), "vocab_size", source)
    ssm_cfg = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm_cfg, dict):
        raise CheckpointFormatError(f"{source}: ssm_cfg must be a dict, got {ssm_cfg!r}")
    if ssm_cfg.get("layer") != "Mamba2":
        raise CheckpointFormatError(
            f"{source}: ssm_cfg.layer={ssm_cfg.get('layer', 'Mamba1')!r}; a Mamba-2 model needs 'Mamba2'"
        )
    if cfg.get("attn_layer_idx"):
        raise CheckpointFormatError(
            f"{source}: attention layers (attn_layer_idx={cfg['attn_layer_idx']!r}) are not supported; "
            "only pure Mamba-2 models can be loaded"
        )
    d_inter = cfg.get("d_intermediate", 0) or 0
    if d_inter:
        raise CheckpointFormatError(
            f"{source}: d_intermediate={d_inter} (MLP blocks) is not supported; only pure Mamba-2 models "
            "(d_intermediate=0) can be loaded"
        )
    unknown = set(ssm_cfg) - _MAMBA2_SSM_CFG_FIELDS
    if unknown:
        raise CheckpointFormatError(
            f"{source}: unsupported ssm_cfg fields {sorted(unknown)} for a Mamba2 layer"
        )
    expand = _number(ssm_cfg.get("expand", 2), "ssm_cfg.expand", source)
    d_ssm = ssm_cfg.get("d_ssm")
    if d_ssm is not None and _int(d_ssm, "ssm_cfg.d_ssm", source) != round(expand * d_model):
        raise CheckpointFormatError(
            f"{source}: ssm_cfg.d_ssm={d_ssm} (a gated-MLP part of the mixer beside the SSM) is not "
            f"supported; only d_ssm = expand * d_model = {expand * d_model} (or null)"
        )
    multiple = _int(cfg.get("pad_vocab_size_multiple", 8), "pad_vocab_size_multiple", source)
    if multiple < 1:
        raise CheckpointFormatError(f"{source}: pad_vocab_size_multiple must be >= 1, got {multiple}")
    return Mamba2LMConfig(
        vocab_size=math.ceil(vocab / multiple) * multiple,
        d_model=d_model,
        n_layer=n_layer,
        d_state=_int(ssm_cfg.get("d_state", 128), "ssm_cfg.d_state", source),
        headdim=_int(ssm_cfg.get("headdim", 64), "ssm_cfg.headdim", source),
        ngroups=_int(ssm_cfg.get("ngroups", 1), "ssm_cfg.ngroups", source),
        d_conv=_int(ssm_cfg.get("d_conv", 4), "ssm_cfg.d_conv", source),
        expand=expand,
        conv_bias=_bool(ssm_cfg.get("conv_bias", True), "ssm_cfg.conv_bias", source),
        bias=_bool(ssm_cfg.get("bias", False), "ssm_cfg.bias", source),
        norm_type="rms_norm" if _bool(cfg.get("rms_norm", True), "rms_norm", source) else "layer_norm",
        norm_eps=1e-5,
        rmsnorm=_bool(ssm_cfg.get("rmsnorm", True), "ssm_cfg.rmsnorm", source),
        norm_before_gate=_bool(ssm_cfg.get("norm_before_gate", False), "ssm_cfg.norm_before_gate", source),
        D_has_hdim=_bool(ssm_cfg.get("D_has_hdim", False), "ssm_cfg.D_has_hdim", source),
        dt_limit=_dt_limit(ssm_cfg.get("dt_limit", DEFAULT_DT_LIMIT), "ssm_cfg.dt_limit", source),
        chunk_size=_int(ssm_cfg.get("chunk_size", 256), "ssm_cfg.chunk_size", source),
        residual_in_fp32=_bool(cfg.get("residual_in_fp32", True), "residual_in_fp32", source),
        tie_embeddings=_bool(cfg.get("tie_embeddings", True), "tie_embeddings", source),
        extra={"unpadded_vocab_size": vocab},
    )
