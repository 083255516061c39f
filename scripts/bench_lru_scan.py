"""LRU's diagonal linear recurrence x_t = lambda x_{t-1} + b_t, forward + backward, three ways:
the step loop, a log2(T)-step Hillis-Steele scan, and the cell's chunked scan.

    python scripts/bench_lru_scan.py [B] [T] [N] [--threads N] [--repeats N] [--quick]
        [--json PATH] [--write-docs PATH]

The three are timed interleaved (A B C A B C ...), best of the repeats (5), and each is checked
against the step loop in float64. Defaults B=64, T=1000, N=128; ``--quick`` B=8, T=100, N=16.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from bench_frame import run
from bench_report import Section

from bpttlab.cells.lru import chunked_scan

SECTIONS = ("lru-scan",)
SIZES, QUICK_SIZES = (64, 1000, 128), (8, 100, 16)


def step_loop(log_lambda, b, x0):
    lam, x, states = torch.exp(log_lambda), x0, []
    for b_t in b.unbind(1):
        x = lam * x + b_t
        states.append(x)
    return torch.stack(states, 1)


def hillis_steele(log_lambda, b, x0):
    """After the pass with shift s, b_t holds sum over the last 2s inputs of lambda^(t-i) b_i."""
    b = torch.cat([b[:, :1] + torch.exp(log_lambda) * x0[:, None], b[:, 1:]], 1)
    shift = 1
    while shift < b.shape[1]:
        b = torch.cat(
            [b[:, :shift], b[:, shift:] + torch.exp(shift * log_lambda) * b[:, :-shift]], 1
        )
        shift *= 2
    return b


def scan_times(batch: int, steps: int, n: int, repeats: int) -> dict[str, dict[str, float]]:
    """Each scan's best time (forward + backward) and its largest error against the float64
    step loop, relative to the largest state."""
    torch.manual_seed(0)
    nu_log = torch.log(-torch.log(torch.empty(n).uniform_(0.9, 0.999))).requires_grad_()
    theta_log = torch.log(torch.empty(n).uniform_(0, 6.28)).requires_grad_()
    b = torch.randn(batch, steps, n, dtype=torch.complex64, requires_grad=True)
    x0 = torch.randn(batch, n, dtype=torch.complex64)
    log_lambda = lambda: torch.complex(-torch.exp(nu_log), torch.exp(theta_log))  # noqa: E731
    reference = step_loop(log_lambda().cdouble(), b.detach().cdouble(), x0.cdouble())
    scans = {"step loop": step_loop, "hillis-steele": hillis_steele, "chunked": chunked_scan}
    times = {name: [] for name in scans}
    for _ in range(repeats):  # interleaved, best of the repeats: the machine may be shared
        for name, scan in scans.items():
            start = time.perf_counter()
            states = scan(log_lambda(), b, x0)
            torch.view_as_real(states).sum().backward()
            times[name].append(time.perf_counter() - start)
    results = {}
    for name, scan in scans.items():
        error = (scan(log_lambda(), b, x0).detach().cdouble() - reference).abs().max()
        relative = (error / reference.abs().max()).item()
        results[name] = {"best_ms": 1000 * min(times[name]), "relative_error": relative}
    return results


def add_options(parser: argparse.ArgumentParser) -> None:
    for name, full, quick in zip(("B", "T", "N"), SIZES, QUICK_SIZES, strict=True):
        parser.add_argument(name, type=int, nargs="?", help=f"default {full} ({quick} --quick)")


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    given = (args.B, args.T, args.N)
    sizes = QUICK_SIZES if args.quick else SIZES
    batch, steps, n = (g or s for g, s in zip(given, sizes, strict=True))
    repeats = args.repeats or 5
    results = scan_times(batch, steps, n, repeats)
    loop = results["step loop"]["best_ms"]
    rows = [
        [name, f"{r['best_ms']:.1f}", f"{loop / r['best_ms']:.2f}", f"{r['relative_error']:.1e}"]
        for name, r in results.items()
    ]
    table = Section(
        "lru-scan",
        f"LRU recurrence, float32 forward + backward, B={batch} T={steps} N={n}",
        ["scan", "best ms", "speed-up over step loop", "max error vs float64 loop"],
        rows,
        notes=["The error is relative to the largest state."],
        counts=f"Best of {repeats} interleaved rounds of the three",
    )
    print(table.text())
    return {"lru_scan": results, "sizes": [batch, steps, n]}, [table]


def main(argv: list[str] | None = None) -> None:
    run(__doc__, SECTIONS, measure, sys.argv[1:] if argv is None else argv, add_options)


if __name__ == "__main__":
    main()
