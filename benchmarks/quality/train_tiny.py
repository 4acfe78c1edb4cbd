"""Train the tiny byte-level LMs embedded in ``sparsessm_kernels/demo/``: the Mamba-1
(``--arch mamba``, ``tiny_mamba/``) and the Mamba-2 (``--arch mamba2``, ``tiny_mamba2/``).

Run from the repository root (CPU, a few minutes each)::

    python benchmarks/quality/train_tiny.py --overwrite                  # replaces tiny_mamba/
    python benchmarks/quality/train_tiny.py --arch mamba2 --overwrite    # replaces tiny_mamba2/
    python benchmarks/quality/train_tiny.py --steps 50 --out /tmp/tiny   # quick try

Data: the Python standard library's own top-level source files (``*.py`` directly under
``sysconfig.get_paths()["stdlib"]``, sorted by name). Every ``HELDOUT_EVERY``-th file (index 0,
10, 20, ...) is held out for evaluation, the rest is training text; both lists are recorded in
``training_config.json``. Tokens are UTF-8 bytes (vocab 256). Both architectures share the data,
the optimizer (AdamW, warmup + cosine), the loop, the logging and the provenance record; an
:class:`Arch` says how to build the model and how to run a differentiable forward.

* Mamba-1: :class:`MambaLM`'s forward runs the scan through forward-only custom ops, so training
  uses :func:`train_logits`, a plain differentiable PyTorch implementation of the same Mamba-1 math
  on the *same* parameters (a sequential scan over time).
* Mamba-2: :class:`Mamba2LM`'s forward is differentiable (the SSD scan's torch backend is made of
  autograd ops), so training runs the model itself.

After training the checkpoint is saved with ``save_pretrained``, reloaded with ``from_pretrained``,
and its logits are checked against the training forward (the run fails when they differ).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as common

from sparsessm_kernels._io import OutputPathError, atomic_directory, check_output_dir, write_text_atomic
from sparsessm_kernels.models import Mamba2LM, Mamba2LMConfig, MambaLM, MambaLMConfig

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "sparsessm_kernels" / "demo"
HELDOUT_EVERY = 10
SCRIPT = "benchmarks/quality/train_tiny.py"


# ---------------------------------------------------------------------- data
def stdlib_files() -> tuple[Path, list[Path]]:
    """The stdlib directory and its top-level ``*.py`` files, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return root, sorted(root.glob("*.py"), key=lambda p: p.name)


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """``(train, heldout)``: every ``HELDOUT_EVERY``-th file (index 0, 10, ...) is held out."""
    heldout = [f for i, f in enumerate(files) if i % HELDOUT_EVERY == 0]
    train = [f for i, f in enumerate(files) if i % HELDOUT_EVERY != 0]
    return train, heldout


def file_bytes(files: list[Path]) -> torch.Tensor:
    """Concatenated bytes of ``files`` (UTF-8 source; undecodable bytes kept as they are)."""
    data = b"".join(f.read_bytes() for f in files)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


# ---------------------------------------------------------------------- differentiable forwards
def _mixer(m, hidden: torch.Tensor) -> torch.Tensor:
    """The Mamba-1 mixer math of :class:`MambaMixer` with a differentiable sequential scan."""
    seqlen = hidden.shape[1]
    xz = m.in_proj(hidden).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)  # (b, d, l)
    x = F.conv1d(x, m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=m.d_inner)
    x = F.silu(x[:, :, :seqlen])
    x_dbl = m.x_proj(x.transpose(1, 2))
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)  # (b, l, *)
    delta = F.softplus(m.dt_proj(dt)).transpose(1, 2)  # (b, d, l), bias inside the softplus
    A = -torch.exp(m.A_log.float())  # (d, n)
    dA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, l, n)
    dBx = (delta * x).unsqueeze(-1) * B.unsqueeze(1)  # (b, d, l, n); B (b, 1, l, n)
    h = torch.zeros(x.shape[0], m.d_inner, m.d_state, dtype=x.dtype, device=x.device)
    hs = []
    # unbind (not indexing): its backward stacks the slices instead of scattering into zeros per step
    for dA_t, dBx_t in zip(dA.unbind(2), dBx.unbind(2)):
        h = dA_t * h + dBx_t
        hs.append(h)
    states = torch.stack(hs, dim=2)  # (b, d, l, n)
    y = (states * C.unsqueeze(1)).sum(-1) + m.D[None, :, None] * x
    y = y * F.silu(z)
    return m.out_proj(y.transpose(1, 2))


def train_logits(model: MambaLM, ids: torch.Tensor) -> torch.Tensor:
    """Float32 logits ``(b, l, vocab)`` of a Mamba-1 ``model`` with autograd (float32 weights only)."""
    hidden = model.backbone.embeddings(ids)
    for blk in model.backbone.layers:
        hidden = hidden.float() + _mixer(blk.mixer, blk.norm(hidden))
    return model.lm_head(model.backbone.norm_f(hidden)).float()


