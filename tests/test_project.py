"""Project-level checks: one-way layers, the README example runs, documented env variables."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sparsessm_kernels"

# layer -> package-internal modules it may import
_BASE = {"_io", "_progress", "_version", "_warn"}  # package-wide helpers every layer may use
ALLOWED = {
    "ops": {"ops", *_BASE},
    "sparsity": {"ops", "sparsity", *_BASE},
    "models": {"ops", "sparsity", "models", *_BASE},
    "prune": {"ops", "sparsity", "models", "prune", *_BASE},
    "nn": {"ops", "nn", *_BASE},  # torch modules (2:4 linear layers) beside sparsity
    "compat": {"ops", "compat", "_compat_ssd", *_BASE},  # mamba_ssm's function names on the ops
    "integrations": {"ops", "sparsity", "models", "nn", "integrations", *_BASE},
    "demo": {"ops", "sparsity", "models", "prune", "demo", "_threads", "_timing", *_BASE},
}
# layers that are modules rather than packages
LAYER_FILES = {"compat": ("compat.py", "_compat_ssd.py")}


def _layer_files(layer: str) -> list[Path]:
    if layer in LAYER_FILES:
        return [PACKAGE / name for name in LAYER_FILES[layer]]
    return sorted((PACKAGE / layer).rglob("*.py"))


def _internal_imports(path: Path) -> set[str]:
    """Top-level package modules ``path`` imports (relative imports resolved from its own package,
    so ``from ..checks import x`` in ``ops/ssd/`` is ``ops``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["sparsessm_kernels", *path.relative_to(PACKAGE).parent.parts]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("sparsessm_kernels."):
                found.add(node.module.split(".")[1])
            elif node.level >= 1:
                base = package[: len(package) - (node.level - 1)]
                names = [node.module] if node.module else [alias.name for alias in node.names]
                for name in names:
                    resolved = [*base, *name.split(".")]
                    if len(resolved) > 1:
                        found.add(resolved[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sparsessm_kernels."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_downwards(layer: str) -> None:
    for path in _layer_files(layer):
        bad = _internal_imports(path) - ALLOWED[layer]
        assert not bad, (
            f"{path.relative_to(ROOT)} imports {sorted(bad)}, outside what layer {layer!r} may use"
        )


def test_readme_api_example_runs() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    namespace: dict = {}
    exec(
        compile(example.replace("l = 1, 1536, 16, 2048", "l = 1, 64, 16, 40"), "README.md", "exec"), namespace
    )
    assert namespace["out"].shape == namespace["u"].shape
    assert namespace["state"].shape[-1] == 8


def test_every_sparsessm_variable_read_is_documented() -> None:
    documented = set(re.findall(r"`(SPARSESSM_[A-Z_]+)`", (ROOT / "docs" / "environment.md").read_text()))
    used: set[str] = set()
    for path in [*PACKAGE.rglob("*.py"), ROOT / "setup.py"]:
        used |= set(re.findall(r"\"(SPARSESSM_[A-Z_]+)\"", path.read_text(encoding="utf-8")))
    assert used <= documented, f"undocumented: {sorted(used - documented)}"
