"""Drop-in integrations with other inference stacks.

* :mod:`sparsessm_kernels.integrations.transformers` -- ``apply(model, sparsity)`` / ``revert(model)``
  for transformers' ``MambaForCausalLM`` (and FalconMamba) and ``Mamba2ForCausalLM``.
* :mod:`sparsessm_kernels.integrations.mamba_ssm` -- the same for mamba_ssm's ``MambaLMHeadModel``.

The submodules import transformers / mamba_ssm lazily, only when used; importing this package
imports neither. Layering: integrations sit on top and may import every other layer.
"""

from ._common import ApplyReport, LayerSpec

__all__ = ["ApplyReport", "LayerSpec"]
