"""The baselines of ``bench_e2e.py``, loaded with the weights of the dense model being benchmarked.

* ``transformers``: transformers' ``MambaForCausalLM``. transformers takes the selective scan, the
  decode step and the causal convolutions from ``mamba_ssm`` / ``causal_conv1d`` when they import
  (:func:`kernel_status` lists which did) and runs its PyTorch fallbacks otherwise; without
  ``mamba_ssm`` the baseline is skipped (the fallback is not what it stands for) unless
  ``slow=True``. Decoding runs ``model.generate``.
* ``mamba_ssm``: mamba_ssm's ``MambaLMHeadModel``, decoding with its own ``generate(cg=True)``
  (CUDA-graph captured decode step); skipped when ``mamba_ssm`` does not import.

Both load :meth:`sparsessm_kernels.models.MambaLM.state_dict` (HF key names; mamba_ssm's embedding
is ``backbone.embedding``), so their logits are comparable with the benchmarked model's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsessm_kernels.models import MambaLM

BASELINES = ("transformers", "mamba_ssm")
KERNELS: dict[str, tuple[str, str]] = {
    "selective_scan_fn": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "mamba_inner_fn": ("mamba_ssm.ops.selective_scan_interface", "mamba_inner_fn"),
    "selective_state_update": ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update"),
    "causal_conv1d_fn": ("causal_conv1d", "causal_conv1d_fn"),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d_update"),
}
"""Kernels transformers' Mamba takes from the kernel packages when they import: name -> (module, attr)."""


def _import_error(module: str) -> str | None:
    """``None`` when ``module`` imports, else ``"<Type>: <message>"``."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # mamba_ssm raises more than ImportError without CUDA
        return f"{type(exc).__name__}: {exc}"
    return None


def kernel_status() -> list[str]:
    """The names of :data:`KERNELS` that import (what transformers' Mamba will run instead of PyTorch)."""
    found = []
    for name, (module, attr) in KERNELS.items():
        if _import_error(module) is None and getattr(importlib.import_module(module), attr, None) is not None:
            found.append(name)
    return found


def unavailable_reason(name: str, slow: bool) -> str | None:
    """Why baseline ``name`` cannot run here (``None`` when it can)."""
    if name not in BASELINES:
        raise ValueError(f"baseline: expected one of {BASELINES}, got {name!r}")
    mamba_ssm = _import_error("mamba_ssm")
    if name == "mamba_ssm":
        return None if mamba_ssm is None else f"mamba_ssm is not importable ({mamba_ssm})"
    transformers = _import_error("transformers")
    if transformers is not None:
        return f"transformers is not importable ({transformers})"
    if mamba_ssm is not None and not slow:
        return (
            f"mamba_ssm is not importable ({mamba_ssm}), so transformers' Mamba would run its PyTorch "
            "fallback, which is not this baseline (--slow-baselines times it anyway)"
        )
    return None


@dataclass
class Baseline:
    """A loaded baseline model and how it is driven (called under ``torch.no_grad``)."""

    name: str
    model: nn.Module
    decoder: str
    kernels: list[str] = field(default_factory=list)

    def last_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Full forward over ``ids`` ``(b, l)``: float32 logits of the last position ``(b, vocab)``."""
        if self.name == "transformers":
            return self.model(input_ids=ids, use_cache=False).logits[:, -1].float()
        return self.model(ids).logits[:, -1].float()

    def prefill(self, ids: torch.Tensor) -> Any:
        """Forward over ``ids`` filling the baseline's decode cache, last logits only."""
        if self.name == "transformers":
            return self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        from mamba_ssm.utils.generation import InferenceParams

        params = InferenceParams(max_seqlen=ids.shape[1] + 1, max_batch_size=ids.shape[0])
        return self.model(ids, inference_params=params, num_last_tokens=1)

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy generation of exactly ``new_tokens`` tokens after ``prompt`` (no end of sequence)."""
        if self.name == "transformers":
            return self.model.generate(
                prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        return self.model.generate(input_ids=prompt, max_length=prompt.shape[1] + new_tokens, cg=True)


def build(name: str, model: MambaLM, device: torch.device, dtype: torch.dtype) -> Baseline:
    """Baseline ``name`` with the weights of ``model`` (dense: no masks, dense projections)."""
    config = model.config
    state = model.state_dict()
    if name == "transformers":
        import transformers

        hf_config = {k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "model_type")}
        with torch.device(device):
            net = transformers.MambaForCausalLM(transformers.MambaConfig(**hf_config))
        net = net.to(dtype=dtype).eval()
        net.load_state_dict(state, strict=True)
        net.generation_config.eos_token_id = None  # generate exactly the tokens asked for
        net.generation_config.pad_token_id = 0
        return Baseline(name, net, "generate", kernel_status())
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    ssm_config = config.to_mamba_ssm_dict()
    ssm_config["fused_add_norm"] = device.type == "cuda"  # its Triton norms need CUDA
    net = MambaLMHeadModel(MambaConfig(**ssm_config), device=device, dtype=dtype).eval()
    renamed = {
        ("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in state.items()
    }
    net.load_state_dict(renamed, strict=True)
    return Baseline(name, net, "generate(cg=True)", ["mamba_ssm"])
