"""Hugging Face Hub repository ids wherever a local directory is accepted.

A name is looked up on the Hub when it is a ``str`` of the form ``ORG/NAME`` (e.g.
``"state-spaces/mamba-130m-hf"``) that is **not** an existing local path; an existing local path
always wins, and ``os.PathLike`` objects are always local. The lookup is
``huggingface_hub.snapshot_download``, so its cache (``HF_HUB_CACHE`` / ``HF_HOME``), offline mode
(``HF_HUB_OFFLINE=1``: the cache only), the token (``HF_TOKEN`` or ``hf auth login``) and
``revision`` (branch, tag or commit hash) behave as everywhere else in the Hugging Face stack.
``huggingface_hub`` is imported only when a hub id is actually resolved; it comes with the
``[hf]`` extra (transformers).

This is the one resolver of the package: checkpoints (:func:`~.checkpoint.resolve_checkpoint_dir`),
tokenizers and the integrations' masks files all go through :func:`resolve_local_or_hub`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "HF_EXTRA_HINT",
    "HubLookupError",
    "is_hub_id",
    "needs_hub_lookup",
    "resolve_local_or_hub",
    "snapshot_commit",
]

HF_EXTRA_HINT = "pip install 'sparsessm-kernels[hf]'"
"""How to get ``huggingface_hub`` (it comes with transformers)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class HubLookupError(FileNotFoundError):
    """A name is not a local path, and resolving it as a Hugging Face Hub repository id failed."""


def is_hub_id(name: object) -> bool:
    """``name`` is a ``str`` spelled like a Hub repository id, ``ORG/NAME``."""
    return (
        isinstance(name, str)
        and _HUB_ID.match(name) is not None
        and ".." not in name
        and "--" not in name
        and not name.endswith((".", "-"))
    )


def needs_hub_lookup(name: str | os.PathLike) -> bool:
    """``name`` would be resolved on the Hub: a hub-id-like ``str`` that is no existing local path."""
    return is_hub_id(name) and not Path(name).exists()


def snapshot_commit(directory: Path) -> str | None:
    """The commit hash of a Hub cache snapshot directory (``.../snapshots/<commit>``), else ``None``."""
    if directory.parent.name == "snapshots" and _COMMIT.match(directory.name):
        return directory.name
    return None


def resolve_local_or_hub(
    name: str | os.PathLike,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """A local path as given, or the local snapshot directory of a Hub repository.

    Args:
        name: a local path, or a Hub repository id ``ORG/NAME`` (only when no such local path
            exists; see the module docstring).
        revision: branch, tag or commit hash of the Hub repository (default: ``main``). Only for
            Hub ids: with an existing local path it is an error.
        allow_patterns: ``fnmatch`` patterns of the files to download (default: all); files
            already in the cache are not downloaded again.

    Returns:
        ``Path(name)`` when ``name`` is not looked up on the Hub (whether or not it exists: the
        caller reports a missing local path in its own words), else the snapshot directory.

    Raises:
        ValueError: ``revision`` with an existing local path.
        HubLookupError: (a ``FileNotFoundError``) ``huggingface_hub`` is not installed, or the
            lookup failed (unknown repository or revision, not cached in offline mode, no access,
            no network); the message starts with ``"NAME: not a local directory; "``.
    """
    if not needs_hub_lookup(name):
        path = Path(name)
        if revision is not None and path.exists():
            raise ValueError(
                f"revision: {revision!r} applies to Hugging Face Hub ids, but {name} is a local path"
            )
        return path
    repo_id = str(name)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise HubLookupError(
            f"{repo_id}: not a local directory; looking it up as a Hugging Face Hub id needs "
            f"huggingface_hub, which is not installed ({HF_EXTRA_HINT})"
        ) from exc
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
        )
    except Exception as exc:  # the hub raises many types: validation, HTTP, offline, cache misses
        at = f" (revision {revision!r})" if revision is not None else ""
        raise HubLookupError(
            f"{repo_id}: not a local directory; the hub lookup{at} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return Path(folder)
