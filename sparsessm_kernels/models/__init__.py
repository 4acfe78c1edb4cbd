"""Mamba-1 language models on the sparse selective-scan kernels.

Layering: imports :mod:`sparsessm_kernels.ops`, :mod:`sparsessm_kernels.sparsity` and
:mod:`sparsessm_kernels._io` only (never ``prune`` / ``cli``).

* :class:`MambaLM` -- ``from_pretrained`` (HF ``MambaForCausalLM`` or mamba_ssm
  ``MambaLMHeadModel`` directories or Hugging Face Hub ids), ``from_config`` (random weights),
  per-layer state masks, prefill + decode cache, ``generate``, ``save_pretrained``,
  ``export_for_stock_kernels``.
* :class:`MambaLMConfig` -- the architecture; :class:`MambaCache` -- the (sparse) decode cache.
* :mod:`.hub` -- local path or Hub id -> local directory (:func:`resolve_local_or_hub`).
* :mod:`.zeroed_a_log` -- ``A_log`` entries stored as 0 by the SparseSSM authors' code.

Formats, masks files and export exactness are documented in ``docs/models.md``.
"""

from .._io import OutputPathError
from .cache import LayerCache, MambaCache
from .checkpoint import CheckpointContents, read_checkpoint, resolve_checkpoint_dir
from .config import CheckpointFormatError, MambaLMConfig, config_from_hf_dict, config_from_mamba_ssm_dict
from .export import PRUNED_A_LOG, ExportError, export_for_stock_kernels
from .hub import HubLookupError, resolve_local_or_hub
from .mamba import MambaBlock, MambaLM, MambaMixer, a_log_name, load_model
from .zeroed_a_log import ZeroedALogWarning, zeroed_a_log_layouts, zeroed_a_log_mask

__all__ = [
    "PRUNED_A_LOG",
    "CheckpointContents",
    "CheckpointFormatError",
    "ExportError",
    "HubLookupError",
    "LayerCache",
    "MambaBlock",
    "MambaCache",
    "MambaLM",
    "MambaLMConfig",
    "MambaMixer",
    "OutputPathError",
    "ZeroedALogWarning",
    "a_log_name",
    "config_from_hf_dict",
    "config_from_mamba_ssm_dict",
    "export_for_stock_kernels",
    "load_model",
    "read_checkpoint",
    "resolve_checkpoint_dir",
    "resolve_local_or_hub",
    "zeroed_a_log_layouts",
    "zeroed_a_log_mask",
]
