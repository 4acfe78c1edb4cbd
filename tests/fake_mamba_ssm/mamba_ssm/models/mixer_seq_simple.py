"""``MixerModel`` / ``MambaLMHeadModel`` with mamba_ssm 2.x's structure (Mamba-1, no attention/MLP)."""

from __future__ import annotations

from collections import namedtuple
from functools import partial

import torch
from torch import nn

from mamba_ssm.models.config_mamba import MambaConfig
from mamba_ssm.modules.block import Block
from mamba_ssm.modules.mamba_simple import Mamba
from mamba_ssm.utils.generation import GenerationMixin


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def create_block(
    d_model,
    ssm_cfg=None,
    norm_epsilon=1e-5,
    rms_norm=False,
    residual_in_fp32=False,
    layer_idx=None,
    device=None,
    dtype=None,
):
    ssm_cfg = dict(ssm_cfg or {})
    assert ssm_cfg.pop("layer", "Mamba1") == "Mamba1"
    kw = {"device": device, "dtype": dtype}
    mixer_cls = partial(Mamba, layer_idx=layer_idx, **ssm_cfg, **kw)
    norm_cls = partial(nn.LayerNorm if not rms_norm else RMSNorm, eps=norm_epsilon, **kw)
    block = Block(d_model, mixer_cls, nn.Identity, norm_cls=norm_cls, residual_in_fp32=residual_in_fp32)
    block.layer_idx = layer_idx
    return block


class MixerModel(nn.Module):
    def __init__(
        self,
        d_model,
        n_layer,
        vocab_size,
        ssm_cfg=None,
        rms_norm=False,
        residual_in_fp32=False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.residual_in_fp32 = residual_in_fp32
        self.embedding = nn.Embedding(vocab_size, d_model, **kw)
        self.fused_add_norm = False
        self.layers = nn.ModuleList(
            create_block(
                d_model, ssm_cfg, rms_norm=rms_norm, residual_in_fp32=residual_in_fp32, layer_idx=i, **kw
            )
            for i in range(n_layer)
        )
        self.norm_f = (nn.LayerNorm if not rms_norm else RMSNorm)(d_model, eps=1e-5, **kw)

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return {
            i: layer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
            for i, layer in enumerate(self.layers)
        }

    def forward(self, input_ids, inference_params=None, **mixer_kwargs):
        hidden_states = self.embedding(input_ids)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual, inference_params=inference_params)
        residual = (hidden_states + residual) if residual is not None else hidden_states
        return self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))


class MambaLMHeadModel(nn.Module, GenerationMixin):
    def __init__(self, config: MambaConfig, initializer_cfg=None, device=None, dtype=None):
        super().__init__()
        self.config = config
        vocab = config.vocab_size
        if vocab % config.pad_vocab_size_multiple:
            vocab += config.pad_vocab_size_multiple - vocab % config.pad_vocab_size_multiple
        assert not config.fused_add_norm and not config.attn_layer_idx and config.d_intermediate == 0
        self.backbone = MixerModel(
            config.d_model,
            config.n_layer,
            vocab,
            ssm_cfg=config.ssm_cfg,
            rms_norm=config.rms_norm,
            residual_in_fp32=config.residual_in_fp32,
            device=device,
            dtype=dtype,
        )
        self.lm_head = nn.Linear(config.d_model, vocab, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return self.backbone.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)

    def forward(self, input_ids, position_ids=None, inference_params=None, num_last_tokens=0, **mixer_kwargs):
        hidden_states = self.backbone(input_ids, inference_params=inference_params, **mixer_kwargs)
        if num_last_tokens > 0:
            hidden_states = hidden_states[:, -num_last_tokens:]
        CausalLMOutput = namedtuple("CausalLMOutput", ["logits"])
        return CausalLMOutput(logits=self.lm_head(hidden_states))
