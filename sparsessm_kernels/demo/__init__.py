"""``sparsessm demo``: prune the embedded tiny Mamba, measure its quality and the sparse scan.

The package ships a small byte-level Mamba-1 LM (``tiny_mamba/``) and Mamba-2 LM (``tiny_mamba2/``),
trained on the Python standard library's own sources by ``benchmarks/quality/train_tiny.py``.
:func:`run_demo` prunes the Mamba-1's SSMs with SparseSSM and magnitude (or, with
``DemoOptions(arch="mamba2")``, gives the Mamba-2 per-group state masks), evaluates held-out
perplexity, checks and times the sparse scan (Mamba-2: the compact decode) and writes
``demo_report.json`` (see ``docs/demo.md``).
"""

from .run import DEMO_CASES, MODEL_DIR, MODEL_DIRS, DemoOptions, format_demo_table, heldout_tokens, run_demo

__all__ = [
    "DEMO_CASES",
    "MODEL_DIR",
    "MODEL_DIRS",
    "DemoOptions",
    "format_demo_table",
    "heldout_tokens",
    "run_demo",
]
