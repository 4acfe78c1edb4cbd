"""transformers' ``cache_implementation="static"`` and ``torch.compile`` with the patched mixer (CPU)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import MambaConfig, MambaForCausalLM  # noqa: E402

from sparsessm_kernels.integrations import transformers as hf  # noqa: E402
from sparsessm_kernels.models import a_log_name  # noqa: E402
from sparsessm_kernels.sparsity import column_mask, nm_mask  # noqa: E402

VOCAB, D_MODEL, N = 96, 32, 16


def _patched_model() -> MambaForCausalLM:
    torch.manual_seed(0)
    cfg = MambaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=2, state_size=N, expand=2,
        conv_kernel=4, eos_token_id=None, pad_token_id=None, bos_token_id=None,
    )  # fmt: skip
    model = MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for blk in model.backbone.layers:
            blk.mixer.dt_proj.bias.uniform_(-1, 1)
    g = torch.Generator().manual_seed(1)
    masks = {
        a_log_name(0): column_mask(torch.rand(N, generator=g), 0.5),
        a_log_name(1): nm_mask(torch.rand(2 * D_MODEL, N, generator=g), 2, 4),
    }
    hf.apply(model, masks)
    return model


def test_static_cache_and_fullgraph_compile_match_eager() -> None:
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    model = _patched_model()
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    want = model.generate(ids, max_new_tokens=6, do_sample=False)
    static = model.generate(
        ids, max_new_tokens=6, do_sample=False, cache_implementation="static", return_dict_in_generate=True
    )
    assert torch.equal(static.sequences, want)
    cache = static.past_key_values
    assert type(cache).__name__ == "StaticCache"
    for layer_idx in range(2):  # column 50 % and 2:4: compact (b, d_inner, k) states in the static cache
        state = cache.layers[layer_idx].recurrent_states[0]
        assert tuple(state.shape) == (2, 2 * D_MODEL, N // 2)

    dynamo.reset()
    counters.clear()
    eager_forward = model.forward
    model.forward = torch.compile(eager_forward, fullgraph=True, backend="aot_eager")
    try:
        got = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static")
        with dynamo.config.patch(error_on_recompile=True):  # same shapes again: no recompilation
            again = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static")
    finally:
        model.forward = eager_forward
    assert torch.equal(got, want) and torch.equal(again, want)
    assert counters["stats"]["unique_graphs"] == 2  # the prefill and the one-token decode step
    assert sum(counters["graph_break"].values()) == 0
