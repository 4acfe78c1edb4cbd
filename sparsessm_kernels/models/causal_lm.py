"""What the language models of this package share: construction, the cached forward, generation.

:class:`SSMCausalLM` is the base of :class:`~.mamba.MambaLM` (Mamba-1) and
:class:`~.mamba2.Mamba2LM` (Mamba-2). A subclass provides

* ``backbone`` with ``embeddings`` (``nn.Embedding``), ``layers`` (blocks with
  ``forward(hidden (b, l, d_model), layer_cache or None)`` and ``step(hidden (b, d_model),
  layer_cache)``) and ``norm_f``, and ``lm_head`` (tied to the embeddings when
  ``config.tie_embeddings``);
* ``_init_weights()``, the random initialisation of :meth:`SSMCausalLM.from_config`;
* ``allocate_cache(batch_size, *, compact=True, device=None)`` returning a
  :class:`~.cache.MambaCache` with one :class:`~.cache.LayerCache` per layer.

Generation (:meth:`SSMCausalLM.generate`) runs eagerly or, with ``cg=True``, through the model's
:class:`~.decode.StaticDecoder` (persistent cache, precomputed constants, CUDA graphs).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from .cache import LayerCache, MambaCache
from .decode import StaticDecoder, generate_tokens, static_decoder_of

_LM = TypeVar("_LM", bound="SSMCausalLM")


class SSMCausalLM(nn.Module):
    """Base class: see the module docstring for what a subclass provides."""

    config: Any
    backbone: nn.Module
    lm_head: nn.Linear

    # -------------------------------------------------------------- construction
    @classmethod
    def from_config(
        cls: type[_LM],
        config: Any,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        seed: int | None = None,
    ) -> _LM:
        """A model with **random** weights (Mamba's usual initialisation), for tests and demos.

        Args:
            config: the architecture (the subclass's config type).
            device, dtype: where / in which dtype the weights live (default CPU float32).
            seed: seed the initialisation (the global RNG state is restored afterwards).
        """
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = cls(config)
            model._init_weights()
        return model.to(device=device, dtype=dtype or torch.float32)

    @classmethod
    def _from_tensors(
        cls: type[_LM],
        config: Any,
        tensors: dict[str, torch.Tensor],
        source: str,
        device: torch.device | str | None,
        dtype: torch.dtype | str | None,
    ) -> _LM:
        """A model of ``config`` holding ``tensors`` (checkpoint keys, ``lm_head.weight`` absent
        when tied), after a strict key and shape check against the model.

        Args:
            source: the weights file(s), named in errors.
            device: where to put the weights (default CPU).
            dtype: weight dtype (default float32; ``"auto"``: that of the stored embeddings).

        Raises:
            CheckpointFormatError: missing / unexpected keys, shape mismatches (all listed).
            TypeError: a bad ``dtype``.
        """
        from .checkpoint import validate_state_dict

        with torch.device("meta"):
            model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if config.tie_embeddings:
            expected.pop("lm_head.weight", None)
        validate_state_dict(tensors, expected, config, source)
        if dtype == "auto":
            dtype = tensors["backbone.embeddings.weight"].dtype
        elif dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype: expected None, 'auto' or a torch.dtype, got {dtype!r}")
        dtype = dtype or torch.float32
        placed = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
        if config.tie_embeddings:
            placed["lm_head.weight"] = placed["backbone.embeddings.weight"]
        model.load_state_dict(placed, strict=True, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.backbone.embeddings.weight
        return model

    # -------------------------------------------------------------- properties
    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.backbone.embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.backbone.embeddings.weight.device

    def mixer(self, layer_idx: int) -> nn.Module:
        """The mixer of layer ``layer_idx`` (raises ``IndexError`` naming the valid range)."""
        n = len(self.backbone.layers)
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not 0 <= layer_idx < n:
            raise IndexError(f"layer_idx: expected an integer in [0, {n}), got {layer_idx!r}")
        return self.backbone.layers[layer_idx].mixer

    # -------------------------------------------------------------- forward
    def clear_state_masks(self) -> None:
        """Remove every state mask (``set_state_mask(i, None)`` on every layer; Mamba-2 head transition
        masks stay)."""
        for i in range(len(self.backbone.layers)):
            self.set_state_mask(i, None)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone.norm_f(hidden)
        return self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: MambaCache | None = None,
        *,
        last_logits_only: bool = False,
    ) -> torch.Tensor:
        """Logits of a token sequence.

        Args:
            input_ids: ``(b, l)`` int64 token ids.
            cache: optional :class:`MambaCache` (updated in place). Empty cache
                (``seqlen_offset == 0``): prefill with the scan kernel, storing the final states.
                Non-empty: the tokens continue the cached sequence and run through the decode
                step one token at a time.
            last_logits_only: return only the last position's logits, ``(b, 1, vocab)``.

        Returns:
            ``(b, l, vocab)`` float32 logits (``(b, 1, vocab)`` with ``last_logits_only``).
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = (
                tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            )
            raise ValueError(f"input_ids: expected a (b, l) integer tensor, got {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids: expected an integer dtype, got {input_ids.dtype}")
        b, seqlen = input_ids.shape
        if seqlen < 1:
            raise ValueError("input_ids: expected at least one token")
        if cache is not None:
            if cache.batch_size != b:
                raise ValueError(f"cache: allocated for batch size {cache.batch_size}, got input batch {b}")
            if len(cache.layers) != len(self.backbone.layers):
                raise ValueError(
                    f"cache: has {len(cache.layers)} layers, the model has {len(self.backbone.layers)}"
                )
        if cache is not None and cache.seqlen_offset > 0:
            steps = [self._step(input_ids[:, t], cache) for t in range(seqlen)]
            logits = torch.stack(steps, dim=1)
            return logits[:, -1:] if last_logits_only else logits

        hidden = self.backbone.embeddings(input_ids)
        for i, blk in enumerate(self.backbone.layers):
            hidden = blk(hidden, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.seqlen_offset += seqlen
        if last_logits_only:
            hidden = hidden[:, -1:]
        return self._logits(hidden)

    def _step(self, token: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """``(b,)`` token ids -> ``(b, vocab)`` float32 logits, advancing ``cache`` by one token."""
        logits = self.decode_body(token, cache.layers)
        cache.seqlen_offset += 1
        return logits

    def decode_body(self, token: torch.Tensor, layers: list[LayerCache]) -> torch.Tensor:
        """One decode step: ``(b,)`` token ids -> ``(b, vocab)`` float32 logits; ``layers`` (the
        :class:`~.cache.LayerCache` of every layer) are updated in place.

        No Python-int state (the position is not needed) and no host synchronisation, so
        ``torch.compile(fullgraph=True)`` traces it as one graph and a CUDA graph replays it.
        """
        hidden = self.backbone.embeddings(token)
        for blk, lc in zip(self.backbone.layers, layers):
            hidden = blk.step(hidden, lc)
        return self._logits(hidden)

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        *,
        compact_cache: bool = True,
        cg: bool = False,
        eos_check_interval: int | None = None,
    ) -> torch.Tensor:
        """Autoregressive generation with the prefill + decode cache.

        Args:
            input_ids: ``(b, l)`` prompt.
            max_new_tokens: tokens to add (``>= 0``).
            do_sample: sample (``temperature`` / ``top_k`` / ``top_p``) instead of greedy argmax.
            eos_token_id: a sequence that emits one of these ids is finished; it is padded with
                the (first) eos id afterwards, and generation stops early once every sequence
                is finished (so the result may be shorter than ``l + max_new_tokens``).
            generator: RNG for sampling.
            compact_cache: use compact SSM states for uniform masks (see :meth:`allocate_cache`).
            cg: static decoding through :meth:`static_decoder`: one persistent cache reused by every
                call, per-layer constants computed once, and on CUDA the decode step captured in a
                CUDA graph per batch size and replayed (see :mod:`~sparsessm_kernels.models.decode`).
                The tokens equal those of ``cg=False``. Off by default (not yet measured on a GPU).
            eos_check_interval: with ``eos_token_id``, check whether every sequence has finished
                (one host synchronisation) only every this many tokens; the result is the same.
                Default: 1 on the CPU, 16 on other devices.

        Returns:
            ``(b, l + generated)`` int64 tokens, prompt included.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature: expected > 0 when sampling, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k: expected None or an integer >= 1, got {top_k!r}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p: expected None or a float in (0, 1], got {top_p!r}")
        if eos_check_interval is not None and (
            isinstance(eos_check_interval, bool)
            or not isinstance(eos_check_interval, int)
            or eos_check_interval < 1
        ):
            raise ValueError(
                f"eos_check_interval: expected None or an integer >= 1, got {eos_check_interval!r}"
            )
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        input_ids = input_ids.to(self.device)
        if max_new_tokens == 0:
            return input_ids.clone()
        if eos_check_interval is None:
            eos_check_interval = 1 if self.device.type == "cpu" else 16

        def pick(logits: torch.Tensor) -> torch.Tensor:
            if do_sample:
                return _sample(logits, temperature, top_k, top_p, generator)
            return logits.argmax(dim=-1)

        b = input_ids.shape[0]
        if cg:
            decoder = self.static_decoder()
            cache = decoder.prepare(self, b, compact=compact_cache)
            context: contextlib.AbstractContextManager = decoder.constants_frozen(self)

            def step(nxt: torch.Tensor) -> torch.Tensor:
                return decoder.step(self, nxt, cache)

        else:
            decoder, context = None, contextlib.nullcontext()
            cache = self.allocate_cache(b, compact=compact_cache)

            def step(nxt: torch.Tensor) -> torch.Tensor:
                return self(nxt[:, None], cache=cache)[:, -1]

        with context:
            if decoder is not None:  # before the prefill: the capture's warm-up steps change the states
                decoder.capture_if_needed(self, cache)
            logits = self(input_ids, cache=cache, last_logits_only=True)[:, -1]
            new = generate_tokens(logits, step, pick, max_new_tokens, eos, eos_check_interval)
        return torch.cat([input_ids.long(), new], dim=1)

    # -------------------------------------------------------------- static decoding
    def static_decoder(self) -> StaticDecoder:
        """This model's :class:`~.decode.StaticDecoder` (what ``generate(cg=True)`` uses; created once)."""
        return static_decoder_of(self)

    def prepare_static_decode(self, max_batch_size: int, *, compact_cache: bool = True) -> StaticDecoder:
        """Allocate the static cache of ``generate(cg=True)`` for batches up to ``max_batch_size`` now
        (otherwise it grows to the largest batch seen, dropping captured graphs when it does)."""
        decoder = self.static_decoder()
        decoder.prepare(self, max_batch_size, compact=compact_cache)
        return decoder


def initial_dt_bias(
    size: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4
) -> torch.Tensor:
    """Mamba's ``dt`` bias initialisation: ``softplus^-1(dt)`` with ``dt`` log-uniform in
    ``[dt_min, dt_max]`` (clamped to ``floor``), ``(size,)`` float32."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def _sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Sample one token per row of ``logits`` ``(b, vocab)`` -> ``(b,)`` int64."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one always stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
