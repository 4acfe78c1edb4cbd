"""``sparsessm demo --arch mamba2``: the embedded tiny Mamba-2 with per-group state masks.

Steps, on the embedded checkpoint ``tiny_mamba2/`` (:data:`.run.MODEL_DIRS`):

1. held-out text and calibration windows as for Mamba-1 (the held-out / training standard-library
   files of ``training_config.json``);
2. for each case of :data:`DEMO_CASES_MAMBA2`: a fresh copy of the model, ``prune_model`` on its
   states (``--targets states``, 50%: every layer gets a per-group state mask, the same number of
   states kept in every group, ``pruned_states="remove"``: the pruned ``B`` / ``C`` columns
   contribute nothing), held-out perplexity;
3. the masked SSD scan of layer 0 on random layer-shaped inputs (``(1, scan_seqlen, nheads,
   headdim)``): its largest error against the float64 reference ``ssd_scan_ref`` on the first
   ``check_seqlen`` steps;
4. decode with the compact cache (``(b, nheads, headdim, k)`` states): its logits against the
   masked model's full-sequence logits, and its time per token against the dense model's decode
   with the dense cache (``repeats`` interleaved calls of ``decode_tokens`` tokens each, batch 1).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .._threads import ThreadChoice
from .._timing import Spread, time_interleaved
from .run import (
    SPARSITY,
    DemoOptions,
    _device_name,
    _train_tokens,
    heldout_tokens,
    timing_fields,
    write_report,
)

DEMO_CASES_MAMBA2: tuple[tuple[str, str], ...] = (
    ("sparsessm", "column"),
    ("sparsessm", "2:4"),
    ("magnitude", "column"),
)
"""``(method, pattern)`` pairs of ``sparsessm prune --targets states``: ``sparsessm`` = the SSD output
saliency from calibration windows, ``magnitude`` = the norms of the state's ``B`` / ``C`` rows of
``in_proj`` (weights only); ``column`` keeps each group's best half, ``2:4`` the best 2 of every 4
states of a group."""

PROMPT_TOKENS = 32
"""Held-out bytes prefilled before the timed decode steps."""


def _layer0_scan_check(model: Any, opts: DemoOptions, device: torch.device) -> tuple[str, float]:
    """``(backend, max abs error)`` of layer 0's masked SSD scan against the float64 reference."""
    from ..ops import ssd_scan, ssd_scan_ref
    from ..ops.ssd.dispatch import resolve_ssd_backend

    m = model.mixer(0)
    backend = resolve_ssd_backend("auto", device, "ssd_scan")
    length = min(opts.check_seqlen, opts.scan_seqlen)
    g = torch.Generator().manual_seed(opts.seed)
    x = torch.randn(1, length, m.nheads, m.headdim, generator=g)
    dt = torch.randn(1, length, m.nheads, generator=g)
    B, C = (torch.randn(1, length, m.ngroups, m.d_state, generator=g) for _ in range(2))
    A, D, bias = m._A().detach().cpu(), m._D().detach().float().cpu(), m.dt_bias.detach().float().cpu()
    mask = m.layout.mask.cpu()
    common = {"dt_softplus": True, "state_mask": mask, "pruned_states": m.pruned_states}
    with torch.no_grad():
        got = ssd_scan(
            *(t.to(device) for t in (x, dt, A, B, C)),
            D=D.to(device),
            dt_bias=bias.to(device),
            backend=backend,
            **{**common, "state_mask": mask.to(device)},
        )
        ref = ssd_scan_ref(
            *(t.double() for t in (x, dt, A, B, C)), D=D.double(), dt_bias=bias.double(), **common
        )
    return backend, float((got.double().cpu() - ref).abs().max())


def _decode_runner(model: Any, ids: torch.Tensor, tokens: int) -> Callable[[], torch.Tensor]:
    """A call that decodes ``tokens`` more tokens of ``ids`` on a cache kept across calls (prefilled
    here with ``ids[:, :PROMPT_TOKENS]``); the state size does not grow, so every call costs the same."""
    cache = model.allocate_cache(ids.shape[0])
    with torch.no_grad():
        model(ids[:, :PROMPT_TOKENS], cache)
    steps = ids[:, PROMPT_TOKENS : PROMPT_TOKENS + tokens]

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model(steps, cache)

    return run


def _decode_error(model: Any, ids: torch.Tensor, tokens: int) -> float:
    """Largest difference between decode logits (compact cache) and the full-sequence logits."""
    window = ids[:, : PROMPT_TOKENS + tokens]
    with torch.no_grad():
        full = model(window)
        decoded = _decode_runner(model, window, tokens)()
    return float((decoded - full[:, PROMPT_TOKENS:]).abs().max())


