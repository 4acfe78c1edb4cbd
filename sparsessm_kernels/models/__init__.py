"""Mamba-1 and Mamba-2 language models on the sparse scan kernels.

Layering: imports :mod:`sparsessm_kernels.ops`, :mod:`sparsessm_kernels.sparsity` and
:mod:`sparsessm_kernels._io` only (never ``prune`` / ``cli``).

* :class:`MambaLM` -- Mamba-1: ``from_pretrained`` (HF ``MambaForCausalLM`` or mamba_ssm
  ``MambaLMHeadModel`` directories or Hugging Face Hub ids), ``from_config`` (random weights),
  per-layer state masks, prefill + decode cache, ``generate``, ``save_pretrained``,
  ``export_for_stock_kernels``.
* :class:`Mamba2LM` -- Mamba-2 (HF ``Mamba2ForCausalLM``, mamba_ssm with Mamba2 layers), the same
  interface with per-group / per-head state masks and head transition masks.
* :func:`load_model` -- either class, as the checkpoint's ``config.json`` says.
* :class:`MambaLMConfig` / :class:`Mamba2LMConfig` -- the architectures; :class:`MambaCache` --
  the (sparse) decode cache of both.
* :mod:`.hub` -- local path or Hub id -> local directory (:func:`resolve_local_or_hub`).
* :mod:`.zeroed_a_log` -- ``A_log`` entries stored as 0 by the SparseSSM authors' code (Mamba-1).

Formats, masks files and export exactness are documented in ``docs/models.md``.
"""

from .._io import OutputPathError
from .arch import detect_architecture
from .cache import LayerCache, MambaCache
from .checkpoint import CheckpointContents, read_checkpoint, resolve_checkpoint_dir
from .config import CheckpointFormatError, MambaLMConfig, config_from_hf_dict, config_from_mamba_ssm_dict
from .export import PRUNED_A_LOG, ExportError, export_for_stock_kernels
from .hub import HubLookupError, resolve_local_or_hub
from .loading import load_model, read_model_config
from .mamba import MambaBlock, MambaLM, MambaMixer, a_log_name
from .mamba2 import Mamba2LM, Mamba2Mixer, ssm_state_name
from .mamba2_config import Mamba2LMConfig, config_from_hf_mamba2_dict, config_from_mamba_ssm_mamba2_dict
from .zeroed_a_log import ZeroedALogWarning, zeroed_a_log_layouts, zeroed_a_log_mask

__all__ = [
    "PRUNED_A_LOG",
    "CheckpointContents",
    "CheckpointFormatError",
    "ExportError",
    "HubLookupError",
    "LayerCache",
    "Mamba2LM",
    "Mamba2LMConfig",
    "Mamba2Mixer",
    "MambaBlock",
    "MambaCache",
    "MambaLM",
    "MambaLMConfig",
    "MambaMixer",
    "OutputPathError",
    "ZeroedALogWarning",
    "a_log_name",
    "config_from_hf_dict",
    "config_from_hf_mamba2_dict",
    "config_from_mamba_ssm_dict",
    "config_from_mamba_ssm_mamba2_dict",
    "detect_architecture",
    "export_for_stock_kernels",
    "load_model",
    "read_checkpoint",
    "read_model_config",
    "resolve_checkpoint_dir",
    "resolve_local_or_hub",
    "ssm_state_name",
    "zeroed_a_log_layouts",
    "zeroed_a_log_mask",
]
