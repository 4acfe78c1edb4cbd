"""Which model a ``config.json`` describes: Mamba-1 or Mamba-2, in transformers or mamba_ssm spelling.

* transformers: ``model_type`` ``"mamba"`` (``MambaForCausalLM``) or ``"mamba2"``
  (``Mamba2ForCausalLM``); a config without ``model_type`` but with ``hidden_size`` is a Mamba-1
  transformers config;
* mamba_ssm ``MambaLMHeadModel`` (``d_model``, no ``model_type``): ``ssm_cfg.layer`` ``"Mamba1"``
  (or absent) or ``"Mamba2"``.

:func:`parse_model_config` turns the dict into the right config class.
"""

from __future__ import annotations

from typing import Any

from .config import CheckpointFormatError, MambaLMConfig, config_from_hf_dict, config_from_mamba_ssm_dict
from .mamba2_config import Mamba2LMConfig, config_from_hf_mamba2_dict, config_from_mamba_ssm_mamba2_dict

ARCHITECTURES = ("mamba", "mamba2")

_PARSERS = {
    ("mamba", "hf"): config_from_hf_dict,
    ("mamba", "mamba_ssm"): config_from_mamba_ssm_dict,
    ("mamba2", "hf"): config_from_hf_mamba2_dict,
    ("mamba2", "mamba_ssm"): config_from_mamba_ssm_mamba2_dict,
}


def detect_architecture(cfg: dict[str, Any]) -> tuple[str, str]:
    """``(architecture, format)``: ``"mamba"`` / ``"mamba2"`` and ``"hf"`` / ``"mamba_ssm"``.

    Raises:
        CheckpointFormatError: another ``model_type`` (hybrids, transformers), another mamba_ssm
            layer (``Mamba3``), or neither format.
    """
    model_type = cfg.get("model_type")
    if model_type is not None:
        if model_type not in ARCHITECTURES:
            raise CheckpointFormatError(
                f"model_type {model_type!r} is not supported; expected 'mamba' (Mamba-1) or 'mamba2' "
                "(Mamba-2), or a mamba_ssm config"
            )
        return model_type, "hf"
    if "hidden_size" in cfg:
        return "mamba", "hf"
    if "d_model" in cfg:
        ssm_cfg = cfg.get("ssm_cfg") or {}
        layer = ssm_cfg.get("layer", "Mamba1") if isinstance(ssm_cfg, dict) else "Mamba1"
        if layer == "Mamba2":
            return "mamba2", "mamba_ssm"
        if layer != "Mamba1":
            raise CheckpointFormatError(
                f"ssm_cfg.layer={layer!r} is not supported; expected 'Mamba1' or 'Mamba2' layers"
            )
        return "mamba", "mamba_ssm"
    raise CheckpointFormatError(
        "unknown config format: expected a transformers MambaForCausalLM / Mamba2ForCausalLM config "
        "(model_type, hidden_size, num_hidden_layers, vocab_size, ...) or a mamba_ssm MambaLMHeadModel "
        f"config (d_model, n_layer, vocab_size, ssm_cfg, ...); found fields {sorted(cfg)}"
    )


def parse_model_config(
    cfg: dict[str, Any], source: str = "config.json"
) -> tuple[MambaLMConfig | Mamba2LMConfig, str, str]:
    """``(config, architecture, format)`` of a ``config.json`` dict; errors name ``source``."""
    try:
        arch, fmt = detect_architecture(cfg)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{source}: {exc}") from exc
    try:
        config = _PARSERS[arch, fmt](cfg, source)
    except CheckpointFormatError as exc:
        if source in str(exc):
            raise
        raise CheckpointFormatError(f"{source}: {exc}") from exc
    return config, arch, fmt