def _state_bytes(model: Any) -> int:
    """Bytes of the SSM states of a batch-1 cache of ``model`` (compact where its masks allow)."""
    cache = model.allocate_cache(1)
    return sum(lc.ssm_state.numel() * lc.ssm_state.element_size() for lc in cache.layers)


def _per_token(s: Spread, tokens: int) -> Spread:
    return Spread(s.min / tokens, s.q1 / tokens, s.median / tokens, s.q3 / tokens, s.max / tokens, s.n)


def demo_steps_mamba2(
    opts: DemoOptions,
    device: torch.device,
    model_dir: Path,
    threads: ThreadChoice,
    t_start: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Steps of the Mamba-2 demo (see the module docstring); writes and returns the report."""
    from ..models import Mamba2LM
    from ..prune import PruneConfig, calibration_windows, evaluate_perplexity, prune_model

    held = heldout_tokens(model_dir)
    calib = calibration_windows(_train_tokens(model_dir), opts.nsamples, opts.seqlen, opts.seed)
    dense = Mamba2LM.from_pretrained(model_dir, device=device).eval()
    cfg = dense.config

    def ppl(model: Mamba2LM) -> float:
        r = evaluate_perplexity(
            model, held, opts.eval_seqlen, batch_size=8, device=device, max_windows=opts.eval_windows
        )
        return r["ppl"]

    dense_ppl = ppl(dense)
    log(f"dense: held-out perplexity {dense_ppl:.3f}")
    ids = held[: PROMPT_TOKENS + opts.decode_tokens].view(1, -1).to(device)
    dense_bytes = _state_bytes(dense)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    results = []
    for method, pattern in DEMO_CASES_MAMBA2:
        t0 = time.perf_counter()
        model = copy.deepcopy(dense)
        nm = pattern != "column"
        prune_cfg = PruneConfig(
            method=method,
            targets="states",
            pattern=pattern,
            sparsity=None if nm else SPARSITY,
            seed=opts.seed,
        )
        res = prune_model(model, calib, prune_cfg, device=device, progress=False)
        pruned = sum(r.pruned for r in res.modules)
        total = sum(r.params for r in res.modules)
        backend, err = _layer0_scan_check(model, opts, device)
        dense_run = _decode_runner(dense, ids, opts.decode_tokens)
        sparse_run = _decode_runner(model, ids, opts.decode_tokens)
        dense_t, sparse_t = time_interleaved([dense_run, sparse_run], opts.repeats, sync)
        row = {
            "method": method,
            "pattern": pattern,
            "sparsity": pruned / total,
            "kept_per_group": min(k for r in res.modules for k in r.extra["kept_per_group"]),
            "ppl": ppl(model),
            "backend": backend,
            **timing_fields(
                _per_token(dense_t, opts.decode_tokens), _per_token(sparse_t, opts.decode_tokens), "decode"
            ),
            "max_abs_err_vs_reference": err,
            "max_abs_err_decode_vs_forward": _decode_error(model, ids, opts.decode_tokens),
            "state_cache_bytes": _state_bytes(model),
            "dense_state_cache_bytes": dense_bytes,
        }
        results.append(row)
        log(
            f"{method} {pattern}: perplexity {row['ppl']:.3f}, decode {row['decode_ms']:.3f} ms/token vs "
            f"dense {row['dense_decode_ms']:.3f} ({time.perf_counter() - t0:.1f}s)"
        )

    report = {
        "arch": "mamba2",
        "timed": "decode",
        "model": {
            "dir": str(model_dir),
            "name": model_dir.name,
            "n_layer": cfg.n_layer,
            "d_model": cfg.d_model,
            "d_inner": cfg.d_inner,
            "nheads": cfg.nheads,
            "headdim": cfg.headdim,
            "ngroups": cfg.ngroups,
            "d_state": cfg.d_state,
            "vocab_size": cfg.vocab_size,
            "params": sum(p.numel() for p in dense.parameters()),
        },
        "device": _device_name(device),
        "threads": {"count": threads.threads, "reason": threads.reason},
        "dense_ppl": dense_ppl,
        "results": results,
        "settings": asdict(opts),
        "eval": {
            "text": "held-out Python standard library files, UTF-8 bytes",
            "seqlen": opts.eval_seqlen,
            "windows": min(opts.eval_windows, held.numel() // opts.eval_seqlen),
        },
        "decode": {
            "batch": 1,
            "prompt_tokens": PROMPT_TOKENS,
            "tokens": opts.decode_tokens,
            "nheads": cfg.nheads,
            "headdim": cfg.headdim,
            "d_state": cfg.d_state,
        },
        "seconds": time.perf_counter() - t_start,
    }
    return write_report(report, opts, log)
