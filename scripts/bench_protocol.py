"""The benchmarks' measurement protocol: implementations timed in alternation (A B A B ...), so
that drift in machine load hits all of them alike, medians of the repeats with warm-up runs
excluded, and a process set up as bpttlab-train sets up its own (subnormals flushed, freed
memory kept), for every path measured alike."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from bench_report import docs_problem

from bpttlab.cli.allocator import keep_freed_memory
from bpttlab.cli.subnormals import flush_subnormals

SEED = 0


def median(values: list[float]) -> float:
    return statistics.median(values)


def alternate(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list]:
    """Call the runs in turn, ``repeats`` rounds (A B A B ...); collect what each returns."""
    results: dict[str, list] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return results


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def verdict(ratio: float, target: float) -> str:
    return f"{'met' if ratio >= target else 'MISSED'} (>= {target:.2f})"


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The options every bench script takes: sizes, repeats, threads, where results go."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (< 60 s)")
    parser.add_argument("--repeats", type=int, help="timed runs per implementation")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--write-docs",
        type=Path,
        metavar="PATH",
        help="replace this script's blocks in the Markdown file PATH (e.g. docs/benchmarks.md)",
    )


def refuse(message: str) -> None:
    """Stop on a bad option: one line, exit status 2, before anything is measured or written."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_common_options(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, counts below 1 and a --write-docs page that cannot take
    the blocks."""
    for name in ("repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            refuse(f"--{name.replace('_', '-')} must be at least 1")
    if args.write_docs is not None and (problem := docs_problem(args.write_docs)):
        refuse(problem)


def prepare_process(threads: int | None) -> None:
    """Set this process up as bpttlab-train does by default, and quiet Lightning's info logs
    and its warnings about loader workers and log intervals."""
    sys.stdout.reconfigure(line_buffering=True)  # each table as soon as it is measured
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    flush_subnormals(True)
    keep_freed_memory(True)
    if threads:
        torch.set_num_threads(threads)
