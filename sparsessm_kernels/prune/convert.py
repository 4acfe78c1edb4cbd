"""``sparsessm convert``: rewrite a checkpoint in this package's layout.

:class:`ConvertJob` reads any checkpoint :func:`~sparsessm_kernels.models.load_model` reads
(Mamba-1 or Mamba-2, HF or mamba_ssm layout, local or a Hugging Face Hub id) and writes it with
the model's ``save_pretrained`` (``config.json`` + ``model.safetensors`` + ``sparsity.safetensors``
when masked), plus the source's tokenizer files. With ``zero_a_log_pruned`` (Mamba-1 only) the
``A_log`` entries stored as exactly 0 -- pruned states in the SparseSSM authors' checkpoints
(:mod:`sparsessm_kernels.models.zeroed_a_log`) -- are marked pruned with ``zero_transition``,
which is how the authors evaluate them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import check_output_dir
from ..models import Mamba2LM, Mamba2LMConfig, MambaLM, a_log_name, load_model, read_model_config
from ..models.checkpoint import resolve_checkpoint_dir
from ..models.zeroed_a_log import (
    ZeroedALogWarning,
    find_zeroed_a_log_layers,
    zeroed_a_log_layouts,
    zeroed_a_log_mask,
)
from .config import PruneConfigError
from .run import DTYPES, _copy_tokenizer, _inside, _output_dir

__all__ = ["CONVERT_DTYPES", "ConvertJob", "run_convert"]

CONVERT_DTYPES = ("auto", *DTYPES)
"""``auto`` keeps the stored dtype (that of the embeddings)."""


@dataclass
class ConvertJob:
    """Inputs of ``sparsessm convert`` (see the CLI help for each)."""

    src: str
    out: str
    revision: str | None = None
    zero_a_log_pruned: bool = False
    dtype: str = "auto"
    overwrite: bool = False

    def validate(self) -> None:
        """Every check that needs no weights; raises before any work starts."""
        config = read_model_config(self.src, self.revision)
        if self.zero_a_log_pruned and isinstance(config, Mamba2LMConfig):
            raise PruneConfigError(
                f"--zero-a-log-pruned: {self.src} is a Mamba-2 model; the flag reads the SparseSSM authors' "
                "Mamba-1 convention (A_log entries stored as 0), which has no Mamba-2 counterpart here"
            )
        if self.dtype not in CONVERT_DTYPES:
            raise PruneConfigError(f"dtype: expected one of {CONVERT_DTYPES}, got {self.dtype!r}")
        source = resolve_checkpoint_dir(self.src, self.revision, weights=False)
        for given in {str(self.src), str(source)}:
            if _inside(given, self.out):
                raise PruneConfigError(
                    f"--out: {self.out} is or contains SRC {given}, and writing --out replaces the whole "
                    "directory; choose another one"
                )
        check_output_dir(self.out, "--out", overwrite=self.overwrite, overwrite_hint="--overwrite")


def _mark_zeroed_a_log(model: MambaLM) -> list[dict[str, Any]]:
    """Mark every zeroed ``A_log`` entry of ``model`` pruned (``zero_transition``); per-layer records."""
    n_layer = model.config.n_layer
    a_logs = {i: model.mixer(i).A_log for i in range(n_layer)}
    existing = {i: model.state_layout(i) for i in range(n_layer)}
    layouts = zeroed_a_log_layouts(a_logs, existing)
    beyond_init = find_zeroed_a_log_layers(a_logs, {i: lay for i, (lay, _) in existing.items()})
    records = []
    for i, layout in layouts.items():
        entries = int(layout.mask.numel())
        zeroed = int(zeroed_a_log_mask(a_logs[i]).sum())
        model.set_state_mask(i, layout, pruned_states="zero_transition")
        records.append(
            {
                "layer": i,
                "name": a_log_name(i),
                "zeroed": zeroed,
                "entries": entries,
                "sparsity": 1.0 - int(layout.mask.sum()) / entries,
                "state_0_only": i not in beyond_init,
            }
        )
    return records


def run_convert(job: ConvertJob) -> dict[str, Any]:
    """Validate, load, (mark the zeroed ``A_log`` entries pruned,) save. Returns a summary."""
    job.validate()
    source = resolve_checkpoint_dir(job.src, job.revision)
    dtype: torch.dtype | str = "auto" if job.dtype == "auto" else DTYPES[job.dtype]
    with warnings.catch_warnings():
        if job.zero_a_log_pruned:  # the warning's advice is what this run does
            warnings.simplefilter("ignore", ZeroedALogWarning)
        model = load_model(job.src, dtype=dtype, revision=job.revision)
    layers = _mark_zeroed_a_log(model) if job.zero_a_log_pruned else []
    masked = sorted(model.state_masks())
    if isinstance(model, Mamba2LM):
        masked = sorted([*masked, *model.head_transition_masks()])
    out = Path(job.out)
    with _output_dir(job.out, "--out", job.overwrite) as staged:  # renamed in once complete
        model.save_pretrained(staged)
        copied = _copy_tokenizer(source, staged)
    return {
        "src": job.src,
        "revision": job.revision,
        "out": str(out),
        "dtype": str(model.dtype).removeprefix("torch."),
        "zero_a_log_pruned": job.zero_a_log_pruned,
        "layers": layers,
        "masked_layers": masked,
        "tokenizer_files": copied,
    }


def format_convert(result: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run_convert`'s result."""
    lines = [f"converted {result['src']} -> {result['out']} ({result['dtype']})"]
    if result["zero_a_log_pruned"]:
        if not result["layers"]:
            lines.append("no A_log entry is 0 (A = -1): nothing was marked pruned")
        for rec in result["layers"]:
            note = (
                " (state 0 only: also the initial value A_log = log(1) of an untrained model)"
                if rec["state_0_only"]
                else ""
            )
            lines.append(
                f"  layer {rec['layer']}: {rec['zeroed']} of {rec['entries']} A_log entries are 0 -> pruned "
                f"(zero_transition), layer sparsity {rec['sparsity']:.3f}{note}"
            )
    if result["tokenizer_files"]:
        lines.append(f"tokenizer files: {', '.join(result['tokenizer_files'])}")
    return "\n".join(lines)
