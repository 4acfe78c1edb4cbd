"""Mamba-1 language models on the sparse selective-scan kernels.

Layering: imports :mod:`sparsessm_kernels.ops`, :mod:`sparsessm_kernels.sparsity` and
:mod:`sparsessm_kernels._io` only (never ``prune`` / ``cli``).

* :class:`MambaLM` -- ``from_pretrained`` (HF ``MambaForCausalLM`` or mamba_ssm
  ``MambaLMHeadModel`` directories), ``from_config`` (random weights), per-layer state masks,
  prefill + decode cache, ``generate``, ``save_pretrained``, ``export_for_stock_kernels``.
* :class:`MambaLMConfig` -- the architecture; :class:`MambaCache` -- the (sparse) decode cache.

Formats, masks files and export exactness are documented in ``docs/models.md``.
"""

from .._io import OutputPathError
from .cache import LayerCache, MambaCache
from .checkpoint import CheckpointContents, read_checkpoint
from .config import CheckpointFormatError, MambaLMConfig, config_from_hf_dict, config_from_mamba_ssm_dict
from .export import PRUNED_A_LOG, ExportError, export_for_stock_kernels
from .mamba import MambaBlock, MambaLM, MambaMixer, a_log_name, load_model

__all__ = [
    "PRUNED_A_LOG",
    "CheckpointContents",
    "CheckpointFormatError",
    "ExportError",
    "LayerCache",
    "MambaBlock",
    "MambaCache",
    "MambaLM",
    "MambaLMConfig",
    "MambaMixer",
    "OutputPathError",
    "a_log_name",
    "config_from_hf_dict",
    "config_from_mamba_ssm_dict",
    "export_for_stock_kernels",
    "load_model",
    "read_checkpoint",
]
