"""Per-token decode cost: eager steps against static decoding (``generate(cg=True)``), per batch.

Per (model shape, state variant, batch), all on one machine in one run, with a random-weight
:class:`sparsessm_kernels.models.MambaLM` after a short prompt:

* ``eager_ms``: one eager decode step (``model(token, cache=cache)``), CUDA events around
  back-to-back calls (host cost included: what ``generate()`` pays per token);
* ``static_ms``: one step of the static decoder (precomputed constants, static cache; on CUDA a
  CUDA-graph replay with the token copied in);
* ``kernel_ms`` (CUDA): the sum of the GPU kernel times of one eager step (torch.profiler), the
  floor a host-free decoder approaches;
* ``generate_tok_s``: end-to-end ``generate`` tokens/s for ``--new-tokens`` tokens, eager and
  ``cg=True`` (prefill included once).

Every static run is first checked to produce the eager tokens (greedy). Goals recorded per row
(not asserted): ``static_ms <= 1.3 x kernel_ms`` at batch 1 and ``eager_ms / static_ms >= 5``.
``--smoke`` runs a tiny model on the CPU to check the script.

    python benchmarks/bench_decode.py                     # GPU: results/decode_<device>.json
    python benchmarks/bench_decode.py --smoke --out /tmp/d.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

from sparsessm_kernels.models import MambaLM, MambaLMConfig
from sparsessm_kernels.sparsity import StateSparsity, nm_mask

SHAPES = {"130m": (768, 24), "1.4b": (2048, 48)}
"""``(d_model, n_layer)`` of Mamba-1 models (``d_inner = 2 d_model``, ``n = 16``)."""
SMOKE_SHAPES = {"tiny": (32, 2)}
BATCHES = {"130m": (1, 8, 64, 256), "1.4b": (1, 64)}
VARIANTS = ("dense", "ssm_2:4")
GOAL_KERNEL_RATIO, GOAL_SPEEDUP = 1.3, 5.0


def build(
    d_model: int, n_layer: int, vocab: int, variant: str, device: torch.device, dtype: torch.dtype
) -> MambaLM:
    model = MambaLM.from_config(
        MambaLMConfig(vocab_size=vocab, d_model=d_model, n_layer=n_layer), device=device, dtype=dtype, seed=0
    ).eval()
    if variant == "ssm_2:4":
        gen = torch.Generator().manual_seed(1)
        for i in range(n_layer):
            m = model.mixer(i)
            mask = StateSparsity(nm_mask(torch.rand(m.d_inner, m.d_state, generator=gen), 2, 4), "2:4")
            model.set_state_mask(i, mask.to(device))
    return model


def kernel_ms(step: Any) -> float | None:
    """Sum of the CUDA kernel times (ms) of one call of ``step`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / 1e3 if total_us > 0 else None


def generate_tok_s(model: MambaLM, ids: torch.Tensor, new: int, cg: bool, device: torch.device) -> float:
    model.generate(ids, new, cg=cg)  # warm-up (captures graphs on CUDA)
    common.synchronize(device)
    t0 = time.perf_counter()
    model.generate(ids, new, cg=cg)
    common.synchronize(device)
    return ids.shape[0] * new / (time.perf_counter() - t0)


@torch.no_grad()
def bench_case(
    name: str, model: MambaLM, batch: int, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, args.vocab, (batch, args.prompt_len), generator=gen).to(device)
    want = model.generate(ids, args.check_tokens)
    got = model.generate(ids, args.check_tokens, cg=True)
    if not torch.equal(got, want):
        raise SystemExit(f"{name} b{batch}: cg=True tokens differ from eager generation")
    token = ids[:, -1]
    cache = model.allocate_cache(batch)
    model(ids, cache=cache)
    eager = common.time_fn(lambda: model(token[:, None], cache=cache), device, **args.timing)
    decoder = model.static_decoder()
    view = decoder.prepare(model, batch)
    with decoder.constants_frozen(model):
        model(ids, cache=view)
        static = common.time_fn(lambda: decoder.step(model, token, view), device, **args.timing)
    row: dict[str, Any] = {
        "model": name,
        "batch": batch,
        "eager_ms": eager.median_ms,
        "eager_iqr_ms": eager.iqr_ms,
        "static_ms": static.median_ms,
        "static_iqr_ms": static.iqr_ms,
        "static_speedup": common.ratio(eager.median_ms, static.median_ms),
        "graphs": device.type == "cuda",
    }
    if device.type == "cuda":
        row["kernel_ms"] = kernel_ms(lambda: model(token[:, None], cache=cache))
        row["static_over_kernel"] = common.ratio(static.median_ms, row["kernel_ms"])
        row["goal_speedup_met"] = (row["static_speedup"] or 0.0) >= GOAL_SPEEDUP
        if batch == 1:
            row["goal_kernel_ratio_met"] = (row["static_over_kernel"] or float("inf")) <= GOAL_KERNEL_RATIO
    for cg in (False, True):
        row[f"generate_tok_s_{'cg' if cg else 'eager'}"] = generate_tok_s(
            model, ids, args.new_tokens, cg, device
        )
    common.log(f"{name} b{batch}: eager {eager.median_ms:.3f} ms, static {static.median_ms:.3f} ms")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="result JSON (default results/decode_<device>.json)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--vocab", type=int, default=50288)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--check-tokens", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny model, few repeats (works on the CPU)")
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    if args.smoke:
        args.warmup, args.repeats, args.inner, args.vocab, args.new_tokens = 1, 3, 2, 64, 4
    args.timing = {"warmup": args.warmup, "repeats": args.repeats, "inner": args.inner}
    args.out = args.out or str(common.RESULTS_DIR / f"decode_{common.device_kind(device)}.json")
    common.check_out_path(parser, args.out)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shapes = SMOKE_SHAPES if args.smoke else {k: SHAPES[k] for k in args.shapes}
    rows = []
    for shape, (d_model, n_layer) in shapes.items():
        for variant in args.variants:
            model = build(d_model, n_layer, args.vocab, variant, device, dtype)
            for batch in (1, 2) if args.smoke else BATCHES[shape]:
                rows.append({"variant": variant, **bench_case(shape, model, batch, device, args)})
            del model
    result = {
        **common.result_header("decode", device),
        "config": {
            "dtype": str(dtype).replace("torch.", ""),
            "shapes": {k: {"d_model": v[0], "n_layer": v[1]} for k, v in shapes.items()},
            "vocab": args.vocab,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "timing": args.timing,
            "smoke": args.smoke,
            "goals": {
                "static_over_kernel_at_batch_1": GOAL_KERNEL_RATIO,
                "static_speedup_over_eager": GOAL_SPEEDUP,
            },
        },
        "backends": common.backend_status(),
        "run": common.run_provenance(argv, args.out),
        "rows": rows,
    }
    common.write_json_atomic(args.out, result)
    columns = [("model", "model"), ("variant", "variant"), ("batch", "b"), ("eager_ms", "eager ms")]
    columns += [("static_ms", "static ms"), ("kernel_ms", "kernels ms"), ("static_speedup", "speedup")]
    print(common.format_table(rows, columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