def model_logits(model: Mamba2LM, ids: torch.Tensor) -> torch.Tensor:
    """Float32 logits ``(b, l, vocab)`` of a Mamba-2 ``model``: its own (differentiable) forward."""
    return model(ids)


# ---------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Arch:
    """What differs between the trained architectures; everything else is shared.

    Attributes:
        name: the ``--arch`` value. out: the embedded checkpoint directory (default ``--out``).
        d_state: default ``--d-state``. options: the ``--arch``-specific flags recorded in the
            reproduce line (attribute names of the parsed arguments).
        build: parsed arguments -> the model config. model: the LM class.
        forward: differentiable float32 logits ``(b, l, 256)`` of ``(model, ids (b, l))``.
    """

    name: str
    out: Path
    d_state: int
    options: tuple[str, ...]
    build: Callable[[argparse.Namespace], Any]
    model: type
    forward: Callable[[Any, torch.Tensor], torch.Tensor]


MAMBA2_DEFAULTS = {"headdim": 32, "ngroups": 2}
"""Defaults of the Mamba-2-only flags."""

ARCHS = {
    "mamba": Arch(
        name="mamba",
        out=DEMO_DIR / "tiny_mamba",
        d_state=16,
        options=("d_state",),
        build=lambda a: MambaLMConfig(
            vocab_size=256, d_model=a.d_model, n_layer=a.n_layer, d_state=a.d_state
        ),
        model=MambaLM,
        forward=train_logits,
    ),
    "mamba2": Arch(
        name="mamba2",
        out=DEMO_DIR / "tiny_mamba2",
        d_state=32,
        options=("d_state", "headdim", "ngroups"),
        build=lambda a: Mamba2LMConfig(
            vocab_size=256,
            d_model=a.d_model,
            n_layer=a.n_layer,
            d_state=a.d_state,
            headdim=a.headdim,
            ngroups=a.ngroups,
        ),
        model=Mamba2LM,
        forward=model_logits,
    ),
}


# ---------------------------------------------------------------------- training
@torch.no_grad()
def heldout_loss(model: torch.nn.Module, tokens: torch.Tensor, seqlen: int, windows: int) -> float:
    count = min(windows, tokens.numel() // seqlen)
    ids = tokens[: count * seqlen].reshape(count, seqlen)
    logits = model(ids)
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="mamba", help="the architecture to train")
    p.add_argument(
        "--out", type=Path, default=None, help="checkpoint directory (default: the embedded one of --arch)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it exists and is not empty (the embedded checkpoint does)",
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch sampling seed")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-state", type=int, default=None, help="default: 16 (mamba), 32 (mamba2)")
    p.add_argument("--headdim", type=int, default=None, help="mamba2 only: channels per head (default 32)")
    p.add_argument(
        "--ngroups",
        type=int,
        default=None,
        help="mamba2 only: groups of B / C, state masks act per group (default 2)",
    )
    p.add_argument("--seqlen", type=int, default=128, help="training window (bytes)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--max-minutes", type=float, default=8.0, help="stop early after this much wall time")
    p.add_argument(
        "--stop-step",
        type=int,
        default=None,
        help="stop after this many steps (the lr schedule still spans --steps); reproduces a run that "
        "--max-minutes cut short",
    )
    p.add_argument("--threads", type=int, default=None, help=common.THREADS_HELP)
    p.add_argument("--log-every", type=int, default=10)
    return p


