"""``sparsessm demo``: prune the embedded tiny Mamba, measure its quality and the sparse scan.

The package ships a small byte-level Mamba-1 LM (``tiny_mamba/``, trained on the Python standard
library's own sources by ``benchmarks/quality/train_tiny.py``). :func:`run_demo` prunes its SSMs
with SparseSSM and magnitude, evaluates held-out perplexity, checks and times the sparse scan and
writes ``demo_report.json`` (see ``docs/demo.md``).
"""

from .run import DEMO_CASES, MODEL_DIR, DemoOptions, format_demo_table, heldout_tokens, run_demo

__all__ = ["DEMO_CASES", "MODEL_DIR", "DemoOptions", "format_demo_table", "heldout_tokens", "run_demo"]
