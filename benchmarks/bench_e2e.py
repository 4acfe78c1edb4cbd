"""End-to-end benchmark: whole-model prefill and decode throughput with sparse states and 2:4 projections.

Run from the repository root::

    python benchmarks/bench_e2e.py                  # default run on this machine
    python benchmarks/bench_e2e.py --quick          # tiny smoke run (seconds; used by the tests)
    python benchmarks/bench_e2e.py --shapes 130m 1.4b --seqlen 4096 --decode-batch 1 64
    python benchmarks/bench_e2e.py --decoders cg --baselines mamba_ssm

What is measured (``sparsessm_kernels.models.MambaLM`` with random weights, Mamba-1 shapes):

* ``prefill``: tokens/s of a full forward over ``--seqlen`` tokens at batch ``--prefill-batch``,
  filling a decode cache (as ``generate`` does);
* ``decode``: tokens/s of single-token decode steps (``batch / step time``) at each
  ``--decode-batch`` after a short prompt, with compact ``(b, d, k)`` ssm caches for the sparse
  variants;
* for the variants ``dense``, ``ssm_col50`` (column mask, 50 % of the states of every layer),
  ``ssm_2:4`` (2:4 along the states), ``ssm_col50+proj_2:4`` and ``ssm_2:4+proj_2:4`` (those masks
  plus ``in_proj`` / ``x_proj`` / ``out_proj`` pruned to 2:4 by magnitude and run by
  :class:`sparsessm_kernels.nn.SemiStructuredLinear`);
* each with the decoders of ``--decoders``: ``eager`` (``model(token, cache=cache)`` steps) and ``cg``
  (the static decoder of ``generate(cg=True)``: persistent cache, precomputed constants, on CUDA a
  CUDA-graph replay per step);
* baselines with the dense weights (``--baselines``): transformers' ``MambaForCausalLM`` with
  mamba_ssm's kernels and mamba_ssm's own ``MambaLMHeadModel.generate(cg=True)``, each skipped with
  the reason when it does not import (see ``_e2e_baselines.py``);
* ``proj``: the projections alone -- dense ``nn.Linear`` (cuBLAS on CUDA) vs the 2:4
  ``SemiStructuredLinear`` for ``in_proj`` (``d_model -> 2 d_inner``) and ``out_proj``
  (``d_inner -> d_model``) at ``--proj-tokens`` tokens.

CUDA runs bfloat16 weights by default, with the full layer counts. **CPU runs float32 with
reduced sizes** (a 130m-shaped model cut to ``--layers 4``, 256-token prefill, fewer repeats):
their tokens/s are not those of the full models, and on CPU the 2:4 projections run the masked
dense fallback (same results, no speedup) -- the CPU numbers show the SSM-sparsity effect only.

Correctness guard: before a model variant is timed, its logits for ``prompt + 1 token`` computed
as prefill + one decode step (eager and static) are compared with one full forward of the same
tokens; a baseline's full-forward logits are compared with this model's; projection
rows compare the 2:4 module with ``F.linear`` on the same pruned weight. The run aborts (exit 1,
nothing written) when an error of this package's rows exceeds the tolerance (a baseline that
disagrees is reported as skipped instead). The JSON has the schema of
``bench_scan.py`` (``benchmark``, ``device``, ``date``, ``versions``, ``backends``, ``config``,
``results``, ``skipped``), see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

if __package__:  # imported as benchmarks.bench_e2e
    from . import _common as common
    from . import _e2e_baselines as baselines
else:  # run as a script: python benchmarks/bench_e2e.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as common
    import _e2e_baselines as baselines

from sparsessm_kernels.models import MambaLM, MambaLMConfig
from sparsessm_kernels.nn import SemiStructuredLinear, prune_2to4_, semi_structured_status, sparsify_
from sparsessm_kernels.ops.dispatch import resolve_backend
from sparsessm_kernels.sparsity import StateSparsity, column_mask, nm_mask

# Mamba-1 sizes: (d_model, n_layer); d_inner = 2 d_model, n = 16, vocab 50280 (padded 50288).
PRESETS: dict[str, tuple[int, int]] = {
    "130m": (768, 24),
    "370m": (1024, 48),
    "790m": (1536, 48),
    "1.4b": (2048, 48),
    "2.8b": (2560, 64),
    "tiny": (64, 2),
}
VOCAB = 50288
VARIANTS = ("dense", "ssm_col50", "ssm_2:4", "ssm_col50+proj_2:4", "ssm_2:4+proj_2:4")
"""In the order they run (the ``proj`` variants prune the projections once, for the rest of the run)."""
DECODERS = ("eager", "cg")
BASELINE_MIN_STEPS = 8
"""Tokens a baseline's timed ``generate`` adds at least (its per-token time is a difference of two runs)."""
PROJECTIONS = ("in_proj", "x_proj", "out_proj")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = {torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 6e-2}
QUICK = {
    "shapes": ["tiny"],
    "layers": None,
    "vocab": 256,
    "seqlen": 32,
    "prefill_batch": 1,
    "decode_batch": [1, 4],
    "decode_steps": 2,
    "repeats": 2,
    "warmup": 1,
    "proj_tokens": [64],
    "prompt_len": 8,
}


