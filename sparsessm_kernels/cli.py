"""The ``sparsessm`` command line.

Usage::

    sparsessm env [--json]            # versions, devices, backend availability
    python -m sparsessm_kernels env   # same

Adding a subcommand: write ``_configure_<name>(parser)`` (adds the arguments) and
``_run_<name>(args) -> int`` (does the work, returns the exit code), then append a
:class:`Command` to :data:`COMMANDS`. ``main`` dispatches on the subcommand name.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._version import __version__

__all__ = ["COMMANDS", "Command", "build_parser", "collect_env", "format_env", "main"]

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


# ------------------------------------------------------------------------------- dispatch
COMMANDS: list[Command] = [
    Command(
        "env",
        "print versions, devices and which kernel backends are usable",
        _configure_env,
        _run_env,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsessm`` console script; returns the exit code.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    return int(args._run(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
