"""Quality benchmark: perplexity of the embedded tiny Mamba after SSM and whole-model pruning.

Run from the repository root (CPU, a few minutes)::

    python benchmarks/quality/run.py --wikitext ../shared/data/wikitext-2/test.txt
    python benchmarks/quality/run.py --quick --out /tmp/q.json      # tiny grid (the tests)

Model: the byte-level Mamba-1 shipped in ``sparsessm_kernels/demo/tiny_mamba`` (4 layers,
``d_inner`` 256, ``n`` 16), trained on the Python standard library's sources. Every case starts
from a fresh copy of the dense model and is pruned by the library's own pipeline
(:func:`sparsessm_kernels.prune.prune_model`, exactly what ``sparsessm prune`` runs) on the same
calibration windows (random windows of the demo's *training* files, drawn once per ``--seed``).

Grid (method names as ``sparsessm prune --method`` spells them):

* **SSM scope** (``--targets ssm``, ``A_log`` only): ``sparsessm`` with ``--aggregation weighted``
  and ``vote``, ``magnitude``, ``sparsegpt`` (SparseGPT / OBS on ``A_log``), ``random`` x patterns
  ``unstructured``, ``N:M`` and ``column`` x sparsities 0.25, 0.5, 0.75. An N:M pattern fixes the
  sparsity of every group at ``1 - N/M``, so the N:M column uses M = 4 with N chosen to give the
  requested sparsity: ``3:4`` (0.25), ``2:4`` (0.5), ``1:4`` (0.75); a sparsity with no such N is
  recorded under ``skipped``.
* **Whole scope** (``A_log`` + ``in_proj`` / ``x_proj`` / ``dt_proj`` / ``out_proj``) at 0.5, patterns
  ``unstructured`` (with and without sensitivity-aware allocation, ``--alpha`` 0 / 0.04) and ``2:4``
  (allocation cannot apply to N:M, so without):

  - ``--method M --targets all`` for M in ``sparsessm`` (SparseSSM on ``A_log``, SparseGPT on the
    projections), ``sparsegpt``, ``wanda``, ``magnitude`` -- one pass, as the CLI runs it;
  - SparseSSM on ``A_log`` with Wanda or magnitude projections: two passes, ``--targets ffn
    --method wanda|magnitude`` first, then ``--targets ssm --method sparsessm`` on the result. The
    ``A_log`` statistics then see the same pruned projections as in one pass (the pipeline prunes
    ``in_proj`` .. ``dt_proj`` before ``A_log``); only ``out_proj`` sees a dense ``A_log``.

Statistics are not shared between cases: the pipeline gathers every layer's statistics on the
model *as pruned so far*, so scores depend on the pattern and sparsity from layer 1 on, and reusing
them would no longer be the library's method. What is shared: the calibration windows, the dense
model (deep-copied per case) and the evaluation windows.

Evaluation: perplexity per byte (``sparsessm eval``'s protocol: non-overlapping windows, empty state
per window) on the held-out standard-library files of the demo (``--eval-windows`` windows of
``--eval-seqlen`` bytes) and, with ``--wikitext PATH``, on that file's UTF-8 bytes (same sizes). The
model is trained on Python source, so WikiText perplexities are high; they are reported as
measured. Without ``--wikitext`` that column is ``null`` and the JSON says why.

Output: a table on stdout (progress on stderr) and JSON at ``--out`` (default
``benchmarks/results/quality.json``), written atomically: ``benchmark``, ``device``, ``date``,
``versions`` (as the other benchmarks), ``config``, ``model``, ``data`` (text sizes actually
evaluated), ``dense``, ``results``, ``skipped``, ``seconds``. See benchmarks/README.md.

``--arch mamba2`` runs the embedded tiny Mamba-2 (``sparsessm_kernels/demo/tiny_mamba2``, 4 layers,
8 heads of 32 channels, 2 groups, ``n`` 32) instead, through :data:`MAMBA2_METHODS`: every method
there, by name, at every ``--sparsities`` value, on the same calibration windows and evaluation
texts as above (default output ``benchmarks/results/quality_mamba2.json``, the same schema; rows
have ``scope`` ``"ssm"``, ``structure`` ``"column"`` and ``pattern`` ``"per-group"``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as common

from sparsessm_kernels.demo import heldout_tokens
from sparsessm_kernels.demo.run import MODEL_DIRS, _train_tokens
from sparsessm_kernels.models import Mamba2LM, MambaLM
from sparsessm_kernels.prune import (
    PruneConfig,
    PruneConfigError,
    calibration_windows,
    evaluate_perplexity,
    prune_model,
)
from sparsessm_kernels.prune.capture import PruneResult
from sparsessm_kernels.sparsity import parse_pattern

DEFAULT_OUT = common.RESULTS_DIR / "quality.json"
DEFAULT_OUT_MAMBA2 = common.RESULTS_DIR / "quality_mamba2.json"

SSM_METHODS: tuple[tuple[str, str | None], ...] = (
    ("sparsessm", "weighted"),
    ("sparsessm", "vote"),
    ("magnitude", None),
    ("sparsegpt", None),
    ("random", None),
)
"""``(--method, --aggregation)`` of the SSM-scope grid (aggregation only matters for sparsessm)."""

STRUCTURES = ("unstructured", "N:M", "column")
"""Pattern families: ``N:M`` becomes ``N:4`` with N set by the sparsity (see :func:`nm_pattern`)."""

SPARSITIES = (0.25, 0.5, 0.75)
NM_GROUP = 4
WHOLE_SPARSITY = 0.5
WHOLE_ALPHA = 0.04
PROJECTION_METHODS = ("sparsegpt", "wanda", "magnitude")
FULL_SIZES = {"nsamples": 32, "seqlen": 256, "eval_seqlen": 512, "eval_windows": 128}
QUICK_SIZES = {"nsamples": 4, "seqlen": 128, "eval_seqlen": 256, "eval_windows": 4}
"""Calibration and evaluation sizes (the demo's, with twice its 64 evaluation windows; ``--quick``: a
smoke run in seconds)."""


def nm_pattern(sparsity: float, m: int = NM_GROUP) -> str | None:
    """The ``N:M`` pattern with group size ``m`` that prunes exactly ``sparsity``, or ``None``.

    ``0.25 -> "3:4"``, ``0.5 -> "2:4"``, ``0.75 -> "1:4"``; ``0.3`` has no such N for M = 4.
    """
    n = m * (1.0 - sparsity)
    if abs(n - round(n)) > 1e-9 or not 0 < round(n) < m:
        return None
    return f"{round(n)}:{m}"


def label(method: str, aggregation: str | None) -> str:
    """Display name: ``sparsessm (weighted)``, ``magnitude``, ..."""
    return f"{method} ({aggregation})" if aggregation else method


# ------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """One pruned model: a list of library passes (``PruneConfig`` each) and how to describe it."""

    scope: str  # "ssm" or "whole"
    method: str  # the A_log method, as --method spells it
    aggregation: str | None
    pattern: str  # as --pattern spells it (unstructured, 3:4, 2:4, 1:4, column)
    structure: str  # unstructured, N:M, column
    sparsity: float
    projection_method: str | None = None
    alpha: float = 0.0
    passes: list[PruneConfig] = field(default_factory=list)
    name: str | None = None  # the MAMBA2_METHODS entry (Mamba-2 cases)

    @property
    def allocation(self) -> bool:
        return self.alpha > 0

    def commands(self) -> list[str]:
        """The equivalent ``sparsessm prune`` flags of every pass."""
        out = []
        for cfg in self.passes:
            parts = [f"--method {cfg.method}", f"--targets {cfg.targets}", f"--pattern {cfg.pattern}"]
            if cfg.nm is None:
                parts.append(f"--sparsity {cfg.sparsity:g}")
            if cfg.method == "sparsessm" and cfg.targets in ("ssm", "all"):
                parts.append(f"--aggregation {cfg.aggregation}")
            if cfg.targets in ("ffn", "all"):
                parts.append(f"--alpha {cfg.alpha or 0:g}")
            out.append(" ".join(parts))
        return out


def ssm_cases(
    methods: tuple[tuple[str, str | None], ...],
    structures: tuple[str, ...],
    sparsities: tuple[float, ...],
    seed: int,
    skipped: list[dict[str, str]],
) -> list[Case]:
    """The SSM-scope grid; N:M sparsities with no ``N:4`` pattern go to ``skipped``."""
    cases = []
    for sparsity in sparsities:
        for structure in structures:
            if structure == "N:M":
                pattern = nm_pattern(sparsity)
                if pattern is None:
                    skipped.append(
                        {
                            "what": f"N:M at sparsity {sparsity:g}",
                            "reason": f"no N:{NM_GROUP} pattern prunes exactly {sparsity:g} "
                            f"(N:M fixes the sparsity at 1 - N/M)",
                        }
                    )
                    continue
            else:
                pattern = structure
            for method, aggregation in methods:
                cfg = PruneConfig(
                    method=method,
                    targets="ssm",
                    pattern=pattern,
                    sparsity=None if structure == "N:M" else sparsity,
                    aggregation=aggregation or "weighted",
                    seed=seed,
                )
                cases.append(Case("ssm", method, aggregation, pattern, structure, sparsity, None, 0.0, [cfg]))
    return cases


def whole_cases(patterns: tuple[str, ...], projection_methods: tuple[str, ...], seed: int) -> list[Case]:
    """The whole-model cases at :data:`WHOLE_SPARSITY` (see the module docstring)."""
    cases = []
    s = WHOLE_SPARSITY
    for pattern in patterns:
        nm = pattern != "unstructured"
        alphas = (0.0,) if nm else (0.0, WHOLE_ALPHA)
        sparsity = None if nm else s
        structure = "N:M" if nm else "unstructured"
        for alpha in alphas:
            for proj in projection_methods:
                # SparseSSM on A_log + proj on the projections
                if proj == "sparsegpt":
                    passes = [
                        PruneConfig(
                            method="sparsessm",
                            targets="all",
                            pattern=pattern,
                            sparsity=sparsity,
                            alpha=alpha,
                            seed=seed,
                        )
                    ]
                else:
                    passes = [
                        PruneConfig(
                            method=proj,
                            targets="ffn",
                            pattern=pattern,
                            sparsity=sparsity,
                            alpha=alpha,
                            seed=seed,
                        ),
                        PruneConfig(
                            method="sparsessm", targets="ssm", pattern=pattern, sparsity=sparsity, seed=seed
                        ),
                    ]
                cases.append(
                    Case("whole", "sparsessm", "weighted", pattern, structure, s, proj, alpha, passes)
                )
                # the baseline: the same method on A_log and the projections (--method proj --targets all)
                passes = [
                    PruneConfig(
                        method=proj, targets="all", pattern=pattern, sparsity=sparsity, alpha=alpha, seed=seed
                    )
                ]
                cases.append(Case("whole", proj, None, pattern, structure, s, proj, alpha, passes))
    return cases


# ------------------------------------------------------------------------------------ running
_SUMMARY_GROUP = {"A_log": "ssm", "ssm_state": "ssm", "heads": "heads", "headdim": "heads"}
"""Module kind -> achieved-sparsity group (projections and ``conv1d``: ``ffn``)."""


def _summary(results: list[PruneResult]) -> dict[str, Any]:
    """Achieved sparsity over the pruned modules: ``ssm`` (``A_log``; Mamba-2 states too), ``ffn``
    (projections), ``heads`` (Mamba-2 heads / head channels: the mixer parameters removed; only when
    present), ``total``."""
    groups: dict[str, list[int]] = {"ssm": [0, 0], "ffn": [0, 0], "total": [0, 0]}
    for res in results:
        for rec in res.modules:
            for key in (_SUMMARY_GROUP.get(rec.kind, "ffn"), "total"):
                groups.setdefault(key, [0, 0])
                groups[key][0] += rec.pruned
                groups[key][1] += rec.params
    return {
        k: {"pruned": p, "params": n, "sparsity": round(p / n, 6) if n else None}
        for k, (p, n) in groups.items()
    }


@dataclass
class Evaluator:
    """Perplexity on the held-out stdlib text and, when given, WikiText (same window sizes)."""

    texts: dict[str, torch.Tensor | None]
    seqlen: int
    windows: int
    device: torch.device
    batch_size: int = 8

    def __call__(self, model: MambaLM) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, tokens in self.texts.items():
            if tokens is None:
                out[name] = None
                continue
            r = evaluate_perplexity(
                model,
                tokens,
                self.seqlen,
                batch_size=self.batch_size,
                device=self.device,
                max_windows=self.windows,
            )
            out[name] = float(r["ppl"])
        return out


def run_case(
    case: Case, dense: MambaLM, calib: torch.Tensor, evaluate: Evaluator, device: torch.device
) -> dict[str, Any]:
    """Prune a copy of ``dense`` as ``case`` says, evaluate it, return its result row."""
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    results = [prune_model(model, calib, cfg, device=device, progress=False) for cfg in case.passes]
    prune_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ppl = evaluate(model)
    eval_s = time.perf_counter() - t1
    summary = _summary(results)
    return {
        **({"name": case.name} if case.name else {}),
        "scope": case.scope,
        "method": case.method,
        "aggregation": case.aggregation,
        "label": label(case.method, case.aggregation),
        "pattern": case.pattern,
        "structure": case.structure,
        "sparsity": case.sparsity,
        "projection_method": case.projection_method,
        "allocation": case.allocation,
        "alpha": case.alpha if case.scope == "whole" else None,
        "ppl_heldout": ppl["heldout"],
        "ppl_wikitext": ppl["wikitext"],
        "achieved_sparsity": {k: v["sparsity"] for k, v in summary.items()},
        "pruned_params": summary,
        "d_state_after": results[-1].d_state_after,
        "passes": case.commands(),
        "prune_s": round(prune_s, 3),
        "eval_s": round(eval_s, 3),
    }


# ------------------------------------------------------------------------------------ Mamba-2
@dataclass(frozen=True)
class Mamba2Method:
    """One Mamba-2 method of ``--arch mamba2``: ``sparsessm prune --targets T --method M`` with one
    pattern family, run by the library's pipeline (:func:`~sparsessm_kernels.prune.prune_model`).

    Attributes:
        targets: ``states`` (``B`` / ``C`` state columns per group), ``ssm`` (``A_log`` per head),
            ``ffn`` (``in_proj`` / ``out_proj``), ``heads`` / ``headdim`` (physical removal).
        method: ``--method``.
        structure: ``column`` / ``N:M`` (states), ``unstructured`` / ``2:4`` (``A_log`` heads,
            projections) or ``structured`` (heads / headdim: whole heads or head channels removed).
    """

    targets: str
    method: str
    structure: str

    def pattern(self, sparsity: float) -> str | None:
        """``--pattern`` at ``sparsity`` (``None``: no N:4 pattern prunes exactly that much)."""
        if self.structure == "N:M":
            return nm_pattern(sparsity)
        if self.structure == "2:4":
            return "2:4"
        return "unstructured" if self.structure == "structured" else self.structure

    @property
    def calibrated(self) -> bool:
        """Whether the method reads the calibration windows (magnitude and random read weights only)."""
        return self.method not in ("magnitude", "random")

    @property
    def own_sparsity(self) -> float | None:
        """The one sparsity of a fixed pattern (``2:4``: 0.5), run once whatever ``--sparsities``."""
        return 0.5 if self.structure == "2:4" else None

    def case(self, name: str, sparsity: float, seed: int) -> Case | None:
        """The case of this method (registered as ``name``) at ``sparsity`` (``None``: no pattern)."""
        pattern = self.pattern(sparsity)
        if pattern is None:
            return None
        nm = parse_pattern(pattern)[1] is not None
        cfg = PruneConfig(
            method=self.method,
            targets=self.targets,
            pattern=pattern,
            sparsity=None if nm else sparsity,
            alpha=0.0,
            seed=seed,
        )
        structure = "N:M" if nm else self.structure
        shown = "structured" if self.structure == "structured" else pattern
        return Case(self.targets, self.method, None, shown, structure, sparsity, None, 0.0, [cfg], name)


def _mamba2_registry() -> dict[str, Mamba2Method]:
    reg: dict[str, Mamba2Method] = {}
    for structure in ("column", "N:M"):
        for method in ("sparsessm", "magnitude", "random"):
            reg[f"states/{method}/{structure}"] = Mamba2Method("states", method, structure)
    for method in ("sparsessm", "magnitude", "random"):
        reg[f"ssm/{method}"] = Mamba2Method("ssm", method, "unstructured")
    for structure in ("unstructured", "2:4"):
        for method in ("sparsegpt", "wanda", "magnitude", "snip", "random"):
            reg[f"ffn/{method}/{structure}"] = Mamba2Method("ffn", method, structure)
    for targets in ("heads", "headdim"):
        for method in ("flap", "magnitude", "random"):
            reg[f"{targets}/{method}"] = Mamba2Method(targets, method, "structured")
    return reg


MAMBA2_METHODS: dict[str, Mamba2Method] = _mamba2_registry()
"""Every Mamba-2 method of ``--arch mamba2`` by name (``targets/method[/structure]``): states
(``sparsessm`` = the SSD output saliency from calibration, ``magnitude``, ``random``; column and
N:4), ``A_log`` per head (``sparsessm``, ``magnitude``, ``random``), projections (``sparsegpt``,
``wanda``, ``magnitude``, ``snip``, ``random``; unstructured and 2:4), heads and head channels
(``flap``, ``magnitude``, ``random``)."""

MAMBA2_SIZES = {"nsamples": 16, "seqlen": 256, "eval_seqlen": 512, "eval_windows": 32}
"""``--arch mamba2`` defaults: the Mamba-1 grid's calibration halved and a quarter of its evaluation
windows, so the 65-case grid runs in about 15 minutes on a shared 2-core CPU."""


def mamba2_cases(
    names: tuple[str, ...], sparsities: tuple[float, ...], seed: int, skipped: list[dict[str, str]]
) -> list[Case]:
    """Every method of ``names`` at every sparsity (a fixed pattern once, at its own sparsity);
    N:M sparsities with no ``N:4`` pattern go to ``skipped``."""
    cases = []
    for name in names:
        method = MAMBA2_METHODS[name]
        own = method.own_sparsity
        for sparsity in (own,) if own is not None else sparsities:
            case = method.case(name, sparsity, seed)
            if case is None:
                skipped.append(
                    {
                        "what": f"{name} at sparsity {sparsity:g}",
                        "reason": f"no N:{NM_GROUP} pattern prunes exactly {sparsity:g} "
                        "(N:M fixes the sparsity at 1 - N/M)",
                    }
                )
                continue
            cases.append(case)
    return cases


def _method_list(text: str) -> tuple[str, ...]:
    """``--methods``: comma-separated names of :data:`MAMBA2_METHODS`."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in MAMBA2_METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated names from {sorted(MAMBA2_METHODS)}, got {text!r}"
        )
    return names


