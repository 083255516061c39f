"""Benchmark bpttlab on CPU: framework overhead, GradientFlow overhead, the LSTM kernel choice
and parallel sweeps.

    python scripts/bench.py [--quick] [--repeats N] [--threads N] [--json PATH]
        [--write-docs PATH] [--sections training,gradflow,kernels,sweep]
        [--clip-threshold T] [--probe-every N] [--cell lstm|gru] [--sweep-grids N]

Every section in one process, one after another; each is also a script of its own, whose
docstring says what it measures and against which target:

    training, gradflow  scripts/bench_training.py      bpttlab vs plain PyTorch; GradientFlow
    kernels             scripts/bench_kernel_choice.py oneDNN vs native LSTM; fused vs unrolled
    sweep               scripts/bench_sweeps.py        serial vs joblib seed sweeps

Within a section the implementations are timed in alternation (A B A B ...), so that drift in
machine load hits all of them alike; every comparison reports the median of its repeats, with
warm-up runs excluded, and the ratio of the medians (scripts/bench_protocol.py). ``--quick``
shrinks every size for a smoke run. ``--write-docs docs/benchmarks.md`` puts each section's
table, with the command, date, machine and run counts, between its markers
``<!-- bench:<section> -->`` and ``<!-- /bench:<section> -->`` in that page.
"""

from __future__ import annotations

import argparse
import sys

import bench_kernel_choice
import bench_sweeps
import bench_training
from bench_frame import run
from bench_protocol import verdict
from bench_report import Section

SECTIONS = (*bench_training.SECTIONS, *bench_kernel_choice.SECTIONS, *bench_sweeps.SECTIONS)


def add_options(parser: argparse.ArgumentParser) -> None:
    bench_training.add_options(parser)
    bench_sweeps.add_options(parser)


def check_options(args: argparse.Namespace, sections: set[str]) -> None:
    bench_training.check_options(args, sections)
    bench_sweeps.check_options(args, sections)


def print_summary(results: dict) -> None:
    print("Targets")
    for r in results["training"]:
        print(
            f"  bpttlab / plain, {r['setting']}: {r['ratio']:.3f} {verdict(r['ratio'], r['target'])}"
        )
    flow = results["gradient_flow"]
    print(
        f"  with / without GradientFlow: {flow['ratio']:.3f} {verdict(flow['ratio'], flow['target'])}"
    )
    ratio = results["kernels"]["onednn_over_native"]
    print(
        f"  kernel: {'native' if ratio > 1 else 'oneDNN'} is faster (oneDNN / native = {ratio:.2f})\n"
    )


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    results: dict = {}
    tables: list[Section] = []
    for script in (bench_training, bench_kernel_choice, bench_sweeps):
        if chosen := sections & set(script.SECTIONS):
            more, more_tables = script.measure(args, chosen)
            results |= more
            tables += more_tables
    if {"training", "gradient_flow", "kernels"} <= results.keys():
        print_summary(results)
    return results, tables


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run(__doc__, SECTIONS, measure, argv, add_options, check_options)


if __name__ == "__main__":
    main()