def reproduce_command(args: argparse.Namespace, arch: Arch, steps_done: int, threads: int) -> str:
    """The command line that retrains exactly this checkpoint into the embedded directory."""
    specific = " ".join(f"--{name.replace('_', '-')} {getattr(args, name)}" for name in arch.options)
    return (
        f"python {SCRIPT} --arch {arch.name} --seed {args.seed} --d-model {args.d_model} "
        f"--n-layer {args.n_layer} {specific} --seqlen {args.seqlen} --batch-size {args.batch_size} "
        f"--steps {args.steps} --lr {args.lr} --weight-decay {args.weight_decay} --warmup {args.warmup} "
        f"--stop-step {steps_done} --max-minutes 1000 --overwrite --threads {threads}"
    )


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    arch = ARCHS[args.arch]
    if args.d_state is None:
        args.d_state = arch.d_state
    for name, default in MAMBA2_DEFAULTS.items():
        if arch.name == "mamba2" and getattr(args, name) is None:
            setattr(args, name, default)
        elif arch.name != "mamba2" and getattr(args, name) is not None:
            p.error(f"--{name}: a Mamba-2 size; expected no value with --arch {arch.name}")
    if args.out is None:
        args.out = arch.out
    try:
        check_output_dir(args.out, "--out", overwrite=args.overwrite, overwrite_hint="--overwrite")
    except OutputPathError as exc:
        p.error(str(exc))
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: expected an integer >= 1, got {args.threads}")
    try:
        config = arch.build(args)
    except ValueError as exc:  # CheckpointFormatError names the field
        p.error(str(exc))
    threads = common.apply_threads(args.threads)

    root, files = stdlib_files()
    train_files, held_files = split_files(files)
    train_tokens, held_tokens = file_bytes(train_files), file_bytes(held_files)
    print(
        f"stdlib {root}: {len(train_files)} train files ({train_tokens.numel()} bytes), "
        f"{len(held_files)} held-out files ({held_tokens.numel()} bytes)",
        file=sys.stderr,
    )

    model = arch.model.from_config(config, seed=args.seed)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "A_log" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "A_log" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    g = torch.Generator().manual_seed(args.seed)
    offsets = torch.arange(args.seqlen + 1)
    curve: list[dict[str, float]] = []
    t0 = time.perf_counter()
    steps_done = 0
    for step in range(args.steps):
        starts = torch.randint(0, train_tokens.numel() - args.seqlen - 1, (args.batch_size,), generator=g)
        batch = train_tokens[starts[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = arch.forward(model, batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps_done = step + 1
        elapsed = time.perf_counter() - t0
        if step % args.log_every == 0 or step == args.steps - 1:
            curve.append(
                {"step": step, "loss": float(loss.detach()), "lr": lr_at(step), "seconds": round(elapsed, 2)}
            )
            print(
                f"step {step:4d} loss {float(loss.detach()):.4f} ({elapsed:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
        if args.stop_step is not None and steps_done >= args.stop_step:
            break
        if elapsed > args.max_minutes * 60:
            print(f"stopping after {steps_done} steps: --max-minutes reached", file=sys.stderr)
            break
    train_seconds = time.perf_counter() - t0

    model.eval()
    out = Path(args.out)
    loaded_name = arch.model.__name__
    # checkpoint, training_config.json and loss_curve.json appear together, or not at all
    with atomic_directory(
        out,
        overwrite=args.overwrite,
        key_files=("config.json",),
        option="--out",
        overwrite_hint="--overwrite",
    ) as staging:
        model.save_pretrained(staging)
        loaded = arch.model.from_pretrained(staging)
        check = held_tokens[: 2 * args.seqlen].reshape(2, args.seqlen)
        with torch.no_grad():
            ref = arch.forward(model, check)
            got = loaded(check)
        max_err = float((ref - got).abs().max())
        if not max_err < 1e-3:
            print(
                f"error: {loaded_name} logits differ from the training forward by {max_err:.3e}",
                file=sys.stderr,
            )
            raise SystemExit(1)  # an exception: nothing is written
        held_loss = heldout_loss(loaded, held_tokens, 256, 64)
        training_config = {
            "script": SCRIPT,
            "command": f"python {SCRIPT} " + " ".join(argv if argv is not None else sys.argv[1:]),
            "args": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("out", "overwrite")
                and (args.arch == "mamba2" or k not in ("headdim", "ngroups"))
            },
            "model": {**config.to_hf_dict(), "params": n_params},
            "data": {
                "source": "top-level *.py files of sysconfig.get_paths()['stdlib'], sorted by name",
                "python": sys.version.split()[0],
                "split_rule": f"file index i % {HELDOUT_EVERY} == 0 -> held out, else train",
                "tokenizer": "UTF-8 bytes (vocab 256)",
                "train_files": [f.name for f in train_files],
                "heldout_files": [f.name for f in held_files],
                "train_bytes": int(train_tokens.numel()),
                "heldout_bytes": int(held_tokens.numel()),
            },
            "optimizer": "AdamW(betas=(0.9, 0.95)), linear warmup then cosine to 0.1 lr, grad clip 1.0",
            "steps_done": steps_done,
            "reproduce": reproduce_command(args, arch, steps_done, threads.threads),
            "train_seconds": round(train_seconds, 1),
            "torch": torch.__version__,
            "threads": threads.threads,
            "threads_reason": threads.reason,
            "final_train_loss": curve[-1]["loss"],
            "heldout_nll_256x64": held_loss,
            "heldout_ppl_256x64": math.exp(held_loss),
            f"max_abs_logit_err_{loaded_name.lower()}_vs_training_forward": max_err,
        }
        write_text_atomic(staging / "training_config.json", json.dumps(training_config, indent=2) + "\n")
        write_text_atomic(staging / "loss_curve.json", json.dumps(curve, indent=1) + "\n")
    print(
        f"saved {out}: {n_params} params, held-out ppl {math.exp(held_loss):.3f}, logit check {max_err:.2e}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