# ------------------------------------------------------------------------------------ CLI
def _fraction_list(text: str) -> tuple[float, ...]:
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {part!r}") from None
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise argparse.ArgumentTypeError(f"expected fractions in (0, 1), got {part!r}")
        values.append(value)
    return tuple(values)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Perplexity of the embedded tiny Mamba after SSM and whole-model pruning "
        "(methods x patterns x sparsities).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--arch",
        choices=("mamba", "mamba2"),
        default="mamba",
        help="the embedded model: tiny_mamba (Mamba-1 grid) or tiny_mamba2 (the MAMBA2_METHODS grid)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default benchmarks/results/quality.json, --arch mamba2: quality_mamba2.json)",
    )
    p.add_argument(
        "--wikitext",
        type=Path,
        default=None,
        metavar="PATH",
        help="a WikiText-2 test file (UTF-8 text) to also evaluate on; without it that column is skipped",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=_positive, default=None, help=common.THREADS_HELP)
    p.add_argument("--seed", type=int, default=0, help="calibration windows and the random method")
    p.add_argument("--nsamples", type=_positive, default=None, help="calibration windows (default 32)")
    p.add_argument(
        "--seqlen", type=_positive, default=None, help="calibration window length in bytes (default 256)"
    )
    p.add_argument(
        "--eval-seqlen", type=_positive, default=None, help="evaluation window length in bytes (default 512)"
    )
    p.add_argument(
        "--eval-windows",
        type=_positive,
        default=None,
        help="evaluation windows per text, bounds the time (default 128)",
    )
    p.add_argument(
        "--max-eval-bytes",
        type=_positive,
        default=None,
        help="evaluate at most this many bytes of each text (caps --eval-windows to bytes // --eval-seqlen)",
    )
    p.add_argument(
        "--sparsities",
        type=_fraction_list,
        default=SPARSITIES,
        help="comma-separated SSM-scope sparsities in (0, 1)",
    )
    p.add_argument("--no-whole", action="store_true", help="skip the whole-model cases")
    p.add_argument(
        "--methods",
        type=_method_list,
        default=None,
        help=f"--arch mamba2: comma-separated methods (default all: {','.join(MAMBA2_METHODS)})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny grid and sizes for the tests: sparsessm (weighted) and magnitude x unstructured / "
        "2:4 / column at 0.5, SparseSSM + SparseGPT whole-model with and without allocation, "
        "4 x 128 calibration, 4 x 256 evaluation",
    )
    return p


