"""Static decoding: a persistent cache, per-layer constants and CUDA graphs for ``generate(cg=True)``.

Decoding one token runs a few hundred small ops; on a GPU their launch and Python cost hides the
kernels. :class:`StaticDecoder` removes it the way graph-captured decoders do:

* **one static cache** (:meth:`~.causal_lm.SSMCausalLM.allocate_cache`) sized for the largest batch
  seen (or :meth:`~.causal_lm.SSMCausalLM.prepare_static_decode`), allocated once and reused by every
  ``generate(cg=True)`` call; a batch ``b`` uses views of its first ``b`` rows, so the state
  addresses never change (prefill writes them in place, decode steps update them in place);
* **per-layer constants** computed once (``A = -exp(A_log)``, ``D`` and the ``dt`` bias in float32,
  see :meth:`~.mamba.MambaMixer.fp32_constants` and :meth:`~.mamba2.Mamba2Mixer.fp32_constants`;
  state layouts live on the device already);
* **a decode body without Python-int state or host synchronisation**:
  :meth:`~.causal_lm.SSMCausalLM.decode_body` maps ``(b,)`` token ids to ``(b, vocab)`` logits and
  advances the cache (Mamba needs no position), so ``torch.compile(fullgraph=True)`` traces it as
  one graph and a CUDA graph can replay it;
* **CUDA graphs per batch size** (CUDA only): after two warm-up steps on a side stream the body is
  captured into a graph with a static token input and static logits output (all graphs share one
  memory pool); a step copies the token in and replays;
* **invalidation**: the decoder remembers a signature of the model (every parameter's identity,
  address, in-place version, dtype and device, and every layer's state / head mask and
  ``pruned_states``) and rebuilds constants, cache and graphs when it changes -- after
  ``set_state_mask``, ``load_state_dict``, in-place weight edits, ``model.to(...)``.

The sampling / argmax and end-of-sequence bookkeeping of :func:`generate_tokens` stay outside the
graph and never synchronise with the host inside the loop, except every ``eos_check_interval``
steps to stop early (see :func:`generate_tokens`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .cache import LayerCache, MambaCache

Signature = tuple[Any, ...]


def model_signature(model: nn.Module, compact: bool) -> Signature:
    """What a static decoder's cache, constants and graphs depend on (compared with ``==``).

    Every parameter's identity, data address, in-place version counter, dtype, device and shape;
    every layer's state layout and head transition mask (by identity) and ``pruned_states``; the
    ``compact`` choice of the cache.
    """
    params = tuple(
        (id(p), p.data_ptr(), p._version, p.dtype, p.device, tuple(p.shape)) for p in model.parameters()
    )
    masks = tuple(
        (
            id(getattr(blk.mixer, "layout", None)),
            getattr(blk.mixer, "pruned_states", None),
            id(getattr(blk.mixer, "head_transition_mask", None)),
        )
        for blk in model.backbone.layers
    )
    return (params, masks, compact)


class StaticDecoder:
    """The persistent decode state of one model (see the module docstring).

    Not a module: it holds no reference to the model, which is passed to every call. Obtain it with
    :meth:`~.causal_lm.SSMCausalLM.static_decoder`.

    Attributes:
        capacity: rows of the static cache (the largest batch it serves without reallocating).
        cache: the static :class:`~.cache.MambaCache` (``capacity`` rows), or ``None`` before use.
        use_graphs: capture CUDA graphs (CUDA devices only; ``False`` runs the body eagerly).
        body: ``(model, token (b,), layers) -> (b, vocab)`` logits; by default
            ``type(model).decode_body``. Replaceable, e.g. by a ``torch.compile(fullgraph=True)``
            of it (graphs are captured from whatever ``body`` is).
        captures: how many CUDA graphs were captured so far (for tests and reports).
    """

    def __init__(self) -> None:
        self.capacity = 0
        self.cache: MambaCache | None = None
        self.use_graphs = True
        self.body: Callable[[nn.Module, torch.Tensor, list[LayerCache]], torch.Tensor] | None = None
        self.captures = 0
        self._signature: Signature | None = None
        self._constants: list[Any] = []
        self._views: dict[int, MambaCache] = {}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool: Any = None

    # -------------------------------------------------------------- state
    def invalidate(self) -> None:
        """Drop the cache, the constants and every captured graph (the next call rebuilds them)."""
        self.cache, self.capacity, self._signature = None, 0, None
        self._constants, self._views, self._graphs, self._pool = [], {}, {}, None

    def prepare(self, model: nn.Module, batch_size: int, *, compact: bool = True) -> MambaCache:
        """Make the decoder valid for ``model`` and a batch of ``batch_size``; return that batch's cache.

        Rebuilds everything when the model's signature changed, and reallocates the cache (dropping
        the graphs) when ``batch_size`` exceeds the capacity.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        signature = model_signature(model, compact)
        if signature != self._signature:
            self.invalidate()
            self._signature = signature
            self._constants = [_mixer_constants(blk.mixer) for blk in model.backbone.layers]
        if batch_size > self.capacity:
            self.cache = None
            self._views, self._graphs, self._pool = {}, {}, None
            self.cache = model.allocate_cache(batch_size, compact=compact)
            self.capacity = batch_size
        return self.view(batch_size)

    def view(self, batch_size: int) -> MambaCache:
        """The cache of the first ``batch_size`` rows (views of the static cache; one object per size)."""
        if self.cache is None or batch_size > self.capacity:
            raise RuntimeError(f"static decoder: no cache for batch {batch_size}; call prepare() first")
        view = self._views.get(batch_size)
        if view is None:
            layers = [
                LayerCache(lc.conv_state[:batch_size], lc.ssm_state[:batch_size], lc.layout, lc.compact)
                for lc in self.cache.layers
            ]
            view = self._views[batch_size] = MambaCache(layers=layers, batch_size=batch_size)
        view.seqlen_offset = 0
        return view

    @contextmanager
    def constants_frozen(self, model: nn.Module) -> Iterator[None]:
        """Within the block, the mixers use the precomputed constants (set, then always cleared)."""
        mixers = [blk.mixer for blk in model.backbone.layers]
        try:
            for mixer, consts in zip(mixers, self._constants):
                if consts is not None:
                    mixer.frozen_constants = consts
            yield
        finally:
            for mixer in mixers:
                if hasattr(mixer, "frozen_constants"):
                    mixer.frozen_constants = None

    # -------------------------------------------------------------- steps
    def _body(self, model: nn.Module) -> Callable[[nn.Module, torch.Tensor, list[LayerCache]], torch.Tensor]:
        return self.body if self.body is not None else type(model).decode_body

    def step(self, model: nn.Module, token: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """``(b,)`` token ids -> ``(b, vocab)`` float32 logits, advancing ``cache`` (a :meth:`view`).

        CUDA with :attr:`use_graphs`: replays the graph of this batch size (captured on first use);
        the returned logits are the graph's static output, valid until the next step. Must run
        inside :meth:`constants_frozen`.
        """
        if not (self.use_graphs and token.device.type == "cuda"):
            return self._body(model)(model, token, cache.layers)
        entry = self._graphs.get(cache.batch_size)
        if entry is None:
            entry = self._graphs[cache.batch_size] = self._capture(model, cache)
        graph, token_in, logits_out = entry
        token_in.copy_(token)
        graph.replay()
        return logits_out

    def capture_if_needed(self, model: nn.Module, cache: MambaCache) -> None:
        """Capture the graph of ``cache.batch_size`` now when :meth:`step` would use one and none exists
        (CUDA, :attr:`use_graphs`). Its warm-up steps change the states: call it before the prefill."""
        device = cache.layers[0].ssm_state.device
        if self.use_graphs and device.type == "cuda" and cache.batch_size not in self._graphs:
            self._graphs[cache.batch_size] = self._capture(model, cache)

    def _capture(
        self, model: nn.Module, cache: MambaCache
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Capture the decode body for ``cache.batch_size`` (two warm-up steps on a side stream first,
        which also builds lazily allocated kernel buffers). Mutates the cache: call before prefill."""
        body = self._body(model)
        device = cache.layers[0].ssm_state.device
        token_in = torch.zeros(cache.batch_size, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                body(model, token_in, cache.layers)
        torch.cuda.current_stream(device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits_out = body(model, token_in, cache.layers)
        self.captures += 1
        return graph, token_in, logits_out

    def graph_batch_sizes(self) -> list[int]:
        """Batch sizes with a captured graph."""
        return sorted(self._graphs)


def _mixer_constants(mixer: nn.Module) -> Any:
    """The mixer's precomputed decode constants, or ``None`` when it has none to precompute."""
    compute = getattr(mixer, "fp32_constants", None)
    if compute is None:
        return None
    mixer.frozen_constants = None
    with torch.no_grad():
        return tuple(t.detach().clone() for t in compute())


_DECODERS: weakref.WeakKeyDictionary[nn.Module, StaticDecoder] = weakref.WeakKeyDictionary()


def static_decoder_of(model: nn.Module) -> StaticDecoder:
    """The model's :class:`StaticDecoder` (created on first use; kept outside the module so that
    copies, ``state_dict`` and pickling of the model never see it)."""
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = StaticDecoder()
    return decoder


# ---------------------------------------------------------------------- the generation loop
def generate_tokens(
    first_logits: torch.Tensor,
    step: Callable[[torch.Tensor], torch.Tensor],
    pick: Callable[[torch.Tensor], torch.Tensor],
    max_new_tokens: int,
    eos: Sequence[int],
    eos_check_interval: int,
) -> torch.Tensor:
    """The autoregressive loop shared by eager and static generation: ``(b, generated)`` int64.

    Args:
        first_logits: ``(b, vocab)`` logits after the prompt.
        step: ``(b,)`` token ids -> next ``(b, vocab)`` logits (advancing the cache).
        pick: ``(b, vocab)`` logits -> ``(b,)`` token ids (argmax or sampling).
        eos: end-of-sequence ids; a finished sequence is padded with ``eos[0]``.
        eos_check_interval: with ``eos``, the loop synchronises with the host only every this many
            tokens to see whether every sequence has finished; the per-token "all finished" flags
            stay on the device and the result is cut after the first token at which every sequence
            had finished, so it equals checking every token (at most ``eos_check_interval - 1``
            wasted steps). Without ``eos`` the loop never synchronises.
    """
    device = first_logits.device
    eos_t = torch.tensor(list(eos), dtype=torch.long, device=device)
    finished = torch.zeros(first_logits.shape[0], dtype=torch.bool, device=device)
    logits = first_logits
    tokens: list[torch.Tensor] = []
    all_done: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        nxt = pick(logits)
        if eos:
            nxt = torch.where(finished, eos_t[0], nxt)
            finished = finished | torch.isin(nxt, eos_t)
            all_done.append(finished.all())
        tokens.append(nxt)
        if i == max_new_tokens - 1:
            break
        if eos and (i + 1) % eos_check_interval == 0 and bool(all_done[-1]):
            break
        logits = step(nxt)
    out = torch.stack(tokens, dim=1)
    if eos:
        done = torch.stack(all_done)
        if bool(done.any()):
            out = out[:, : int(done.int().argmax()) + 1]
    return out
