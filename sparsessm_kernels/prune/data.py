"""Calibration and evaluation text: sources, tokenizers and token windows.

* A **text source** is a local text file (any path that exists) or one of the dataset names
  ``wikitext2``, ``ptb``, ``c4``, loaded through Hugging Face ``datasets`` when it is installed
  and the hub is reachable (a :class:`DataError` says so clearly otherwise).
* The **tokenizer** comes from the model directory (transformers ``AutoTokenizer``). A model
  directory without tokenizer files falls back to UTF-8 bytes (ids 0..255) with a warning, when
  the vocabulary has at least 256 entries.
* **Calibration windows** are ``nsamples`` random windows of ``seqlen`` tokens, start positions
  drawn with a seeded generator (same seed, same windows). **Evaluation windows** are the
  non-overlapping windows ``[i * seqlen, (i + 1) * seqlen)``; the incomplete tail is dropped.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._warn import warn_user

__all__ = [
    "DATASET_NAMES",
    "TOKENIZER_FILES",
    "ByteTokenizer",
    "DataError",
    "Tokenizer",
    "calibration_windows",
    "check_text_source",
    "eval_windows",
    "has_tokenizer_files",
    "load_text",
    "load_tokenizer",
    "load_tokens",
]

logger = logging.getLogger(__name__)

DATASET_NAMES = ("wikitext2", "ptb", "c4")
"""Dataset names understood besides local file paths (need Hugging Face ``datasets``)."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
"""Files that make up a Hugging Face tokenizer (copied next to a pruned model)."""


class DataError(ValueError):
    """A text source or tokenizer cannot be used (missing file, unreachable dataset, ...)."""


# ---------------------------------------------------------------------- text sources
def check_text_source(source: str, what: str = "--calib") -> None:
    """Cheap check, before any work: ``source`` is an existing file or a known dataset name.

    Dataset names additionally need the ``datasets`` package to be importable (reaching the hub
    is only tried when the text is loaded).
    """
    if not isinstance(source, str) or not source:
        raise DataError(f"{what}: expected a text file path or one of {DATASET_NAMES}, got {source!r}")
    path = Path(source)
    if path.exists():
        if not path.is_file():
            raise DataError(f"{what}: {source} is not a file (expected a UTF-8 text file)")
        return
    if source in DATASET_NAMES:
        try:
            import datasets  # noqa: F401
        except ImportError as exc:
            raise DataError(
                f"{what}: dataset {source!r} needs the Hugging Face 'datasets' package "
                "(pip install datasets) and access to the hub; or pass a local text file path instead"
            ) from exc
        return
    raise DataError(
        f"{what}: {source!r} is neither an existing text file nor one of the dataset names {DATASET_NAMES}"
    )


