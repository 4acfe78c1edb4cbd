"""The ``sparsessm`` command line.

Usage::

    sparsessm env [--json]            # versions, devices, backend availability
    python -m sparsessm_kernels env   # same
    sparsessm prune MODEL_DIR --calib wikitext2|PATH --save OUT_DIR [...]   # docs/pruning.md
    sparsessm eval MODEL_DIR --data wikitext2|PATH --seqlen 2048
    sparsessm convert SRC --out DST [--zero-a-log-pruned]   # docs/models.md

MODEL_DIR / SRC may be a Hugging Face Hub id (``state-spaces/mamba-130m-hf``, ``--revision``).
    sparsessm demo [--arch mamba|mamba2] [--out DIR] [--quick]  # docs/demo.md

Adding a subcommand: write ``_configure_<name>(parser)`` (adds the arguments) and
``_run_<name>(args) -> int`` (does the work, returns the exit code), then append a
:class:`Command` to :data:`COMMANDS`. ``main`` dispatches on the subcommand name.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ._version import __version__

__all__ = ["COMMANDS", "Command", "build_parser", "collect_env", "format_cli_warning", "format_env", "main"]

ENV_PREFIX = "SPARSESSM_"


@dataclass(frozen=True)
class Command:
    """One subcommand: ``configure`` adds its arguments, ``run`` executes it (returns exit code)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------- env
def _package_version(dist_names: Sequence[str], module: str) -> str | None:
    """Installed version of a package (distribution metadata first, then ``module.__version__``)."""
    for dist in dist_names:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda_available": False, "count": 0, "devices": []}
    try:
        available = bool(torch.cuda.is_available())
    except Exception as exc:  # broken driver installs can raise here
        info["error"] = f"{type(exc).__name__}: {exc}"
        available = False
    info["cuda_available"] = available
    if available:
        try:
            count = torch.cuda.device_count()
            info["count"] = count
            for i in range(count):
                props = torch.cuda.get_device_properties(i)
                info["devices"].append(
                    {
                        "index": i,
                        "name": props.name,
                        "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1),
                    }
                )
        except Exception as exc:
            info["error"] = f"{type(exc).__name__}: {exc}"
    if info["devices"]:
        info["summary"] = ", ".join(
            f"cuda:{d['index']} {d['name']} (sm_{d['capability'].replace('.', '')}, {d['memory_gib']} GiB)"
            for d in info["devices"]
        )
    else:
        info["summary"] = "CPU only"
    return info


def _normalize_backend(value: Any) -> dict[str, Any]:
    """``(usable, reason)`` (or a bool, or a dict) -> ``{"usable": bool, "reason": str}``."""
    if isinstance(value, dict):
        return {"usable": bool(value.get("usable", False)), "reason": str(value.get("reason", ""))}
    if isinstance(value, (tuple, list)) and value:
        return {"usable": bool(value[0]), "reason": str(value[1]) if len(value) > 1 else ""}
    return {"usable": bool(value), "reason": ""}


def _backends() -> tuple[dict[str, dict[str, Any]], str | None]:
    """Backend availability from :func:`sparsessm_kernels.ops.available_backends`."""
    try:
        from . import ops

        result = ops.available_backends()
    except Exception as exc:
        return {}, f"available_backends() failed: {type(exc).__name__}: {exc}"
    if not isinstance(result, dict):
        return {}, f"available_backends() returned {type(result).__name__}, expected a dict"
    return {str(name): _normalize_backend(value) for name, value in result.items()}, None


def _cuda_extension_info() -> dict[str, Any]:
    """Build state of the compiled extension ``sparsessm_kernels._C`` (never raises)."""
    try:
        from .ops.cuda import extension_info

        return dict(extension_info())
    except Exception as exc:  # report, don't fail `sparsessm env`
        return {"built": False, "error": f"{type(exc).__name__}: {exc}"}


def _semi_structured_info() -> dict[str, str]:
    """Which path 2:4 projections (``SemiStructuredLinear``) take on the default device."""
    try:
        from .nn import semi_structured_status

        path, reason = semi_structured_status()
        return {"path": path, "reason": reason}
    except Exception as exc:  # report, don't fail `sparsessm env`
        return {"path": "unknown", "reason": f"{type(exc).__name__}: {exc}"}


