"""End-to-end jobs behind ``sparsessm prune`` and ``sparsessm eval`` (Mamba-1 and Mamba-2).

:class:`PruneJob` / :class:`EvalJob` hold a run's inputs; ``validate()`` checks everything that can
be checked without loading weights or text (missing directories, settings, shapes from
``config.json``, dataset availability, devices) so bad input fails before any work;
:func:`run_prune` / :func:`run_eval` then do the work.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_directory, check_output_dir
from .._progress import progress_interval
from ..models import Mamba2LM, Mamba2LMConfig, MambaLM, MambaLMConfig, load_model, read_model_config
from ..models.checkpoint import CONFIG_NAME, resolve_checkpoint_dir
from ..models.hub import resolve_local_or_hub
from ..sparsity import kept_count
from .capture import prune_model
from .config import PruneConfig, PruneConfigError
from .data import (
    TOKENIZER_FILES,
    DataError,
    calibration_windows,
    check_text_source,
    has_tokenizer_files,
    load_tokenizer,
    load_tokens,
)
from .evaluate import DEFAULT_TASKS, evaluate_perplexity, zero_shot
from .report import REPORT_NAME, build_report, write_report

__all__ = [
    "DTYPES",
    "EvalJob",
    "PruneJob",
    "read_model_config",
    "resolve_device",
    "run_eval",
    "run_prune",
    "tokenizer_dir",
]

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else CPU. ``cuda`` without a GPU is an error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PruneConfigError(f"device: expected auto, cpu or cuda[:i], got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PruneConfigError("device: cuda was requested but no CUDA device is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise PruneConfigError(f"device: expected auto, cpu or cuda[:i], got {device!r}")
    return dev


def _inside(inner: str | Path, outer: str | Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies below it (after resolving both)."""
    return Path(outer).resolve() in (Path(inner).resolve(), *Path(inner).resolve().parents)


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        f = src / name
        if f.is_file():
            shutil.copyfile(f, dst / name)
            copied.append(name)
    return copied


def tokenizer_dir(tokenizer: str | None, model_dir: str, revision: str | None = None) -> Path:
    """The local directory with the tokenizer files: ``tokenizer`` (a directory or Hub id; only
    the tokenizer files are fetched), else the model's own directory (``revision`` applies)."""
    if tokenizer is not None:
        return resolve_local_or_hub(tokenizer, allow_patterns=TOKENIZER_FILES)
    return resolve_checkpoint_dir(model_dir, revision, weights=False)


def _check_tokenizer(tokenizer_dir: Path, config: MambaLMConfig | Mamba2LMConfig) -> None:
    if tokenizer_dir.exists() and not tokenizer_dir.is_dir():
        raise DataError(f"tokenizer: {tokenizer_dir} is not a directory")
    if not has_tokenizer_files(tokenizer_dir) and config.vocab_size < 256:
        raise DataError(
            f"{tokenizer_dir} has no tokenizer files and the model's vocabulary ({config.vocab_size}) is too "
            "small for the UTF-8 byte fallback (needs >= 256); pass --tokenizer DIR"
        )


