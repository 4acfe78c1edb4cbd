"""Pruning front-end: SparseSSM for ``A_log``, SparseGPT / Wanda / magnitude / SNIP for projections;
on Mamba-2 also per-group state pruning and head / head-channel removal.

Layering: imports :mod:`sparsessm_kernels.ops`, :mod:`~sparsessm_kernels.sparsity`,
:mod:`~sparsessm_kernels.models` and ``_io`` only; the CLI sits on top.

* :mod:`.config` -- :class:`PruneConfig` (settings, validation, module selection);
* :mod:`.data` -- text sources, tokenizers, calibration / evaluation windows;
* :mod:`.capture` -- :func:`prune_model`, the sequential layer-by-layer pipeline;
* :mod:`.capture_mamba2` -- the same pipeline for Mamba-2 (:func:`prune_model` dispatches to it);
* :mod:`.ssm` -- ``A_log`` scores, masks, physical state removal;
* :mod:`.ssd` -- Mamba-2 per-head ``A_log`` and per-group state saliencies and masks;
* :mod:`.heads` -- Mamba-2 head / head-channel scores (FLAP) and physical removal;
* :mod:`.projections` -- SparseGPT, Wanda, magnitude, SNIP, random; sensitivity-aware allocation;
* :mod:`.snip` -- the SNIP saliency ``|w * dL/dw|`` of the calibration loss;
* :mod:`.evaluate` -- perplexity, lm-eval zero-shot;
* :mod:`.report` -- ``prune_report.json``;
* :mod:`.run` -- :class:`PruneJob` / :func:`run_prune`, :class:`EvalJob` / :func:`run_eval`
  (what the CLI runs);
* :mod:`.convert` -- :class:`ConvertJob` / :func:`run_convert` (``sparsessm convert``).

Methods, choices and departures from the paper: ``docs/pruning.md``.
"""

from .capture import ModuleRecord, PruneResult, mixer_intermediates, prune_model
from .capture_mamba2 import mamba2_intermediates, prune_mamba2_model
from .config import METHODS, TARGETS, PruneConfig, PruneConfigError, select_modules
from .convert import ConvertJob, run_convert
from .data import (
    DATASET_NAMES,
    ByteTokenizer,
    DataError,
    Tokenizer,
    calibration_windows,
    eval_windows,
    load_text,
    load_tokenizer,
    load_tokens,
)
from .evaluate import DEFAULT_TASKS, evaluate_perplexity, score_continuations, zero_shot
from .heads import remove_channels
from .projections import allocate_sparsity, sparsegpt_prune
from .report import REPORT_NAME, build_report, format_table, write_report
from .run import EvalJob, PruneJob, run_eval, run_prune
from .snip import snip_saliency
from .ssd import ssd_statistics
from .ssm import SSMStatistics, remove_states, ssm_masks, time_weights, vote_scores

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_TASKS",
    "METHODS",
    "REPORT_NAME",
    "TARGETS",
    "ByteTokenizer",
    "ConvertJob",
    "DataError",
    "EvalJob",
    "ModuleRecord",
    "PruneConfig",
    "PruneConfigError",
    "PruneJob",
    "PruneResult",
    "SSMStatistics",
    "Tokenizer",
    "allocate_sparsity",
    "build_report",
    "calibration_windows",
    "eval_windows",
    "evaluate_perplexity",
    "format_table",
    "load_text",
    "load_tokenizer",
    "load_tokens",
    "mamba2_intermediates",
    "mixer_intermediates",
    "prune_mamba2_model",
    "prune_model",
    "remove_channels",
    "remove_states",
    "run_convert",
    "run_eval",
    "run_prune",
    "score_continuations",
    "select_modules",
    "snip_saliency",
    "sparsegpt_prune",
    "ssd_statistics",
    "ssm_masks",
    "time_weights",
    "vote_scores",
    "write_report",
    "zero_shot",
]