def collect_env() -> dict[str, Any]:
    """Everything ``sparsessm env`` reports, as a JSON-serialisable dict."""
    import torch

    import sparsessm_kernels

    backends, backends_error = _backends()
    not_installed = "not installed"
    info: dict[str, Any] = {
        "sparsessm_kernels": {
            "version": __version__,
            "location": os.path.dirname(os.path.abspath(sparsessm_kernels.__file__)),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "packages": {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "torch_hip": getattr(torch.version, "hip", None),
            "triton": _package_version(("triton", "pytorch-triton", "pytorch-triton-rocm"), "triton")
            or not_installed,
            "transformers": _package_version(("transformers",), "transformers") or not_installed,
            "safetensors": _package_version(("safetensors",), "safetensors") or not_installed,
        },
        "device": _device_info(),
        "cpu": {
            "torch_threads": torch.get_num_threads(),
            "os_cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "backends": backends,
        "backends_error": backends_error,
        "cuda_extension": _cuda_extension_info(),
        "semi_structured": _semi_structured_info(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIX)},
    }
    return info


def format_env(info: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`collect_env`'s dict."""
    pkgs = info["packages"]
    py = info["python"]
    dev = info["device"]
    cpu = info["cpu"]
    cuda_build = pkgs["torch_cuda"] or "none (CPU build)"
    if pkgs.get("torch_hip"):
        cuda_build += f", HIP {pkgs['torch_hip']}"
    rows = [
        (
            "sparsessm_kernels",
            f"{info['sparsessm_kernels']['version']} ({info['sparsessm_kernels']['location']})",
        ),
        ("python", f"{py['version']} ({py['implementation']}, {py['executable']})"),
        ("platform", py["platform"]),
        ("torch", f"{pkgs['torch']} (CUDA build: {cuda_build})"),
        ("triton", pkgs["triton"]),
        ("transformers", pkgs["transformers"]),
        ("safetensors", pkgs["safetensors"]),
        ("cuda available", "yes" if dev["cuda_available"] else "no"),
        ("devices", f"{dev['count']}: {dev['summary']}" if dev["count"] else dev["summary"]),
        ("cpu threads", f"torch {cpu['torch_threads']}, os {cpu['os_cpu_count']} ({cpu['machine']})"),
    ]
    if dev.get("error"):
        rows.append(("device error", dev["error"]))
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"{k:<{width}}{v}" for k, v in rows]
    lines.append("backends:")
    if info.get("backends_error"):
        lines.append(f"  unavailable: {info['backends_error']}")
    bwidth = max((len(name) for name in info["backends"]), default=0) + 2
    for name, b in info["backends"].items():
        status = "usable" if b["usable"] else "not usable"
        reason = f" ({b['reason']})" if b["reason"] else ""
        lines.append(f"  {name:<{bwidth}}{status}{reason}")
    ext = info.get("cuda_extension", {})
    ext_text = "built" if ext.get("built") else "not built"
    detail = ext.get("reason") or ext.get("error") or ext.get("cuda_archs")
    lines.append(f"cuda extension: {ext_text}" + (f" ({detail})" if detail else ""))
    semi = info.get("semi_structured", {})
    lines.append(f"2:4 projections: {semi.get('path', 'unknown')} ({semi.get('reason', '')})")
    lines.append(f"environment ({ENV_PREFIX}*):")
    if info["env"]:
        lines.extend(f"  {k}={v}" for k, v in info["env"].items())
    else:
        lines.append("  (none set)")
    return "\n".join(lines)


def _configure_env(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_env(args: argparse.Namespace) -> int:
    info = collect_env()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_env(info))
    return 0


# -------------------------------------------------------------------------------- prune / eval
def _setup_logging(verbose: bool) -> None:
    import logging

    log = logging.getLogger("sparsessm_kernels")
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_common_run_args(parser: argparse.ArgumentParser) -> None:
    from ._progress import DEFAULT_INTERVAL_S, INTERVAL_ENV

    parser.add_argument(
        "--device",
        default="auto",
        help="where layers run: auto (CUDA when available), cpu, cuda, cuda:1, ...",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model weights dtype"
    )
    parser.add_argument(
        "--tokenizer",
        metavar="DIR",
        default=None,
        help="directory or Hugging Face Hub id with the tokenizer files (default: MODEL_DIR; without any, "
        "UTF-8 bytes when vocab >= 256)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"progress bars on stderr (off a terminal: one line at most every {INTERVAL_ENV} seconds, "
        f"default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument("--verbose", action="store_true", help="log details (per-layer timings, allocation)")


def _add_model_args(parser: argparse.ArgumentParser, dest: str, metavar: str, what: str) -> None:
    """The positional model argument (a directory or a Hugging Face Hub id) and ``--revision``."""
    parser.add_argument(
        dest,
        metavar=metavar,
        help=f"{what}: a directory (HF or mamba_ssm layout) or a Hugging Face Hub id such as "
        "state-spaces/mamba-130m-hf (a local path wins; needs huggingface_hub, the [hf] extra)",
    )
    parser.add_argument(
        "--revision",
        default=None,
        help=f"Hub branch, tag or commit of {metavar} (Hub ids only; default main)",
    )


def _configure_prune(parser: argparse.ArgumentParser) -> None:
    from .prune.config import AGGREGATIONS, METHODS, SCORES, TARGETS, TIME_WEIGHTS

    _add_model_args(parser, "model_dir", "MODEL_DIR", "Mamba-1 or Mamba-2 checkpoint")
    parser.add_argument(
        "--save", metavar="OUT_DIR", required=True, help="output model directory (HF layout + masks)"
    )
    parser.add_argument(
        "--calib",
        default="wikitext2",
        help="calibration text: a local file, or wikitext2 / ptb / c4 (HF datasets)",
    )
    parser.add_argument("--nsamples", type=_positive_int, default=64, help="calibration windows (default 64)")
    parser.add_argument(
        "--seqlen", type=_positive_int, default=2048, help="calibration window length (default 2048)"
    )
    parser.add_argument(
        "--method", choices=METHODS, default="sparsessm", help="pruning method (default sparsessm)"
    )
    parser.add_argument(
        "--targets",
        choices=TARGETS,
        default="ssm",
        help="ssm: A_log (per head on Mamba-2); states: Mamba-2 B/C state columns per group; heads / "
        "headdim: Mamba-2 heads / head channels removed (methods flap, magnitude, random); ffn: in_proj, "
        "x_proj, dt_proj, out_proj (Mamba-2: in_proj, out_proj; +conv1d with --conv1d); all: ssm and ffn",
    )
    parser.add_argument(
        "--pattern",
        default="unstructured",
        help="unstructured, N:M such as 2:4 or 4:8 (states for A_log, heads for Mamba-2 A_log, the states of "
        "a group for --targets states, inputs for projections), or column (A_log / states: states removed)",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="fraction pruned in [0, 1) (default 0.5; N:M implies 1 - N/M)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="sensitivity-aware allocation half-width for in_proj/out_proj (default 0.04 with --method "
        "sparsessm and unstructured projections, else 0)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="calibration windows and random masks (default 0)"
    )
    parser.add_argument(
        "--eval", metavar="PATH", default=None, help="perplexity before/after on this text (file or name)"
    )
    parser.add_argument(
        "--eval-seqlen", type=_positive_int, default=None, help="evaluation window (default --seqlen)"
    )
    parser.add_argument(
        "--eval-before",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also evaluate the dense model (with --eval)",
    )
    parser.add_argument(
        "--eval-max-windows", type=_positive_int, default=None, help="evaluate only the first windows"
    )
    parser.add_argument(
        "--export-stock", metavar="DIR", default=None, help="also write a stock transformers checkpoint"
    )
    _add_overwrite_arg(parser, "--save / --export-stock")
    parser.add_argument(
        "--score", choices=SCORES, default="sparsessm", help="SparseSSM score (default sparsessm)"
    )
    parser.add_argument(
        "--aggregation", choices=AGGREGATIONS, default="weighted", help="time aggregation (default weighted)"
    )
    parser.add_argument(
        "--time-weights", choices=TIME_WEIGHTS, default="power", help="weights of the weighted aggregation"
    )
    parser.add_argument("--power", type=float, default=1.0, help="power weights (t+1)^-power (default 1)")
    parser.add_argument("--gamma", type=float, default=0.9, help="discount weights gamma^t (default 0.9)")
    parser.add_argument("--window", type=float, default=0.25, help="window weights: first fraction of steps")
    parser.add_argument(
        "--include", action="append", default=[], metavar="REGEX", help="prune only matching modules"
    )
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="REGEX", help="do not prune matching modules"
    )
    parser.add_argument(
        "--conv1d",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also prune the depthwise conv1d, per channel (ffn / all targets)",
    )
    parser.add_argument(
        "--blocksize", type=_positive_int, default=128, help="SparseGPT block size (default 128)"
    )
    parser.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT dampening (default 0.01)")
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="calibration windows per forward")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    _add_common_run_args(parser)


def _add_overwrite_arg(parser: argparse.ArgumentParser, outputs: str) -> None:
    """``--overwrite``: output directories (``outputs``) that exist and are not empty are refused
    before any work unless it is given (see :func:`sparsessm_kernels._io.check_output_dir`)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {outputs} when the directory exists and is not empty (everything in it is "
        "removed; the new directory is renamed into place only once complete)",
    )


def _fail(command: str, exc: BaseException, code: int) -> int:
    print(f"sparsessm {command}: error: {exc}", file=sys.stderr)
    return code


_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, TypeError)
_RUN_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)
INTERRUPTED_EXIT_CODE = 130
"""Exit code after Ctrl-C (128 + SIGINT), the shell convention."""


def _run_job(
    command: str,
    build: Callable[[], Any],
    run: Callable[[Any], dict[str, Any]],
    render: Callable[[dict[str, Any]], None],
    as_json: bool,
) -> int:
    """Build and validate a job (bad input: exit 2, before any work), run it (failure: exit 1),
    then print its result as JSON or through ``render``."""
    try:
        job = build()
    except _INPUT_ERRORS as exc:
        return _fail(command, exc, 2)
    try:
        result = run(job)
    except _RUN_ERRORS as exc:
        return _fail(command, exc, 1)
    except KeyboardInterrupt:
        print(f"sparsessm {command}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        render(result)
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    from .prune.config import PruneConfig
    from .prune.run import PruneJob, run_prune

    _setup_logging(args.verbose)

    def build() -> PruneJob:
        cfg = PruneConfig(
            method=args.method,
            targets=args.targets,
            pattern=args.pattern,
            sparsity=args.sparsity,
            alpha=args.alpha,
            seed=args.seed,
            score=args.score,
            aggregation=args.aggregation,
            time_weights=args.time_weights,
            power=args.power,
            gamma=args.gamma,
            window=args.window,
            include=tuple(args.include),
            exclude=tuple(args.exclude),
            conv1d=args.conv1d,
            blocksize=args.blocksize,
            percdamp=args.percdamp,
            batch_size=args.batch_size,
        )
        job = PruneJob(
            model_dir=args.model_dir,
            save=args.save,
            cfg=cfg,
            revision=args.revision,
            calib=args.calib,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            eval=args.eval,
            eval_seqlen=args.eval_seqlen,
            eval_before=args.eval_before,
            eval_max_windows=args.eval_max_windows,
            export_stock=args.export_stock,
            device=args.device,
            dtype=args.dtype,
            tokenizer=args.tokenizer,
            progress=args.progress,
            overwrite=args.overwrite,
        )
        job.validate()
        return job

    def render(report: dict[str, Any]) -> None:
        from .prune.report import REPORT_NAME, format_table

        print(format_table(report))
        print(f"saved {args.save} (report: {os.path.join(args.save, REPORT_NAME)})")

    return _run_job("prune", build, run_prune, render, args.json)


def _configure_eval(parser: argparse.ArgumentParser) -> None:
    _add_model_args(parser, "model_dir", "MODEL_DIR", "model (dense or pruned)")
    parser.add_argument("--data", default="wikitext2", help="text: a local file, or wikitext2 / ptb / c4")
    parser.add_argument("--seqlen", type=_positive_int, default=2048, help="window length (default 2048)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="windows per forward (default 1)")
    parser.add_argument(
        "--max-windows", type=_positive_int, default=None, help="evaluate only the first windows"
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated lm-eval zero-shot tasks ('default' = piqa,arc_easy,arc_challenge,winogrande,"
        "openbookqa); needs lm-eval installed",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common_run_args(parser)


def _run_eval(args: argparse.Namespace) -> int:
    from .prune.run import EvalJob, run_eval

    _setup_logging(args.verbose)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else ()

    def build() -> EvalJob:
        job = EvalJob(
            model_dir=args.model_dir,
            revision=args.revision,
            data=args.data,
            seqlen=args.seqlen,
            batch_size=args.batch_size,
            max_windows=args.max_windows,
            device=args.device,
            dtype=args.dtype,
            tokenizer=args.tokenizer,
            tasks=tasks,
            progress=args.progress,
        )
        job.validate()
        return job

    def render(result: dict[str, Any]) -> None:
        p = result["perplexity"]
        print(
            f"{args.model_dir}: perplexity {p['ppl']:.4f} (mean NLL {p['mean_nll']:.4f}, "
            f"{p['tokens']} tokens, "
            f"{p['windows']} windows of {p['seqlen']}, tokenizer {result['tokenizer']})"
        )
        for task, metrics in (result.get("zero_shot") or {}).items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            print(f"  {task}: {shown}")

    return _run_job("eval", build, run_eval, render, args.json)


# ---------------------------------------------------------------------------------- convert
def _configure_convert(parser: argparse.ArgumentParser) -> None:
    from .prune.convert import CONVERT_DTYPES

    parser.description = (
        "Read a Mamba-1 or Mamba-2 checkpoint (HF or mamba_ssm layout, local or on the Hugging Face Hub) and "
        "write it in this package's layout (config.json + model.safetensors [+ sparsity.safetensors]) with "
        "its tokenizer files."
    )
    _add_model_args(parser, "src", "SRC", "source checkpoint")
    parser.add_argument("--out", metavar="DST", required=True, help="output model directory")
    _add_overwrite_arg(parser, "--out")
    parser.add_argument(
        "--zero-a-log-pruned",
        action="store_true",
        help="mark A_log entries that are exactly 0 (A = -1; how the SparseSSM authors' code stores pruned "
        "states) as pruned states with a zero transition, as the authors evaluate them (docs/models.md)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=CONVERT_DTYPES, help="weights dtype (default auto: as stored)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _run_convert(args: argparse.Namespace) -> int:
    from .prune.convert import ConvertJob, format_convert, run_convert

    def build() -> ConvertJob:
        job = ConvertJob(
            src=args.src,
            out=args.out,
            revision=args.revision,
            zero_a_log_pruned=args.zero_a_log_pruned,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
        job.validate()
        return job

    return _run_job("convert", build, run_convert, lambda r: print(format_convert(r)), args.json)


# ------------------------------------------------------------------------------------- demo
def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Load the embedded tiny byte-level Mamba (trained on the Python standard library's sources), "
        "prune its SSMs at 50% with sparsessm (unstructured, 2:4, column) and magnitude (unstructured, "
        "2:4), evaluate held-out perplexity, check the sparse scan against the reference, time dense vs "
        "sparse scans, print one table and write demo_report.json (+ a PNG when matplotlib is installed). "
        "--arch mamba2: the embedded tiny Mamba-2 with per-group state masks at 50% (sparsessm column and "
        "2:4 from calibration, magnitude column), compact-cache decode checked and timed against dense "
        "decode."
    )
    parser.add_argument(
        "--arch",
        choices=("mamba", "mamba2"),
        default="mamba",
        help="which embedded model: the Mamba-1 tiny_mamba (default) or the Mamba-2 tiny_mamba2",
    )
    parser.add_argument(
        "--out", metavar="DIR", default="sparsessm_demo", help="output directory (default sparsessm_demo)"
    )
    parser.add_argument(
        "--device", default="auto", help="where to run: auto (CUDA when available), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--seqlen", type=_positive_int, default=None, help="calibration window length in bytes (default 256)"
    )
    parser.add_argument(
        "--nsamples", type=_positive_int, default=None, help="calibration windows (default 32)"
    )
    parser.add_argument(
        "--eval-seqlen", type=_positive_int, default=None, help="perplexity window in bytes (default 512)"
    )
    parser.add_argument(
        "--eval-windows",
        type=_positive_int,
        default=None,
        help="held-out windows scored per model (default 64)",
    )
    parser.add_argument(
        "--scan-seqlen",
        type=_positive_int,
        default=None,
        help="sequence length of the timed layer-shaped scan (default 2048)",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="timed repetitions per scan (mamba2: per decode call), median kept (default 10)",
    )
    parser.add_argument(
        "--decode-tokens",
        type=_positive_int,
        default=None,
        help="mamba2: tokens decoded per timed call (default 64, --quick 16)",
    )
    parser.add_argument("--seed", type=int, default=0, help="calibration windows and scan inputs (default 0)")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: the physical cores available to this process that are idle "
        "now, at most 4; an explicit OMP_NUM_THREADS is kept). More threads than idle cores slow the "
        "demo down many times over",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced run for CI and a first look (seqlen 128, 4 samples, 4 eval windows, scan length 256); "
        "explicit options still override it",
    )
    parser.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write demo_report.png (matplotlib)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")


def _run_demo(args: argparse.Namespace) -> int:
    from .demo.run import REPORT_NAME, DemoOptions, format_demo_table, run_demo

    names = ("seqlen", "nsamples", "eval_seqlen", "eval_windows", "scan_seqlen", "repeats", "threads")
    names += ("decode_tokens",)
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    common = {"out": args.out, "device": args.device, "seed": args.seed, "plot": args.plot, "arch": args.arch}

    def build() -> DemoOptions:
        opts = DemoOptions.quick(**given, **common) if args.quick else DemoOptions(**given, **common)
        opts.validate()
        return opts

    def render(report: dict[str, Any]) -> None:
        print(format_demo_table(report))
        print(
            f"report: {os.path.join(args.out, REPORT_NAME)}"
            + (f", plot: {report['plot']}" if report.get("plot") else "")
        )

    return _run_job("demo", build, run_demo, render, args.json)


# ------------------------------------------------------------------------------- dispatch
COMMANDS: list[Command] = [
    Command(
        "env",
        "print versions, devices and which kernel backends are usable",
        _configure_env,
        _run_env,
    ),
    Command(
        "prune",
        "prune a Mamba-1 or Mamba-2 model (SparseSSM for A_log, SSD saliency for Mamba-2 states, "
        "SparseGPT / Wanda / magnitude / SNIP for projections)",
        _configure_prune,
        _run_prune,
    ),
    Command(
        "eval",
        "perplexity on non-overlapping windows (and lm-eval zero-shot tasks when installed)",
        _configure_eval,
        _run_eval,
    ),
    Command(
        "convert",
        "rewrite a checkpoint in this package's layout (optionally marking zeroed A_log entries pruned)",
        _configure_convert,
        _run_convert,
    ),
    Command(
        "demo",
        "prune the embedded tiny Mamba (SparseSSM vs magnitude), report perplexity and sparse-scan speed",
        _configure_demo,
        _run_demo,
    ),
]
"""Registered subcommands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``sparsessm`` argument parser with one subparser per :data:`COMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog="sparsessm",
        description="Sparse selective-scan kernels and SparseSSM pruning for Mamba-1 models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def format_cli_warning(
    command: str,
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A warning as ``sparsessm COMMAND: warning: MESSAGE`` (the category unless ``UserWarning``),
    without the source line a Python warning shows by default: the command line has no call site
    a user wrote."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"sparsessm {command}: warning: {message}{kind}\n"


@contextlib.contextmanager
def _cli_warnings(command: str) -> Iterator[None]:
    """Within the block, warnings print as :func:`format_cli_warning` (display only: filters and
    recording by ``warnings.catch_warnings`` are unchanged)."""
    previous = warnings.formatwarning
    warnings.formatwarning = functools.partial(format_cli_warning, command)  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsessm`` console script; returns the exit code.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    with _cli_warnings(args.command):
        return int(args._run(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