def _model_info(model: MambaLM | Mamba2LM) -> dict[str, Any]:
    c = model.config
    return {
        "n_layer": c.n_layer,
        "d_model": c.d_model,
        "d_inner": c.d_inner,
        "vocab_size": c.vocab_size,
        "params": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------------- prune
@dataclass
class PruneJob:
    """Inputs of ``sparsessm prune`` (see the CLI help for each)."""

    model_dir: str
    save: str
    cfg: PruneConfig = field(default_factory=PruneConfig)
    calib: str = "wikitext2"
    nsamples: int = 64
    seqlen: int = 2048
    eval: str | None = None
    eval_seqlen: int | None = None
    eval_before: bool = True
    eval_max_windows: int | None = None
    eval_batch_size: int = 1
    export_stock: str | None = None
    device: str | None = None
    dtype: str = "float32"
    tokenizer: str | None = None
    progress: bool = True
    revision: str | None = None
    overwrite: bool = False

    def _check_outputs(self) -> None:
        """``--save`` / ``--export-stock``: writable, empty unless ``overwrite``, apart from the inputs."""
        outputs = [("--save", self.save)]
        if self.export_stock is not None:
            outputs.append(("--export-stock", self.export_stock))
        inputs = [("MODEL_DIR", self.model_dir)]
        if self.tokenizer is not None:
            inputs.append(("--tokenizer", self.tokenizer))
        for option, path in outputs:
            for name, source in inputs:
                if Path(source).resolve() == Path(path).resolve():
                    raise PruneConfigError(
                        f"{option}: the output directory must differ from {name} (it would replace it)"
                    )
                if _inside(source, path):
                    raise PruneConfigError(
                        f"{option}: {path} contains {name} {source}, and writing {option} replaces the "
                        "whole directory; choose another one"
                    )
            check_output_dir(path, option, overwrite=self.overwrite, overwrite_hint="--overwrite")
        if self.export_stock is not None and (
            _inside(self.export_stock, self.save) or _inside(self.save, self.export_stock)
        ):
            raise PruneConfigError(
                f"--export-stock: {self.export_stock} and --save {self.save} must be separate directories "
                "(neither inside the other)"
            )

    def validate(self) -> tuple[PruneConfig, MambaLMConfig | Mamba2LMConfig, torch.device]:
        """Every check that needs no weights or text; raises before any work starts."""
        config = read_model_config(self.model_dir, self.revision)
        cfg = self.cfg.resolve()
        cfg.check_model(config)
        for name, value, low in (("nsamples", self.nsamples, 1), ("seqlen", self.seqlen, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PruneConfigError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.eval_seqlen is not None and self.eval_seqlen < 2:
            raise PruneConfigError(f"eval_seqlen: expected an integer >= 2, got {self.eval_seqlen!r}")
        if self.dtype not in DTYPES:
            raise PruneConfigError(f"dtype: expected one of {tuple(DTYPES)}, got {self.dtype!r}")
        device = resolve_device(self.device)
        self._check_outputs()
        if self.export_stock is not None and isinstance(config, Mamba2LMConfig):
            if config.hf_unsupported:
                raise PruneConfigError(
                    f"--export-stock: transformers' Mamba2ForCausalLM cannot express "
                    f"{', '.join(config.hf_unsupported)}"
                )
            if cfg.targets in ("heads", "headdim"):
                assert cfg.sparsity is not None
                g, h, p = config.ngroups, config.nheads, config.headdim
                inner = (
                    g * kept_count(h // g, cfg.sparsity) * p
                    if cfg.targets == "heads"
                    else h * kept_count(p, cfg.sparsity)
                )
                if inner % config.d_model:
                    raise PruneConfigError(
                        f"--export-stock: --targets {cfg.targets} at sparsity {cfg.sparsity:g} leaves "
                        f"{inner} SSM channels, not a multiple of d_model={config.d_model}, and "
                        "transformers' Mamba2Config needs an integer expand; the --save model (mamba_ssm "
                        "layout) runs it"
                    )
        elif self.export_stock is not None:
            if config.norm_type != "rms_norm":
                raise PruneConfigError(
                    "--export-stock: this model uses LayerNorm, which transformers' MambaForCausalLM "
                    "cannot express"
                )
            if cfg.pattern == "column":
                plan = cfg.check_model(config)
                assert cfg.sparsity is not None
                sizes = [
                    kept_count(config.layer_d_state(i), cfg.sparsity)
                    if "A_log" in plan[i]
                    else config.layer_d_state(i)
                    for i in range(config.n_layer)
                ]
                if len(set(sizes)) > 1:
                    raise PruneConfigError(
                        "--export-stock: a stock checkpoint has one state size, but column pruning would "
                        f"leave layers with state sizes {sizes}"
                    )
        if self.progress:
            progress_interval()  # a bad SPARSESSM_PROGRESS_INTERVAL fails here, not at the first bar
        check_text_source(self.calib, "--calib")
        if self.eval is not None:
            check_text_source(self.eval, "--eval")
        _check_tokenizer(tokenizer_dir(self.tokenizer, self.model_dir, self.revision), config)
        return cfg, config, device


def run_prune(job: PruneJob) -> dict[str, Any]:
    """Validate, load, (evaluate,) prune, (evaluate,) save, (export,) report. Returns the report."""
    t_start = time.perf_counter()
    cfg, _, device = job.validate()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    model = load_model(job.model_dir, dtype=DTYPES[job.dtype], revision=job.revision)
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok_dir = tokenizer_dir(job.tokenizer, job.model_dir, job.revision)
    tokenizer = load_tokenizer(tok_dir, model.config.vocab_size)
    calib_tokens = load_tokens(job.calib, tokenizer, "train")
    calib_ids = calibration_windows(calib_tokens, job.nsamples, job.seqlen, cfg.seed)
    eval_tokens = load_tokens(job.eval, tokenizer, "test") if job.eval is not None else None
    timings["data"] = time.perf_counter() - t0

    eval_seqlen = job.eval_seqlen or job.seqlen
    perplexity: dict[str, Any] | None = None

    def measure_perplexity(stage: str) -> None:
        assert eval_tokens is not None and perplexity is not None
        t0 = time.perf_counter()
        perplexity[stage] = evaluate_perplexity(
            model,
            eval_tokens,
            eval_seqlen,
            batch_size=job.eval_batch_size,
            device=device,
            max_windows=job.eval_max_windows,
            progress=job.progress,
        )
        timings[f"eval_{stage}"] = time.perf_counter() - t0
        logger.info("perplexity %s: %.4f", stage, perplexity[stage]["ppl"])

    if eval_tokens is not None:
        perplexity = {"before": None, "after": None}
        if job.eval_before:
            measure_perplexity("before")

    result = prune_model(model, calib_ids, cfg, device=device, progress=job.progress)

    if eval_tokens is not None:
        measure_perplexity("after")

    run = {
        "revision": job.revision,
        "calib": job.calib,
        "nsamples": job.nsamples,
        "seqlen": job.seqlen,
        "eval": job.eval,
        "eval_seqlen": eval_seqlen if job.eval is not None else None,
        "device": str(device),
        "dtype": job.dtype,
        "tokenizer": tokenizer.name,
        "calibration_tokens": int(calib_ids.numel()),
    }
    # Both outputs are staged completely (the report last) before either is renamed into place.
    with contextlib.ExitStack() as outputs:
        t0 = time.perf_counter()
        save = outputs.enter_context(_output_dir(job.save, "--save", job.overwrite))
        model.save_pretrained(save)
        _copy_tokenizer(tok_dir, save)
        timings["save"] = time.perf_counter() - t0
        if job.export_stock is not None:
            t0 = time.perf_counter()
            stock = outputs.enter_context(_output_dir(job.export_stock, "--export-stock", job.overwrite))
            model.export_for_stock_kernels(stock)
            _copy_tokenizer(tok_dir, stock)
            timings["export"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        report = build_report(
            result,
            model_dir=job.model_dir,
            output_dir=job.save,
            run=run,
            model_info=_model_info(model),
            timings=timings,
            perplexity=perplexity,
            export_stock=job.export_stock,
        )
        write_report(save / REPORT_NAME, report)
    return report


def _output_dir(path: str, option: str, overwrite: bool) -> contextlib.AbstractContextManager[Path]:
    """The staging directory of a model output, renamed onto ``path`` when the block completes."""
    return atomic_directory(
        path, overwrite=overwrite, key_files=(CONFIG_NAME,), option=option, overwrite_hint="--overwrite"
    )


# ---------------------------------------------------------------------- eval
@dataclass
class EvalJob:
    """Inputs of ``sparsessm eval``."""

    model_dir: str
    data: str = "wikitext2"
    seqlen: int = 2048
    batch_size: int = 1
    max_windows: int | None = None
    device: str | None = None
    dtype: str = "float32"
    tokenizer: str | None = None
    tasks: tuple[str, ...] = ()
    progress: bool = True
    revision: str | None = None

    def validate(self) -> torch.device:
        config = read_model_config(self.model_dir, self.revision)
        if isinstance(self.seqlen, bool) or not isinstance(self.seqlen, int) or self.seqlen < 2:
            raise PruneConfigError(f"seqlen: expected an integer >= 2, got {self.seqlen!r}")
        if self.batch_size < 1:
            raise PruneConfigError(f"batch_size: expected >= 1, got {self.batch_size!r}")
        if self.max_windows is not None and self.max_windows < 1:
            raise PruneConfigError(f"max_windows: expected >= 1, got {self.max_windows!r}")
        if self.dtype not in DTYPES:
            raise PruneConfigError(f"dtype: expected one of {tuple(DTYPES)}, got {self.dtype!r}")
        device = resolve_device(self.device)
        if self.progress:
            progress_interval()
        check_text_source(self.data, "--data")
        _check_tokenizer(tokenizer_dir(self.tokenizer, self.model_dir, self.revision), config)
        if self.tasks:
            from .evaluate import lm_eval_available

            if not lm_eval_available():
                raise PruneConfigError("tasks: zero-shot tasks need lm-eval (pip install lm-eval)")
        return device


def run_eval(job: EvalJob) -> dict[str, Any]:
    """Perplexity (and lm-eval tasks when asked) of a model directory."""
    device = job.validate()
    model = load_model(job.model_dir, dtype=DTYPES[job.dtype], revision=job.revision)
    tokenizer = load_tokenizer(
        tokenizer_dir(job.tokenizer, job.model_dir, job.revision), model.config.vocab_size
    )
    tokens = load_tokens(job.data, tokenizer, "test")
    out: dict[str, Any] = {
        "model_dir": str(job.model_dir),
        "revision": job.revision,
        "data": job.data,
        "tokenizer": tokenizer.name,
        "perplexity": evaluate_perplexity(
            model,
            tokens,
            job.seqlen,
            batch_size=job.batch_size,
            device=device,
            max_windows=job.max_windows,
            progress=job.progress,
        ),
    }
    if job.tasks:
        tasks = list(DEFAULT_TASKS) if job.tasks == ("default",) else list(job.tasks)
        out["zero_shot"] = zero_shot(model, tokenizer, tasks, device=device, max_length=job.seqlen)
    return out