class CorrectnessError(RuntimeError):
    """A variant's outputs disagree with its reference by more than the tolerance."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    d_model: int
    n_layer: int

    @property
    def d_inner(self) -> int:
        return 2 * self.d_model


def parse_shape(text: str, layers: int | None) -> ModelShape:
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown shape {text!r}; known: {', '.join(PRESETS)}")
    d_model, n_layer = PRESETS[text]
    return ModelShape(text, d_model, layers if layers is not None else n_layer)


# ------------------------------------------------------------------------------------ runner
class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
        self.args, self.device, self.dtype = args, device, dtype
        self.tol = args.tolerance if args.tolerance is not None else TOLERANCE[dtype]
        self.results: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.ops_backend = resolve_backend(args.backend, device)

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})
        common.log(f"  skip {what}: {reason}")

    def _guard(self, what: str, err: float) -> float:
        if not err <= self.tol:
            raise CorrectnessError(
                f"CORRECTNESS FAILURE: {what}: relative max error {err:.3e} > tolerance {self.tol:.1e}. "
                "Refusing to time a wrong configuration; nothing was written."
            )
        return err

    def _time(self, fn, inner: int = 1) -> common.TimingStats:
        return common.time_fn(
            fn, self.device, warmup=self.args.warmup, repeats=self.args.repeats, inner=inner
        )

    def _row(
        self,
        kind: str,
        backend: str,
        shape: dict,
        mask: str,
        stats: common.TimingStats,
        err: float,
        **extra: Any,
    ) -> dict[str, Any]:
        row = {
            "kind": kind,
            "backend": backend,
            "shape": shape,
            "mask": mask,
            "sparsity": extra.pop("sparsity", 0.0),
            "pruned_states": extra.pop("pruned_states", None),
            "state": extra.pop("state", None),
            **common.timing_row_fields(stats),
            "speedup_vs_dense": None,
            "speedup_vs_dense_significant": None,
            "speedup_vs_eager": None,
            "speedup_vs_transformers": None,
            "speedup_vs_mamba_ssm": None,
            "max_abs_err_vs_reference": err,
            **extra,
        }
        self.results.append(row)
        tps = row.get("tokens_per_s")
        common.log(
            f"  {kind:7s} {mask:20s} {backend:12s} {row.get('decoder') or '':17s} b{shape.get('b')} "
            f"median {stats.median_ms:9.3f} ms" + (f"  {tps:,.0f} tok/s" if tps else "") + f"  err {err:.1e}"
        )
        return row

    # -- model
    def build(self, shape: ModelShape) -> MambaLM:
        config = MambaLMConfig(vocab_size=self.args.vocab, d_model=shape.d_model, n_layer=shape.n_layer)
        with torch.device(self.device):
            model = MambaLM.from_config(config, device=self.device, dtype=self.dtype, seed=self.args.seed)
        return model.eval()

    def set_variant(self, model: MambaLM, variant: str, proj_report: dict[str, str]) -> tuple[float, str]:
        """Configure masks (and projections) for ``variant``; return (ssm sparsity, projection path)."""
        gen = torch.Generator().manual_seed(self.args.seed)
        n_layer = len(model.backbone.layers)
        sparsity = 0.0
        for i in range(n_layer):
            mixer = model.mixer(i)
            if variant == "dense":
                model.set_state_mask(i, None)
                continue
            if variant.startswith("ssm_col50"):
                mask = StateSparsity(column_mask(torch.rand(mixer.d_state, generator=gen), 0.5), "column")
            else:
                mask = StateSparsity(
                    nm_mask(torch.rand(mixer.d_inner, mixer.d_state, generator=gen), 2, 4), "2:4"
                )
            model.set_state_mask(i, mask.to(self.device))
            sparsity = mask.sparsity
        path = "dense"
        if variant.endswith("proj_2:4"):
            if not proj_report:
                for i in range(n_layer):
                    for p in PROJECTIONS:
                        prune_2to4_(getattr(model.mixer(i), p))
                wanted = {f"backbone.layers.{i}.mixer.{p}" for i in range(n_layer) for p in PROJECTIONS}
                report = sparsify_(model, lambda name, _m: name in wanted)
                proj_report.update(report.swapped)
            path = "+".join(sorted(set(proj_report.values()))) or "dense"
        return sparsity, path

    def _check_ids(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.args.seed + 1)
        return torch.randint(0, self.args.vocab, (2, self.args.prompt_len + 1), generator=gen).to(self.device)

    def _rel_err(self, got: torch.Tensor, want: torch.Tensor) -> float:
        return float((got.float() - want).abs().max()) / (float(want.abs().max()) + 1e-6)

    def check_model(self, model: MambaLM, label: str) -> float:
        """prefill + 1 decode step vs one full forward of the same tokens (relative max error), for each
        decoder in ``--decoders`` (``cg``: through the model's static decoder); the largest error."""
        ids = self._check_ids()
        full = model(ids)[:, -1].float()
        errs = []
        if "eager" in self.args.decoders:
            cache = model.allocate_cache(2)
            model(ids[:, :-1], cache=cache, last_logits_only=True)
            step = model(ids[:, -1:], cache=cache)[:, -1]
            errs.append(self._guard(f"{label}: prefill+decode vs full forward", self._rel_err(step, full)))
        if "cg" in self.args.decoders:
            decoder = model.static_decoder()
            view = decoder.prepare(model, 2)
            with decoder.constants_frozen(model):
                decoder.capture_if_needed(model, view)
                model(ids[:, :-1], cache=view, last_logits_only=True)
                step = decoder.step(model, ids[:, -1], view)
            err = self._rel_err(step, full)
            errs.append(self._guard(f"{label}: static (cg) prefill+decode vs full forward", err))
        return max(errs)

    # -- baselines
    def run_baselines(self, model: MambaLM, shape: ModelShape, base: dict[str, int]) -> None:
        """Time each ``--baselines`` model (loaded with ``model``'s dense weights) or record why not."""
        gen = torch.Generator().manual_seed(self.args.seed + 4)
        for name in self.args.baselines:
            reason = baselines.unavailable_reason(name, self.args.slow_baselines)
            if reason is not None:
                self.skip(f"baseline {name} ({shape.name})", reason)
                continue
            bl = baselines.build(name, model, self.device, self.dtype)
            ids = self._check_ids()
            err = self._rel_err(bl.last_logits(ids), model(ids)[:, -1].float())
            if not err <= self.tol:  # reported, not fatal: the guard protects this package's numbers
                self.skip(
                    f"baseline {name} ({shape.name})",
                    f"its logits differ from this model's by {err:.3e} (relative) > tolerance {self.tol:.1e} "
                    "with the same weights; not timed",
                )
                continue
            extra = {
                "model": shape.name,
                "projections": "dense",
                "decoder": bl.decoder,
                "baseline": name,
                "baseline_kernels": bl.kernels,
            }
            b, seqlen = self.args.prefill_batch, self.args.seqlen
            ids = torch.randint(0, self.args.vocab, (b, seqlen), generator=gen).to(self.device)
            stats = self._time(lambda ids=ids, bl=bl: bl.prefill(ids))
            self._row(
                "prefill",
                name,
                {**base, "b": b, "l": seqlen},
                "dense",
                stats,
                err,
                tokens_per_s=b * seqlen * 1e3 / stats.median_ms,
                **extra,
            )
            steps = max(self.args.decode_steps, BASELINE_MIN_STEPS)
            for batch in self.args.decode_batch:
                prompt = torch.randint(0, self.args.vocab, (batch, self.args.prompt_len), generator=gen)
                stats = self._time_generate_per_token(bl, prompt.to(self.device), steps)
                self._row(
                    "decode",
                    name,
                    {**base, "b": batch, "l": 1},
                    "dense",
                    stats,
                    err,
                    tokens_per_s=batch * 1e3 / stats.median_ms,
                    state="full",
                    generate_tokens=steps,
                    **extra,
                )
            del bl
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _time_generate_per_token(
        self, bl: baselines.Baseline, prompt: torch.Tensor, steps: int
    ) -> common.TimingStats:
        """Per-token decode time of ``bl.generate``: each sample is ``(t(1 + steps tokens) - t(1 token))
        / steps`` from one timed run of each, so prefill and the first token cancel."""
        for _ in range(self.args.warmup):  # the longest first: mamba_ssm captures its graphs for it
            bl.generate(prompt, 1 + steps)
            bl.generate(prompt, 1)
        one = {"warmup": 0, "repeats": 1}
        samples = []
        for _ in range(self.args.repeats):
            long = common.time_fn(lambda: bl.generate(prompt, 1 + steps), self.device, **one).median_ms
            short = common.time_fn(lambda: bl.generate(prompt, 1), self.device, **one).median_ms
            samples.append((long - short) / steps)
        return common.summarize(samples)

    # -- this package's model
    def run_model(self, shape: ModelShape) -> None:
        common.log(
            f"[model] {shape.name}: d_model {shape.d_model}, n_layer {shape.n_layer}, {self.args.dtype}"
        )
        model = self.build(shape)
        base = {"d_model": shape.d_model, "n_layer": shape.n_layer, "d": shape.d_inner, "n": 16}
        self.run_baselines(model, shape, base)  # before any variant: the model is dense
        proj_report: dict[str, str] = {}
        gen = torch.Generator().manual_seed(self.args.seed + 2)
        for variant in self.args.variants:
            sparsity, proj_path = self.set_variant(model, variant, proj_report)
            err = self.check_model(model, f"{shape.name} {variant}")
            extra = {
                "sparsity": round(sparsity, 6),
                "model": shape.name,
                "projections": proj_path,
                "pruned_states": None if variant == "dense" else "zero_transition",
                "baseline": None,
            }
            b, seqlen = self.args.prefill_batch, self.args.seqlen
            ids = torch.randint(0, self.args.vocab, (b, seqlen), generator=gen).to(self.device)
            prompts = [
                torch.randint(0, self.args.vocab, (batch, self.args.prompt_len), generator=gen).to(
                    self.device
                )
                for batch in self.args.decode_batch
            ]
            for decoder in self.args.decoders:
                run = self._eager if decoder == "eager" else self._static
                run(model, variant, ids, prompts, base, err, {**extra, "decoder": decoder})
        del model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _prefill_row(
        self, variant: str, stats: common.TimingStats, base: dict, err: float, extra: dict
    ) -> None:
        b, seqlen = self.args.prefill_batch, self.args.seqlen
        self._row(
            "prefill",
            self.ops_backend,
            {**base, "b": b, "l": seqlen},
            variant,
            stats,
            err,
            tokens_per_s=b * seqlen * 1e3 / stats.median_ms,
            **extra,
        )

    def _decode_row(
        self,
        variant: str,
        stats: common.TimingStats,
        batch: int,
        cache: Any,
        base: dict,
        err: float,
        extra: dict,
    ) -> None:
        self._row(
            "decode",
            self.ops_backend,
            {**base, "b": batch, "l": 1},
            variant,
            stats,
            err,
            tokens_per_s=batch * 1e3 / stats.median_ms,
            state="compact" if any(lc.compact for lc in cache.layers) else "full",
            ssm_cache_bytes=cache.ssm_state_nbytes(),
            **extra,
        )

    def _eager(
        self,
        model: MambaLM,
        variant: str,
        ids: torch.Tensor,
        prompts: list,
        base: dict,
        err: float,
        extra: dict,
    ) -> None:
        """Eager rows: prefill into a fresh cache, then ``model(token, cache=cache)`` steps."""
        cache = model.allocate_cache(ids.shape[0])

        def prefill() -> None:
            cache.reset()
            model(ids, cache=cache, last_logits_only=True)

        self._prefill_row(variant, self._time(prefill), base, err, extra)
        for prompt in prompts:
            cache = model.allocate_cache(prompt.shape[0])
            token = model(prompt, cache=cache, last_logits_only=True)[:, -1].argmax(-1, keepdim=True)
            stats = self._time(
                lambda token=token, cache=cache: model(token, cache=cache), inner=self.args.decode_steps
            )
            self._decode_row(variant, stats, prompt.shape[0], cache, base, err, extra)

    def _static(
        self,
        model: MambaLM,
        variant: str,
        ids: torch.Tensor,
        prompts: list,
        base: dict,
        err: float,
        extra: dict,
    ) -> None:
        """``generate(cg=True)`` rows: prefill into the static decoder's persistent cache (eager, with the
        precomputed constants), then its steps (CUDA-graph replays on CUDA), as ``generate`` runs them."""
        decoder = model.static_decoder()
        decoder.prepare(model, max(ids.shape[0], *(p.shape[0] for p in prompts)))  # one allocation
        with decoder.constants_frozen(model):

            def prefill() -> None:
                model(ids, cache=decoder.view(ids.shape[0]), last_logits_only=True)

            self._prefill_row(variant, self._time(prefill), base, err, extra)
            for prompt in prompts:
                view = decoder.view(prompt.shape[0])
                decoder.capture_if_needed(model, view)
                token = model(prompt, cache=view, last_logits_only=True)[:, -1].argmax(-1)
                stats = self._time(
                    lambda token=token, view=view: decoder.step(model, token, view),
                    inner=self.args.decode_steps,
                )
                self._decode_row(variant, stats, prompt.shape[0], view, base, err, extra)

    # -- projections alone
    def run_proj(self, shape: ModelShape) -> None:
        common.log(f"[proj] {shape.name}")
        gen = torch.Generator().manual_seed(self.args.seed + 3)
        dims = {"in_proj": (shape.d_model, 2 * shape.d_inner), "out_proj": (shape.d_inner, shape.d_model)}
        for name, (fan_in, fan_out) in dims.items():
            lin = torch.nn.Linear(fan_in, fan_out, bias=False)
            prune_2to4_(lin)
            lin = lin.to(device=self.device, dtype=self.dtype)
            sparse = SemiStructuredLinear.from_linear(lin, name=name)
            for tokens in self.args.proj_tokens:
                x = torch.randn(tokens, fan_in, generator=gen).to(device=self.device, dtype=self.dtype)
                want = torch.nn.functional.linear(x, lin.weight).float()
                err = float((sparse(x).float() - want).abs().max()) / (float(want.abs().max()) + 1e-6)
                self._guard(f"proj {shape.name} {name} {tokens} tokens ({sparse.path})", err)
                s = {
                    "d_model": shape.d_model,
                    "in": fan_in,
                    "out": fan_out,
                    "b": 1,
                    "l": tokens,
                    "d": shape.d_inner,
                    "n": 16,
                }
                extra = {"model": shape.name, "projection": name, "projections": sparse.path}
                dense_stats = self._time(lambda x=x, lin=lin: lin(x))
                self._row(
                    "proj",
                    "dense",
                    s,
                    name,
                    dense_stats,
                    0.0,
                    tokens_per_s=tokens * 1e3 / dense_stats.median_ms,
                    **extra,
                )
                stats = self._time(lambda x=x, sparse=sparse: sparse(x))
                self._row(
                    "proj",
                    sparse.path,
                    s,
                    f"{name}_2:4",
                    stats,
                    err,
                    tokens_per_s=tokens * 1e3 / stats.median_ms,
                    **extra,
                )

    def fill_speedups(self) -> None:
        """``speedup_vs_dense`` (same decoder), ``speedup_vs_eager`` (cg rows), ``speedup_vs_transformers``
        / ``speedup_vs_mamba_ssm`` (this package's rows, same kind / model / batch / length)."""
        ours, refs = [], {}
        for row in self.results:
            s = row["shape"]
            if row["kind"] == "proj":
                if row["backend"] == "dense":
                    refs[("proj", row["model"], row["projection"], s["l"])] = row
                continue
            where = (row["kind"], row["model"], s["b"], s["l"])
            if row.get("baseline"):
                refs[(row["baseline"], *where)] = row
            else:
                refs[(row["decoder"], row["mask"], *where)] = row
                ours.append((row, where))
        for row in self.results:
            if row["kind"] == "proj":
                base = refs.get(("proj", row["model"], row["projection"], row["shape"]["l"]))
                row["speedup_vs_dense"], row["speedup_vs_dense_significant"] = common.speedup_of(base, row)
        for row, where in ours:
            dense = refs.get((row["decoder"], "dense", *where))
            row["speedup_vs_dense"], row["speedup_vs_dense_significant"] = common.speedup_of(dense, row)
            if row["decoder"] != "eager":
                row["speedup_vs_eager"] = common.speedup_of(refs.get(("eager", row["mask"], *where)), row)[0]
            for name in baselines.BASELINES:
                row[f"speedup_vs_{name}"] = common.speedup_of(refs.get((name, *where)), row)[0]


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_e2e.py",
        description=(
            "Whole-model prefill / decode tokens/s of a random-weight Mamba-1 LM: dense vs sparse SSM "
            "states vs sparse states + 2:4 projections, plus a projection-only table. Prints tables and "
            "writes JSON (schema of bench_scan.py)."
        ),
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        help=f"model shapes: {', '.join(PRESETS)}. Default: 130m 1.4b on CUDA, 130m on CPU (--quick: tiny)",
    )
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        help="override n_layer of every shape. Default: the real count on CUDA, 4 on CPU",
    )
    p.add_argument(
        "--vocab", type=int, default=None, help=f"vocabulary size. Default: {VOCAB} (--quick: 256)"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=VARIANTS,
        help=f"model variants (run in this order). Default: all ({', '.join(VARIANTS)})",
    )
    p.add_argument(
        "--decoders",
        nargs="+",
        default=None,
        choices=DECODERS,
        help="how this package's model prefills and decodes: eager (model(token, cache=...)) and/or cg "
        "(the static decoder of generate(cg=True): persistent cache, precomputed constants, CUDA-graph "
        "replay on CUDA). Default: both",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        choices=baselines.BASELINES,
        help="baselines with the same dense weights: transformers (MambaForCausalLM with mamba_ssm's "
        "kernels) and mamba_ssm (MambaLMHeadModel.generate(cg=True)); skipped with the reason when not "
        "importable. Default: both; none with an empty list",
    )
    p.add_argument(
        "--slow-baselines",
        action="store_true",
        help="time transformers' Mamba even without mamba_ssm (its PyTorch fallback)",
    )
    p.add_argument("--seqlen", type=int, default=None, help="prefill tokens. Default: 2048 CUDA, 256 CPU")
    p.add_argument("--prefill-batch", type=int, default=None, help="prefill batch size. Default: 1")
    p.add_argument(
        "--decode-batch", type=int, nargs="+", default=None, help="decode batch sizes. Default: 1 16 64"
    )
    p.add_argument(
        "--decode-steps",
        type=int,
        default=None,
        help="decode steps per timed sample. Default: 20 CUDA, 4 CPU",
    )
    p.add_argument("--prompt-len", type=int, default=None, help="prompt before decoding. Default: 16")
    p.add_argument(
        "--proj-tokens",
        type=int,
        nargs="+",
        default=None,
        help="token counts of the projection table. Default: 512..16384 CUDA, 512 1024 2048 CPU",
    )
    p.add_argument("--no-model", action="store_true", help="skip the whole-model rows")
    p.add_argument("--no-proj", action="store_true", help="skip the projection-only rows")
    p.add_argument("--backend", default="auto", help="ops backend (auto, torch, triton, cuda). Default: auto")
    p.add_argument("--repeats", type=int, default=None, help="timed samples. Default: 20 CUDA, 5 CPU")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls. Default: 5 CUDA, 1 CPU")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="Default: bfloat16 CUDA, float32 CPU")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="relative error bound of the correctness guard. Default: 1e-3 fp32, 6e-2 bf16",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if visible), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help=common.THREADS_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration (seconds)")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path. Default: benchmarks/results/e2e_<device-kind>.json"
    )
    return p


