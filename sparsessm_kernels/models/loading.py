"""Load any supported checkpoint with the right class: :func:`load_model`, :func:`read_model_config`.

The architecture comes from ``config.json`` (:func:`~.arch.detect_architecture`): transformers'
``model_type`` (``"mamba"`` / ``"mamba2"``) or mamba_ssm's ``ssm_cfg.layer`` (``"Mamba1"`` /
``"Mamba2"``). A Hub id is looked up for its config first (no weights), then loaded by the class.
"""

from __future__ import annotations

import os
from pathlib import Path

from .arch import parse_model_config
from .checkpoint import CONFIG_NAME, _read_json, resolve_checkpoint_dir
from .config import CheckpointFormatError, MambaLMConfig
from .mamba import MambaLM
from .mamba2 import Mamba2LM
from .mamba2_config import Mamba2LMConfig

_CLASSES = {"mamba": MambaLM, "mamba2": Mamba2LM}


def read_model_config(path: str | os.PathLike, revision: str | None = None) -> MambaLMConfig | Mamba2LMConfig:
    """The config of a model directory or Hub id, read from ``config.json`` alone (no weights).

    Raises:
        FileNotFoundError: the directory or its ``config.json`` is missing; a Hub id that cannot
            be resolved (:class:`~sparsessm_kernels.models.HubLookupError`).
        CheckpointFormatError: not a supported Mamba-1 / Mamba-2 config.
    """
    return _read(path, revision)[0]


def _read(path: str | os.PathLike, revision: str | None) -> tuple[MambaLMConfig | Mamba2LMConfig, str]:
    directory = resolve_checkpoint_dir(path, revision, weights=False)
    if not directory.exists():
        raise FileNotFoundError(f"model directory not found: {directory}")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory (expected a model directory with config.json)"
        )
    config_path = Path(directory) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: expected a Mamba model directory with config.json")
    raw = _read_json(config_path, "a Mamba model config")
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{config_path}: expected a JSON object, got {type(raw).__name__}")
    config, arch, _ = parse_model_config(raw, str(config_path))
    return config, arch


def load_model(path: str | os.PathLike, **kwargs) -> MambaLM | Mamba2LM:
    """:meth:`MambaLM.from_pretrained` or :meth:`Mamba2LM.from_pretrained`, as ``config.json`` says.

    Args:
        path: a checkpoint directory or Hub id.
        **kwargs: ``device``, ``dtype``, ``revision`` (see ``from_pretrained``).
    """
    _, arch = _read(path, kwargs.get("revision"))
    return _CLASSES[arch].from_pretrained(path, **kwargs)
