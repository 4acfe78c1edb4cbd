"""Evaluation: perplexity on non-overlapping windows, zero-shot tasks through lm-eval.

Perplexity: the token stream is cut into non-overlapping windows of ``seqlen`` tokens (the
incomplete tail is dropped); each window is scored from an empty state, every token but the
first of a window is predicted, and ``ppl = exp(sum NLL / tokens)`` with the NLL summed in
float64. This is SparseGPT's protocol (and one semantics for every model: the research code of
SparseSSM mixed two).

Zero-shot: :func:`zero_shot` runs lm-eval tasks (PIQA, ARC-e/c, WinoGrande, OpenBookQA by
default, as the paper) when ``lm-eval`` is installed. Requests are batched with **right**
padding: a recurrent model's output at step ``t`` depends on the tokens up to ``t`` only, so
padding after a sequence changes none of its scored positions, whereas left padding would run
the pad tokens through the state first (:func:`score_continuations`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from .._progress import progress as progress_bar
from ..models import Mamba2LM, MambaLM
from .data import Tokenizer, eval_windows

__all__ = ["DEFAULT_TASKS", "evaluate_perplexity", "lm_eval_available", "score_continuations", "zero_shot"]

DEFAULT_TASKS = ("piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa")


@torch.no_grad()
def evaluate_perplexity(
    model: MambaLM | Mamba2LM,
    tokens: torch.Tensor,
    seqlen: int,
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    max_windows: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Perplexity of ``model`` on ``tokens``.

    Args:
        tokens: a 1-D token stream (cut into non-overlapping ``seqlen`` windows) or ready windows
            ``(w, seqlen)``.
        seqlen: window length (``>= 2``).
        batch_size: windows per forward.
        device: where to run (the model is moved there and back).
        max_windows: evaluate only the first windows.

    Returns:
        ``{"ppl", "mean_nll", "tokens", "windows", "seqlen", "seconds"}``; ``tokens`` counts the
        predicted tokens, ``windows * (seqlen - 1)``.
    """
    windows = eval_windows(tokens, seqlen, max_windows) if tokens.dim() == 1 else tokens
    if max_windows is not None and tokens.dim() == 2:
        windows = windows[:max_windows]
    home = model.device
    device = torch.device(device) if device is not None else home
    model.to(device)
    model.eval()
    t0 = time.perf_counter()
    nll = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        starts = range(0, windows.shape[0], batch_size)
        for i in progress_bar(starts, desc="perplexity", enabled=progress):
            ids = windows[i : i + batch_size].to(device)
            logits = model(ids)
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum"
            )
            nll += loss.double().cpu()
            count += ids[:, 1:].numel()
    finally:
        model.to(home)
    mean = float(nll) / count
    return {
        "ppl": math.exp(mean),
        "mean_nll": mean,
        "tokens": count,
        "windows": int(windows.shape[0]),
        "seqlen": int(windows.shape[1]),
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def score_continuations(
    model: MambaLM | Mamba2LM,
    requests: list[tuple[list[int], list[int]]],
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    max_length: int | None = None,
) -> list[tuple[float, bool]]:
    """Log-likelihood of each continuation given its context, batched with right padding.

    Args:
        requests: ``(context ids, continuation ids)`` pairs; the context must be non-empty.
        max_length: keep only the last ``max_length`` tokens of ``context + continuation``.

    Returns:
        ``(sum log p(continuation | context), continuation is the greedy one)`` per request, in order.
    """
    device = torch.device(device) if device is not None else model.device
    seqs = []
    for ctx, cont in requests:
        if not ctx:
            raise ValueError("score_continuations: the context must hold at least one token")
        if not cont:
            raise ValueError("score_continuations: empty continuation")
        full = list(ctx) + list(cont)
        if max_length is not None and len(full) > max_length:
            full = full[-max_length:]
        seqs.append((full, min(len(cont), len(full) - 1)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = max(len(seqs[i][0]) for i in idx)
        batch = torch.zeros(len(idx), longest, dtype=torch.long)
        for row, i in enumerate(idx):
            full = seqs[i][0]
            batch[row, : len(full)] = torch.tensor(full)  # right padding (id 0 after the sequence)
        logp = torch.log_softmax(model(batch.to(device)).float(), dim=-1).cpu()
        for row, i in enumerate(idx):
            full, n_cont = seqs[i]
            L = len(full)
            target = torch.tensor(full[L - n_cont :])
            pred = logp[row, L - n_cont - 1 : L - 1]  # position t predicts token t + 1
            ll = float(pred.gather(-1, target[:, None]).sum())
            greedy = bool((pred.argmax(-1) == target).all())
            out[i] = (ll, greedy)
    return out


def lm_eval_available() -> bool:
    """``lm-eval`` is importable."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def zero_shot(
    model: MambaLM | Mamba2LM,
    tokenizer: Tokenizer,
    tasks: list[str] | tuple[str, ...] = DEFAULT_TASKS,
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    max_length: int = 2048,
    limit: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Zero-shot accuracy on lm-eval tasks (``{task: metrics}``); needs ``lm-eval`` installed.

    Raises:
        RuntimeError: lm-eval is not installed.
    """
    try:
        import lm_eval
        from lm_eval.api.model import LM
    except ImportError as exc:
        raise RuntimeError("zero-shot evaluation needs lm-eval (pip install lm-eval)") from exc

    prefix_id = 10  # a newline for byte models
    if tokenizer.hf is not None:
        for attr in ("bos_token_id", "eos_token_id"):
            tid = getattr(tokenizer.hf, attr, None)
            if tid is not None:
                prefix_id = int(tid)
                break
    model.to(device or model.device)

    class _MambaLMAdapter(LM):
        def _pairs(self, requests) -> list[tuple[list[int], list[int]]]:
            pairs = []
            for req in requests:
                context, continuation = req.args[0], req.args[1]
                n_space = len(context) - len(context.rstrip())
                if n_space:  # a trailing space belongs to the continuation's first token
                    continuation = context[-n_space:] + continuation
                    context = context[:-n_space]
                whole = tokenizer.encode(context + continuation)
                ctx = tokenizer.encode(context)
                cont = whole[len(ctx) :]
                pairs.append((ctx or [prefix_id], cont))
            return pairs

        def loglikelihood(self, requests):
            return score_continuations(
                model, self._pairs(requests), batch_size=batch_size, device=device, max_length=max_length
            )

        def loglikelihood_rolling(self, requests):
            results = []
            for req in requests:
                ids = tokenizer.encode(req.args[0])
                total = 0.0
                for s in range(0, len(ids), max_length - 1):
                    chunk = ids[s : s + max_length - 1]
                    ctx = [prefix_id] if s == 0 else ids[max(0, s - 1) : s]
                    total += score_continuations(model, [(ctx, chunk)], batch_size=1, device=device)[0][0]
                results.append(total)
            return results

        def generate_until(self, requests):
            raise NotImplementedError("generation tasks are not supported by sparsessm eval")

    out = lm_eval.simple_evaluate(model=_MambaLMAdapter(), tasks=list(tasks), num_fewshot=0, limit=limit)
    return {task: dict(metrics) for task, metrics in out["results"].items()}
