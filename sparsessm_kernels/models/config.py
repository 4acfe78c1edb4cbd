"""Configuration of a Mamba-1 language model, and its two on-disk spellings.

:class:`MambaLMConfig` is format-neutral. It is read from (and written to) either

* a Hugging Face transformers ``MambaForCausalLM`` ``config.json`` (``hidden_size``,
  ``num_hidden_layers``, ``state_size``, ...), see :func:`config_from_hf_dict` /
  :meth:`MambaLMConfig.to_hf_dict`, or
* a mamba_ssm ``MambaLMHeadModel`` ``config.json`` (``d_model``, ``n_layer``, ``ssm_cfg``, ...),
  see :func:`config_from_mamba_ssm_dict` / :meth:`MambaLMConfig.to_mamba_ssm_dict`.

The per-layer state size may differ between layers (structured pruning removes states), so
``layer_d_states`` overrides ``d_state`` layer by layer; checkpoints are read with the per-layer
sizes taken from the ``A_log`` tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

NORM_TYPES = ("rms_norm", "layer_norm")


class CheckpointFormatError(ValueError):
    """A checkpoint directory, config or weights file does not hold what the model needs."""


@dataclass
class MambaLMConfig:
    """Hyper-parameters of a Mamba-1 LM (``MambaForCausalLM`` / ``MambaLMHeadModel``).

    Attributes:
        vocab_size: rows of the embedding matrix = width of the logits (for mamba_ssm checkpoints
            this is the *padded* vocabulary, ``ceil(vocab / pad_vocab_size_multiple) * multiple``).
        d_model: hidden size.
        n_layer: number of Mamba blocks.
        d_state: default SSM state size ``n`` of a layer.
        layer_d_states: optional per-layer state sizes (length ``n_layer``) overriding ``d_state``.
        d_conv: depthwise causal convolution width.
        expand: ``d_inner = expand * d_model``.
        dt_rank: rank of the ``dt`` projection (``"auto"`` is resolved to ``ceil(d_model / 16)``).
        conv_bias: the convolution has a bias.
        bias: ``in_proj`` / ``out_proj`` have biases.
        norm_type: ``"rms_norm"`` (HF and default mamba_ssm) or ``"layer_norm"`` (mamba_ssm with
            ``rms_norm=False``: LayerNorm with weight and bias).
        norm_eps: epsilon of every norm.
        residual_in_fp32: keep the residual stream in float32.
        tie_embeddings: ``lm_head.weight`` is ``backbone.embeddings.weight``.
    """

    vocab_size: int
    d_model: int
    n_layer: int
    d_state: int = 16
    layer_d_states: list[int] | None = None
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    conv_bias: bool = True
    bias: bool = False
    norm_type: str = "rms_norm"
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointFormatError(f"config: {name} must be a positive integer, got {value!r}")
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        if isinstance(self.dt_rank, bool) or not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise CheckpointFormatError(
                f"config: dt_rank must be a positive integer or 'auto', got {self.dt_rank!r}"
            )
        if self.norm_type not in NORM_TYPES:
            raise CheckpointFormatError(
                f"config: norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}"
            )
        if self.layer_d_states is not None:
            states = list(self.layer_d_states)
            if len(states) != self.n_layer or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in states
            ):
                raise CheckpointFormatError(
                    f"config: layer_d_states must list {self.n_layer} positive integers, got {states!r}"
                )
            self.layer_d_states = states
            if len(set(states)) == 1:  # uniform: fold back into d_state
                self.d_state = states[0]
                self.layer_d_states = None

    @property
    def d_inner(self) -> int:
        """Channels of the SSM: ``expand * d_model``."""
        return self.expand * self.d_model

    def layer_d_state(self, layer_idx: int) -> int:
        """State size ``n`` of layer ``layer_idx``."""
        if self.layer_d_states is not None:
            return self.layer_d_states[layer_idx]
        return self.d_state

    def describe(self) -> str:
        """The architecture in one phrase, for error messages."""
        return (
            f"a Mamba-1 LM with d_model={self.d_model}, n_layer={self.n_layer}, "
            f"vocab_size={self.vocab_size}, d_inner={self.d_inner}, dt_rank={self.dt_rank}, "
            f"d_conv={self.d_conv}"
        )

    @property
    def uniform_d_state(self) -> bool:
        """Every layer has the same state size (what a stock HF config can express)."""
        return self.layer_d_states is None

    def with_layer_d_states(self, states: list[int]) -> MambaLMConfig:
        """A copy with per-layer state sizes ``states``."""
        return replace(self, layer_d_states=list(states), d_state=max(states) if states else self.d_state)

    # ------------------------------------------------------------------ serialisation
    def to_hf_dict(self) -> dict[str, Any]:
        """Fields of a transformers ``MambaConfig`` ``config.json`` (``model_type: "mamba"``).

        Non-HF extensions, written only when needed: ``layer_state_sizes`` (per-layer ``n``) and
        ``rms_norm: false`` (LayerNorm). Stock transformers cannot run those models.
        """
        out: dict[str, Any] = {
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "state_size": self.d_state,
            "expand": self.expand,
            "intermediate_size": self.d_inner,
            "conv_kernel": self.d_conv,
            "time_step_rank": self.dt_rank,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "layer_norm_epsilon": self.norm_eps,
            "residual_in_fp32": self.residual_in_fp32,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
        }
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key in self.extra:
                out[key] = self.extra[key]
        if self.layer_d_states is not None:
            out["layer_state_sizes"] = list(self.layer_d_states)
        if self.norm_type == "layer_norm":
            out["rms_norm"] = False
        return out

    def to_mamba_ssm_dict(self) -> dict[str, Any]:
        """Fields of a mamba_ssm ``MambaConfig`` ``config.json`` (Mamba-1 layers, no padding)."""
        if self.layer_d_states is not None:
            raise CheckpointFormatError(
                "config: mamba_ssm's config holds one d_state, but the layers have state sizes "
                f"{self.layer_d_states}"
            )
        return {
            "d_model": self.d_model,
            "d_intermediate": 0,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": {
                "layer": "Mamba1",
                "d_state": self.d_state,
                "d_conv": self.d_conv,
                "expand": self.expand,
                "dt_rank": self.dt_rank,
                "conv_bias": self.conv_bias,
                "bias": self.bias,
            },
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": self.norm_type == "rms_norm",
            "residual_in_fp32": self.residual_in_fp32,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": 1,
            "tie_embeddings": self.tie_embeddings,
        }


# ---------------------------------------------------------------------- parsing helpers
def _req(cfg: dict[str, Any], key: str, source: str, what: str) -> Any:
    if key not in cfg:
        raise CheckpointFormatError(f"{source}: missing required field {key!r} ({what})")
    return cfg[key]


def _int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise CheckpointFormatError(f"{source}: field {key!r} must be an integer, got {value!r}")
    return value


def _bool(value: Any, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise CheckpointFormatError(f"{source}: field {key!r} must be true or false, got {value!r}")
    return value


def config_from_hf_dict(cfg: dict[str, Any], source: str = "config.json") -> MambaLMConfig:
    """Parse a transformers ``MambaConfig`` dict.

    Required: ``hidden_size``, ``num_hidden_layers``, ``vocab_size``. Other fields take
    transformers' defaults. As in transformers, ``intermediate_size`` is ``expand * hidden_size``.
    """
    model_type = cfg.get("model_type", "mamba")
    if model_type != "mamba":
        raise CheckpointFormatError(
            f"{source}: model_type {model_type!r} is not supported; expected 'mamba' (Mamba-1). "
            "Mamba-2 / hybrid models are not Mamba-1 checkpoints (Mamba-2: Mamba2LM, or load_model, which "
            "picks the class)"
        )
    d_model = _int(_req(cfg, "hidden_size", source, "the model width"), "hidden_size", source)
    expand = _int(cfg.get("expand", 2), "expand", source)
    if "expand" not in cfg and "intermediate_size" in cfg:
        inter = _int(cfg["intermediate_size"], "intermediate_size", source)
        if inter % d_model:
            raise CheckpointFormatError(
                f"{source}: intermediate_size={inter} is not a multiple of hidden_size={d_model}"
            )
        expand = inter // d_model
    layer_states = cfg.get("layer_state_sizes")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointFormatError(f"{source}: hidden_act {act!r} is not supported (Mamba-1 uses 'silu')")
    extra = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    return MambaLMConfig(
        vocab_size=_int(_req(cfg, "vocab_size", source, "embedding rows"), "vocab_size", source),
        d_model=d_model,
        n_layer=_int(_req(cfg, "num_hidden_layers", source, "number of layers"), "num_hidden_layers", source),
        d_state=_int(cfg.get("state_size", 16), "state_size", source),
        layer_d_states=None
        if layer_states is None
        else [_int(s, "layer_state_sizes", source) for s in layer_states],
        d_conv=_int(cfg.get("conv_kernel", 4), "conv_kernel", source),
        expand=expand,
        dt_rank=cfg.get("time_step_rank", "auto"),
        conv_bias=_bool(cfg.get("use_conv_bias", True), "use_conv_bias", source),
        bias=_bool(cfg.get("use_bias", False), "use_bias", source),
        norm_type="rms_norm" if cfg.get("rms_norm", True) else "layer_norm",
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        residual_in_fp32=_bool(cfg.get("residual_in_fp32", True), "residual_in_fp32", source),
        tie_embeddings=_bool(cfg.get("tie_word_embeddings", True), "tie_word_embeddings", source),
        extra=extra,
    )


def config_from_mamba_ssm_dict(cfg: dict[str, Any], source: str = "config.json") -> MambaLMConfig:
    """Parse a mamba_ssm ``MambaConfig`` dict (``MambaLMHeadModel``), Mamba-1 layers only.

    Required: ``d_model``, ``n_layer``, ``vocab_size``. ``ssm_cfg.layer`` must be ``"Mamba1"`` or
    absent; attention layers (``attn_layer_idx``) and MLPs (``d_intermediate > 0``) are rejected.
    The vocabulary is padded up to a multiple of ``pad_vocab_size_multiple`` (default 8), like
    mamba_ssm does, and the norm epsilon is mamba_ssm's 1e-5.
    """
    d_model = _int(_req(cfg, "d_model", source, "the model width"), "d_model", source)
    n_layer = _int(_req(cfg, "n_layer", source, "number of layers"), "n_layer", source)
    vocab = _int(_req(cfg, "vocab_size", source, "vocabulary size"), "vocab_size", source)
    ssm_cfg = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm_cfg, dict):
        raise CheckpointFormatError(f"{source}: ssm_cfg must be a dict, got {ssm_cfg!r}")
    layer = ssm_cfg.get("layer", "Mamba1")
    if layer != "Mamba1":
        raise CheckpointFormatError(
            f"{source}: ssm_cfg.layer={layer!r} is not supported; only Mamba1 layers can be loaded "
            "(Mamba2 checkpoints are a different architecture: Mamba2LM, or load_model, which picks the "
            "class)"
        )
    if cfg.get("attn_layer_idx"):
        raise CheckpointFormatError(
            f"{source}: attention layers (attn_layer_idx={cfg['attn_layer_idx']!r}) are not supported; "
            "only pure Mamba-1 models can be loaded"
        )
    d_inter = cfg.get("d_intermediate", 0) or 0
    if d_inter:
        raise CheckpointFormatError(
            f"{source}: d_intermediate={d_inter} (MLP blocks) is not supported; only pure Mamba-1 models "
            "(d_intermediate=0) can be loaded"
        )
    unknown = set(ssm_cfg) - {
        "layer",
        "d_state",
        "d_conv",
        "expand",
        "dt_rank",
        "conv_bias",
        "bias",
        "dt_min",
        "dt_max",
        "dt_init",
        "dt_scale",
        "dt_init_floor",
        "use_fast_path",
    }
    if unknown:
        raise CheckpointFormatError(
            f"{source}: unsupported ssm_cfg fields {sorted(unknown)} for a Mamba1 layer"
        )
    multiple = _int(cfg.get("pad_vocab_size_multiple", 8), "pad_vocab_size_multiple", source)
    if multiple < 1:
        raise CheckpointFormatError(f"{source}: pad_vocab_size_multiple must be >= 1, got {multiple}")
    padded = math.ceil(vocab / multiple) * multiple
    return MambaLMConfig(
        vocab_size=padded,
        d_model=d_model,
        n_layer=n_layer,
        d_state=_int(ssm_cfg.get("d_state", 16), "ssm_cfg.d_state", source),
        d_conv=_int(ssm_cfg.get("d_conv", 4), "ssm_cfg.d_conv", source),
        expand=_int(ssm_cfg.get("expand", 2), "ssm_cfg.expand", source),
        dt_rank=ssm_cfg.get("dt_rank", "auto"),
        conv_bias=_bool(ssm_cfg.get("conv_bias", True), "ssm_cfg.conv_bias", source),
        bias=_bool(ssm_cfg.get("bias", False), "ssm_cfg.bias", source),
        norm_type="rms_norm" if _bool(cfg.get("rms_norm", True), "rms_norm", source) else "layer_norm",
        norm_eps=1e-5,
        residual_in_fp32=_bool(cfg.get("residual_in_fp32", True), "residual_in_fp32", source),
        tie_embeddings=_bool(cfg.get("tie_embeddings", True), "tie_embeddings", source),
        extra={"unpadded_vocab_size": vocab},
    )