def _hf_dataset_text(name: str, split: str) -> str:
    """Text of a hub dataset, joined the way SparseGPT / SparseSSM evaluate them."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise DataError(
            f"dataset {name!r} needs the Hugging Face 'datasets' package (pip install datasets) and access "
            "to the hub; or pass a local text file path instead"
        ) from exc
    try:
        if name == "wikitext2":
            ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if split == "train" else "test")
            return "\n\n".join(ds["text"])
        if name == "ptb":
            ds = load_dataset("ptb_text_only", "penn_treebank", split="train" if split == "train" else "test")
            return " ".join(ds["sentence"])
        if name == "c4":
            if split == "train":
                files = {"train": "en/c4-train.00000-of-01024.json.gz"}
                ds = load_dataset("allenai/c4", data_files=files, split="train")
                docs = ds.select(range(min(len(ds), 5000)))["text"]
            else:
                files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
                ds = load_dataset("allenai/c4", data_files=files, split="validation")
                docs = ds.select(range(min(len(ds), 1100)))["text"]
            return "\n\n".join(docs)
    except DataError:
        raise
    except Exception as exc:  # network errors, missing configs, ... come in many types
        raise DataError(
            f"dataset {name!r} ({split} split) could not be loaded through Hugging Face datasets "
            f"({type(exc).__name__}: {exc}); check network access to the hub or pass a local text file path"
        ) from exc
    raise DataError(f"unknown dataset {name!r}; expected a file path or one of {DATASET_NAMES}")


def load_text(source: str, split: str = "train") -> str:
    """The text of ``source``: a local UTF-8 file, or a dataset name's ``split`` (train / test).

    For dataset names, ``split="train"`` is the calibration split and anything else the
    evaluation split (wikitext2 / ptb ``test``, c4 ``validation``: the first 1100 documents, c4
    ``train``: the first 5000 documents of the first shard).
    """
    path = Path(source)
    if path.exists():
        if not path.is_file():
            raise DataError(f"{source} is not a file (expected a UTF-8 text file)")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not UTF-8 text ({exc})") from exc
    if source in DATASET_NAMES:
        return _hf_dataset_text(source, split)
    raise DataError(
        f"{source!r} is neither an existing text file nor one of the dataset names {DATASET_NAMES}"
    )


# ---------------------------------------------------------------------- tokenizers
@dataclass
class Tokenizer:
    """A text -> token id function with a name for reports.

    Attributes:
        name: ``"bytes"`` or ``"hf:<class name>"``.
        vocab_size: number of distinct ids the tokenizer may produce.
        hf: the underlying transformers tokenizer (``None`` for bytes).
    """

    name: str
    vocab_size: int
    hf: Any = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        if self.hf is None:
            return list(text.encode("utf-8"))
        with warnings.catch_warnings():  # "sequence longer than model_max_length" is irrelevant here
            warnings.simplefilter("ignore")
            return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (bytes: invalid UTF-8 is replaced)."""
        if self.hf is None:
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        return self.hf.decode(ids)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as token ids 0..255."""

    def __init__(self) -> None:
        super().__init__(name="bytes", vocab_size=256, hf=None)


def has_tokenizer_files(directory: str | os.PathLike) -> bool:
    """The directory holds Hugging Face tokenizer files."""
    d = Path(directory)
    return any((d / f).is_file() for f in TOKENIZER_FILES if f not in ("special_tokens_map.json",))


def load_tokenizer(model_dir: str | os.PathLike, vocab_size: int) -> Tokenizer:
    """The tokenizer of ``model_dir``, or UTF-8 bytes when it has none.

    Args:
        model_dir: directory with tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
            ...), usually the model directory.
        vocab_size: the model's vocabulary (embedding rows); every id must be below it.

    Raises:
        DataError: tokenizer files exist but transformers is missing or cannot read them; no
            tokenizer and ``vocab_size < 256``; a tokenizer larger than the model's vocabulary.
    """
    directory = Path(model_dir)
    if has_tokenizer_files(directory):
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise DataError(
                f"{directory} has tokenizer files but transformers is not installed "
                "(pip install transformers)"
            ) from exc
        try:
            hf = AutoTokenizer.from_pretrained(str(directory))
        except Exception as exc:
            raise DataError(
                f"{directory}: the tokenizer files could not be loaded by transformers.AutoTokenizer "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        size = len(hf)
        if size > vocab_size:
            raise DataError(
                f"{directory}: the tokenizer has {size} tokens but the model's vocabulary has "
                f"only {vocab_size}"
            )
        return Tokenizer(name=f"hf:{type(hf).__name__}", vocab_size=size, hf=hf)
    if vocab_size < 256:
        raise DataError(
            f"{directory} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) and the model's "
            f"vocabulary ({vocab_size}) is too small for the UTF-8 byte fallback (needs >= 256); "
            "pass --tokenizer DIR"
        )
    warn_user(
        f"{directory} has no tokenizer files; tokenizing text as UTF-8 bytes (ids 0..255). "
        "Perplexities are then per byte, not comparable with a real tokenizer's"
    )
    return ByteTokenizer()


def load_tokens(source: str, tokenizer: Tokenizer, split: str = "train") -> torch.Tensor:
    """``load_text`` + ``encode``: a 1-D int64 tensor of token ids."""
    text = load_text(source, split)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    logger.info(
        "%s (%s): %d characters, %d tokens (%s)", source, split, len(text), ids.numel(), tokenizer.name
    )
    return ids


# ---------------------------------------------------------------------- windows
def calibration_windows(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens, ``(nsamples, seqlen)`` int64.

    Start positions are uniform in ``[0, len - seqlen]``, drawn from ``torch.Generator`` seeded
    with ``seed`` (the same seed gives the same windows on any machine). Windows may overlap.
    """
    if tokens.dim() != 1:
        raise DataError(f"tokens: expected a 1-D tensor, got shape {tuple(tokens.shape)}")
    if nsamples < 1 or seqlen < 1:
        raise DataError(f"nsamples and seqlen must be >= 1, got {nsamples} and {seqlen}")
    n = tokens.numel()
    if n < seqlen:
        raise DataError(f"the calibration text has {n} tokens, fewer than seqlen={seqlen}")
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, n - seqlen + 1, (nsamples,), generator=g)
    offsets = torch.arange(seqlen)
    return tokens[starts[:, None] + offsets[None, :]].clone()


def eval_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``(w, seqlen)``: ``tokens[i*seqlen:(i+1)*seqlen]``, tail dropped."""
    if tokens.dim() != 1:
        raise DataError(f"tokens: expected a 1-D tensor, got shape {tuple(tokens.shape)}")
    if seqlen < 2:
        raise DataError(f"seqlen: expected >= 2 for perplexity, got {seqlen}")
    count = tokens.numel() // seqlen
    if max_windows is not None:
        count = min(count, int(max_windows))
    if count < 1:
        raise DataError(f"the evaluation text has {tokens.numel()} tokens, fewer than seqlen={seqlen}")
    return tokens[: count * seqlen].reshape(count, seqlen).clone()