def resolve_args(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Fill defaults that depend on --quick and the device; return notes for the JSON."""
    cuda = device.type == "cuda"
    defaults: dict[str, Any] = {
        "shapes": ["130m", "1.4b"] if cuda else ["130m"],
        "layers": None if cuda else 4,
        "vocab": VOCAB,
        "variants": list(VARIANTS),
        "decoders": list(DECODERS),
        "baselines": list(baselines.BASELINES),
        "seqlen": 2048 if cuda else 256,
        "prefill_batch": 1,
        "decode_batch": [1, 16, 64],
        "decode_steps": 20 if cuda else 4,
        "prompt_len": 16,
        "proj_tokens": [512, 1024, 2048, 4096, 8192, 16384] if cuda else [512, 1024, 2048],
        "repeats": 20 if cuda else 5,
        "warmup": 5 if cuda else 1,
        "dtype": "bfloat16" if cuda else "float32",
    }
    if args.quick:
        defaults.update(QUICK)
        defaults["dtype"] = "bfloat16" if cuda else "float32"
    explicit_layers = args.layers is not None
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("repeats", "decode_steps", "seqlen", "prefill_batch", "prompt_len", "vocab"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: must be >= 1")
    args.variants = [v for v in VARIANTS if v in args.variants]  # the proj variants last
    args.decoders = [d for d in DECODERS if d in args.decoders]
    args.baselines = [b for b in baselines.BASELINES if b in args.baselines]
    notes = []
    if not cuda:
        notes.append(
            "CPU run: float32 with reduced sizes"
            + ("" if explicit_layers or args.quick else f" (n_layer cut to {args.layers})")
            + "; tokens/s are not those of the full models, and 2:4 projections run the masked dense "
            "fallback on CPU (no speedup expected)"
        )
    return notes


def render(results: list[dict[str, Any]]) -> str:
    model_rows, proj_rows = [], []
    for r in results:
        s = r["shape"]
        cells = {
            "model": r["model"],
            "variant": r["mask"],
            "b": s["b"],
            "l": s["l"],
            "path": r.get("projections"),
            "state": r["state"],
            "median": common.fmt_float(r["median_ms"]),
            "iqr": common.fmt_float(r["iqr_ms"]),
            "tps": common.fmt_float(r.get("tokens_per_s")),
            "speedup": common.fmt_speedup(r["speedup_vs_dense"], r.get("speedup_vs_dense_significant")),
            "err": f"{r['max_abs_err_vs_reference']:.1e}",
            "kind": r["kind"],
            "proj": r.get("projection"),
            "backend": r["backend"],
            "decoder": r.get("decoder") or "-",
            "vs_eager": common.fmt_float(r.get("speedup_vs_eager"), suffix="x"),
            "vs_transformers": common.fmt_float(r.get("speedup_vs_transformers"), suffix="x"),
            "vs_mamba_ssm": common.fmt_float(r.get("speedup_vs_mamba_ssm"), suffix="x"),
        }
        (proj_rows if r["kind"] == "proj" else model_rows).append(cells)
    out = []
    if model_rows:
        out.append(
            common.format_table(
                model_rows,
                [
                    ("kind", "kind"),
                    ("model", "model"),
                    ("variant", "variant"),
                    ("b", "b"),
                    ("l", "l"),
                    ("backend", "ops"),
                    ("decoder", "decoder"),
                    ("path", "projections"),
                    ("state", "cache"),
                    ("median", "median ms"),
                    ("iqr", "IQR ms"),
                    ("tps", "tokens/s"),
                    ("speedup", "vs dense"),
                    ("vs_eager", "vs eager"),
                    ("vs_transformers", "vs transformers"),
                    ("vs_mamba_ssm", "vs mamba_ssm"),
                    ("err", "rel err"),
                ],
            )
        )
    if proj_rows:
        out.append(
            common.format_table(
                proj_rows,
                [
                    ("model", "model"),
                    ("proj", "projection"),
                    ("l", "tokens"),
                    ("backend", "path"),
                    ("median", "median ms"),
                    ("iqr", "IQR ms"),
                    ("tps", "tokens/s"),
                    ("speedup", "vs dense"),
                    ("err", "rel err"),
                ],
            )
        )
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected an integer >= 1, got {args.threads}")
    threads = common.apply_threads(args.threads)
    args.threads = threads.threads
    notes = resolve_args(args, device)
    dtype = DTYPES[args.dtype]
    if dtype != torch.float32 and device.type != "cuda":
        parser.error(f"--dtype {args.dtype} is only benchmarked on CUDA; use float32 on {device.type}")
    try:
        shapes = [parse_shape(s, args.layers) for s in args.shapes]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    out_path = args.out or common.RESULTS_DIR / f"e2e_{common.device_kind(device)}.json"
    common.check_out_path(parser, out_path)
    bench = Bench(args, device, dtype)
    proj_path, proj_reason = semi_structured_status(device, dtype)
    if proj_path == "masked_dense":
        bench.skip("2:4 semi-structured kernels", proj_reason)
    for note in notes:
        common.log(f"note: {note}")
    common.log(
        f"device {device} ({common.device_info(device)['name']}), ops backend {bench.ops_backend}, "
        f"2:4 path {proj_path}, dtype {args.dtype}"
    )
    try:
        with torch.no_grad():  # not inference_mode: the static decoder keys on parameter versions
            if not args.no_model:
                for shape in shapes:
                    bench.run_model(shape)
            if not args.no_proj:
                for shape in shapes:
                    bench.run_proj(shape)
    except CorrectnessError as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    bench.fill_speedups()
    config = {k: v for k, v in vars(args).items() if k not in ("shapes", "out")}
    config.update(
        {
            "shapes": [
                {"name": s.name, "d_model": s.d_model, "n_layer": s.n_layer, "d_inner": s.d_inner}
                for s in shapes
            ],
            "ops_backend": bench.ops_backend,
            "semi_structured": {"path": proj_path, "reason": proj_reason},
            "tolerance": bench.tol,
            "device": str(device),
            "threads_reason": threads.reason,
            "notes": notes,
            **common.run_provenance(argv, out_path),
        }
    )
    payload = {
        **common.result_header("e2e", device),
        "backends": common.backend_status(),
        "config": config,
        "results": bench.results,
        "skipped": bench.skipped,
    }
    common.write_json_atomic(out_path, payload)
    print(render(bench.results))
    for note in notes:
        print(f"\nnote: {note}")
    common.print_skipped(bench.skipped)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
