"""How fast QR-method Lyapunov exponents converge with the sequence length and the
re-orthonormalisation interval: the largest error over the top k exponents of freshly
initialised cells, against a long run (float64, Gaussian inputs), printed as markdown tables.

    python scripts/lyapunov_convergence.py
"""

from __future__ import annotations

import argparse
import functools

import torch

from bpttlab.cells import CELLS
from bpttlab.gradflow.lyapunov import lyapunov_spectrum

CELL_KINDS = ("rnn", "gru", "lstm", "lru")
LENGTHS = (50, 100, 200, 500, 1000)
INTERVALS = (1, 5, 10, 20, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reference-length", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(args.batch, args.reference_length, 8, generator=generator).double()
    rows_length, rows_interval = [], []
    for kind in CELL_KINDS:
        torch.manual_seed(0)
        cell = CELLS[kind](8, args.hidden, t_max=args.reference_length).double()
        spectrum = functools.partial(
            lyapunov_spectrum, cell, state0=None, k=args.k, warmup=args.warmup
        )
        with torch.no_grad():
            reference = spectrum(xs)
            by_length = [(spectrum(xs[:, :t]) - reference).abs().max() for t in LENGTHS]
            base = spectrum(xs[:, :1000])
            by_interval = [
                (spectrum(xs[:, :1000], reorth_every=r) - base).abs().max() for r in INTERVALS
            ]
        leading = f"{float(reference[0]):+.4f}"
        rows_length.append([kind, leading, *(f"{float(e):.4f}" for e in by_length)])
        rows_interval.append([kind, *(f"{float(e):.1e}" for e in by_interval)])
    print(f"hidden {args.hidden}, top {args.k}, {args.batch} sequences, warm-up {args.warmup}")
    print(table(["cell", "leading (ref)", *(f"T={t}" for t in LENGTHS)], rows_length))
    print(table(["cell", *(f"every {r}" for r in INTERVALS)], rows_interval))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


if __name__ == "__main__":
    main()