def _load_wikitext(path: Path | None) -> tuple[torch.Tensor | None, dict[str, Any]]:
    if path is None:
        return None, {"skipped": "no --wikitext PATH given: the WikiText column is null"}
    if not path.is_file():
        raise FileNotFoundError(f"--wikitext: {path} is not a file")
    data = path.read_bytes()
    shown = path.name if path.is_absolute() else path.as_posix()
    info = {"path": shown, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), info


def text_info(tokens: torch.Tensor | None, windows: int, seqlen: int) -> dict[str, Any] | None:
    """Sizes of one evaluation text as evaluated (``None`` for a skipped text)."""
    if tokens is None:
        return None
    used = min(windows, tokens.numel() // seqlen)
    return {
        "bytes_available": int(tokens.numel()),
        "windows": used,
        "seqlen": seqlen,
        "bytes_evaluated": used * seqlen,
        "predicted_tokens": used * (seqlen - 1),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(payload: dict[str, Any]) -> str:
    """Plain-text table of the dense model and every case."""
    rows = [
        {
            "scope": "dense",
            "label": "-",
            "pattern": "-",
            "sparsity": "0",
            "proj": "-",
            "alloc": "-",
            "heldout": _fmt(payload["dense"]["ppl_heldout"]),
            "wikitext": _fmt(payload["dense"]["ppl_wikitext"]),
        }
    ]
    for r in payload["results"]:
        rows.append(
            {
                "scope": r["scope"],
                "label": r["label"],
                "pattern": r["pattern"],
                "sparsity": f"{r['sparsity']:g}",
                "proj": r["projection_method"] or "-",
                "alloc": ("yes" if r["allocation"] else "no") if r["scope"] == "whole" else "-",
                "heldout": _fmt(r["ppl_heldout"]),
                "wikitext": _fmt(r["ppl_wikitext"]),
            }
        )
    columns = [
        ("scope", "scope"),
        ("label", "method" if payload.get("arch") == "mamba2" else "A_log method"),
        ("pattern", "pattern"),
        ("sparsity", "sparsity"),
        ("proj", "projections"),
        ("alloc", "allocation"),
        ("heldout", "held-out ppl"),
        ("wikitext", "WikiText ppl"),
    ]
    return common.format_table(rows, columns)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mamba2 = args.arch == "mamba2"
    sizes = QUICK_SIZES if args.quick else MAMBA2_SIZES if mamba2 else FULL_SIZES
    for key, value in sizes.items():  # explicit options override the (--quick) defaults
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seed < 0:
        parser.error(f"--seed: expected an integer >= 0, got {args.seed}")
    if args.methods is not None and args.arch != "mamba2":
        parser.error("--methods: only with --arch mamba2 (the Mamba-1 grid is fixed, see --help)")
    device = common.resolve_device(args.device)
    threads = common.apply_threads(args.threads)
    out_path = args.out or (DEFAULT_OUT_MAMBA2 if args.arch == "mamba2" else DEFAULT_OUT)
    common.check_out_path(parser, out_path)
    try:
        wiki, wiki_info = _load_wikitext(args.wikitext)
    except FileNotFoundError as exc:
        parser.error(str(exc))

    windows = args.eval_windows
    if args.max_eval_bytes is not None:
        windows = min(windows, args.max_eval_bytes // args.eval_seqlen)
        if windows < 1:
            parser.error(
                f"--max-eval-bytes: {args.max_eval_bytes} is less than one window of --eval-seqlen "
                f"{args.eval_seqlen}"
            )

    skipped: list[dict[str, str]] = []
    if wiki is None:
        skipped.append({"what": "WikiText perplexity", "reason": wiki_info["skipped"]})
    if mamba2:  # --quick: every method at 0.5
        names = args.methods or tuple(MAMBA2_METHODS)
        sparsities = (0.5,) if args.quick else tuple(args.sparsities)
        cases = mamba2_cases(names, sparsities, args.seed, skipped)
    elif args.quick:
        methods = (("sparsessm", "weighted"), ("magnitude", None))
        cases = ssm_cases(methods, STRUCTURES, (0.5,), args.seed, skipped)
        if not args.no_whole:
            whole = whole_cases(("unstructured",), ("sparsegpt",), args.seed)
            cases += [c for c in whole if c.method == "sparsessm"]  # allocation off and on
    else:
        cases = ssm_cases(SSM_METHODS, STRUCTURES, tuple(args.sparsities), args.seed, skipped)
        if not args.no_whole:
            cases += whole_cases(("unstructured", "2:4"), PROJECTION_METHODS, args.seed)

    t_start = time.perf_counter()
    common.log(f"device {device} ({common.device_info(device)['name']}), {len(cases)} cases")
    model_dir = MODEL_DIRS[args.arch]
    dense = (Mamba2LM if mamba2 else MambaLM).from_pretrained(model_dir)
    dense.eval()
    held = heldout_tokens(model_dir)
    calib = calibration_windows(_train_tokens(model_dir), args.nsamples, args.seqlen, args.seed)
    texts = {"heldout": held, "wikitext": wiki}
    evaluate = Evaluator(texts, args.eval_seqlen, windows, device)
    for cfg in (c for case in cases for c in case.passes):  # every setting is valid before any work
        try:
            cfg.resolve().check_model(dense.config)
        except PruneConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    with torch.no_grad():
        dense_ppl = evaluate(dense)
        common.log(
            f"dense: held-out {_fmt(dense_ppl['heldout'])}, WikiText {_fmt(dense_ppl['wikitext'])} "
            f"({time.perf_counter() - t_start:.1f}s)"
        )
        results = []
        for i, case in enumerate(cases, 1):
            row = run_case(case, dense, calib, evaluate, device)
            results.append(row)
            common.log(
                f"[{i}/{len(cases)}] {case.scope} {row['label']} {case.pattern} {case.sparsity:g}"
                + (f" proj {case.projection_method} alloc {case.allocation}" if case.scope == "whole" else "")
                + f": held-out {_fmt(row['ppl_heldout'])}, WikiText {_fmt(row['ppl_wikitext'])} "
                f"({row['prune_s'] + row['eval_s']:.1f}s)"
            )

    config = {
        "quick": args.quick,
        "seed": args.seed,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "eval_seqlen": args.eval_seqlen,
        "eval_windows": args.eval_windows,
        "max_eval_bytes": args.max_eval_bytes,
        "sparsities": list(args.sparsities) if not args.quick else [0.5],
        "nm_group": NM_GROUP,
        "device": str(device),
        "threads": threads.threads,
        "threads_reason": threads.reason,
        **common.run_provenance(argv, out_path),
    }
    model_cfg = dense.config
    model_info = {
        "name": model_dir.name,
        "params": sum(p.numel() for p in dense.parameters()),
        "n_layer": model_cfg.n_layer,
        "d_model": model_cfg.d_model,
        "d_inner": model_cfg.d_inner,
        "d_state": model_cfg.d_state,
        "vocab_size": model_cfg.vocab_size,
        "tokens": "UTF-8 bytes",
    }
    if mamba2:
        config.update(arch="mamba2", methods=list(names))
        if not args.quick:
            config["sizes"] = (
                f"--arch mamba2 defaults {MAMBA2_SIZES} (the Mamba-1 grid: {FULL_SIZES}): half the "
                "calibration windows and a quarter of the evaluation windows, so the grid fits about 15 "
                "minutes on a shared 2-core CPU"
            )
        model_info.update(
            arch="mamba2", nheads=model_cfg.nheads, headdim=model_cfg.headdim, ngroups=model_cfg.ngroups
        )
    else:
        config.update(whole_sparsity=WHOLE_SPARSITY, whole_alpha=WHOLE_ALPHA)
    payload = {
        **common.result_header("quality", device),
        **({"arch": "mamba2"} if mamba2 else {}),
        "config": config,
        "model": model_info,
        "data": {
            "calibration": {
                "text": "training files of the demo model (Python standard library sources)",
                "nsamples": args.nsamples,
                "seqlen": args.seqlen,
                **({"used_by": [n for n in names if MAMBA2_METHODS[n].calibrated]} if mamba2 else {}),
            },
            "heldout": {
                "text": "held-out Python standard library files of the demo (this machine's stdlib)",
                "python": platform.python_version(),
                **(text_info(held, windows, args.eval_seqlen) or {}),
            },
            "wikitext": {**wiki_info, **(text_info(wiki, windows, args.eval_seqlen) or {})},
        },
        "dense": {"ppl_heldout": dense_ppl["heldout"], "ppl_wikitext": dense_ppl["wikitext"]},
        "results": results,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    common.write_json_atomic(out_path, payload)
    print(render(payload))
    for item in skipped:
        print(f"skipped: {item['what']}: {item['reason']}")
    print(f"\nwrote {out_path} in {payload['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
