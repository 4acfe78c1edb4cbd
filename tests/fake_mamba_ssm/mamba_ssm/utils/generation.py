"""``InferenceParams`` with mamba_ssm 2.x's fields and ``GenerationMixin.generate`` with its signature."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InferenceParams:
    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: torch.Tensor | None = None

    def reset(self, max_seqlen: int, max_batch_size: int) -> None:
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0


class GenerationMixin:
    """mamba_ssm's ``generate`` signature, greedy only. ``cg`` is accepted and the stand-in decodes
    eagerly (the real one captures the decode step in a CUDA graph)."""

    def generate(
        self,
        input_ids,
        max_length,
        top_k=1,
        top_p=0.0,
        min_p=0.0,
        temperature=1.0,
        return_dict_in_generate=False,
        output_scores=False,
        eos_token_id=None,
        cg=False,
        **kwargs,
    ):
        assert top_k == 1, "the stand-in decodes greedily only"
        batch = input_ids.shape[0]
        params = InferenceParams(max_seqlen=max_length, max_batch_size=batch)
        sequences, scores, tokens = input_ids, [], input_ids
        while sequences.shape[1] < max_length:
            logits = self(tokens, inference_params=params, num_last_tokens=1).logits[:, -1]
            params.seqlen_offset += tokens.shape[1]
            scores.append(logits)
            tokens = logits.argmax(dim=-1, keepdim=True)
            sequences = torch.cat([sequences, tokens], dim=1)
            if eos_token_id is not None and bool((tokens == eos_token_id).all()):
                break
        if not return_dict_in_generate:
            return sequences
        return {"sequences": sequences, "scores": tuple(scores) if output_scores else None}
