"""Run the sparse selective scan on a 130M-sized Mamba layer and check it against the reference.

    python examples/sparse_scan.py [--seqlen 1024] [--device cpu|cuda]

Builds dense, column-50% and 2:4 state masks from (random) importance scores, runs
``sparsessm_kernels.selective_scan`` with the best available backend, checks every result
against the pure PyTorch reference on a prefix, and prints the time of each.
"""

from __future__ import annotations

import argparse
import time

import torch

import sparsessm_kernels as ssk
from sparsessm_kernels.sparsity import build_sparsity


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d-inner", type=int, default=1536, help="channels d (1536 = mamba-130m)")
    parser.add_argument("--d-state", type=int, default=16, help="states n per channel")
    parser.add_argument("--seqlen", type=int, default=1024, help="sequence length l")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    b, d, n, l = 1, args.d_inner, args.d_state, args.seqlen
    dev = torch.device(args.device)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)  # S4D-real init, as Mamba
    inputs = {
        "u": torch.randn(b, d, l, generator=g),
        "delta": torch.randn(b, d, l, generator=g) * 0.5 - 2.0,
        "A": A,
        "B": torch.randn(b, n, l, generator=g),
        "C": torch.randn(b, n, l, generator=g),
        "D": torch.ones(d),
        "z": torch.randn(b, d, l, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.1,
    }
    inputs = {k: v.to(dev) for k, v in inputs.items()}
    scores = torch.rand(d, n, generator=g)  # stand-in for SparseSSM importance scores
    masks = {
        "dense": None,
        "column 50%": build_sparsity(scores, "column", 0.5),
        "2:4": build_sparsity(scores, "2:4"),
    }

    print(f"sparsessm_kernels {ssk.__version__}, device {dev}, backends:")
    for name, (usable, reason) in ssk.available_backends().items():
        print(f"  {name:7s} {'usable' if usable else 'not usable'}: {reason}")
    print(f"\nlayer d={d}, n={n}, l={l}")
    dense_ms = None
    prefix = {k: (v[..., :64] if v.dim() == 3 else v) for k, v in inputs.items()}
    for name, sparsity in masks.items():
        layout = None if sparsity is None else sparsity.to(dev)
        ref = ssk.selective_scan_ref(**prefix, delta_softplus=True, state_mask=layout)
        out = ssk.selective_scan(**prefix, delta_softplus=True, state_mask=layout)
        err = (out - ref).abs().max().item()
        ssk.selective_scan(**inputs, delta_softplus=True, state_mask=layout)  # warm-up
        times = []
        for _ in range(5):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            ssk.selective_scan(**inputs, delta_softplus=True, state_mask=layout)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
        ms = sorted(times)[len(times) // 2]
        dense_ms = dense_ms or ms
        print(
            f"  {name:11s} {ms:8.1f} ms  ({dense_ms / ms:4.2f}x vs dense)  max |err| vs reference {err:.1e}"
        )


if __name__ == "__main__":
    main()
