"""The frame every bench script runs in: its options checked before anything is measured, the
process set up, the machine printed, the sections measured, the results written (``--json``)
and the tables put into the benchmarks page (``--write-docs``)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

from bench_protocol import add_common_options, check_common_options, prepare_process, refuse
from bench_report import Section, environment, environment_lines, write_docs

from bpttlab.cells.kernels.compiled import compiled_in_effect

Measure = Callable[[argparse.Namespace, set[str]], tuple[dict, list[Section]]]


def no_options(parser: argparse.ArgumentParser) -> None:
    """A script with only the common options."""


def no_checks(args: argparse.Namespace, sections: set[str]) -> None:
    """A script whose own options need no check."""


def run(
    doc: str,
    sections: tuple[str, ...],
    measure: Measure,
    argv: list[str],
    add_options: Callable[[argparse.ArgumentParser], None] = no_options,
    check_options: Callable[[argparse.Namespace, set[str]], None] = no_checks,
) -> None:
    """Parse ``argv`` against the script's docstring ``doc``, then measure and report."""
    title = doc.split("\n\n")[0]
    parser = argparse.ArgumentParser(description=title)
    add_common_options(parser)
    add_options(parser)
    parser.add_argument(
        "--sections",
        default=",".join(sections),
        help=f"comma-separated subset of {','.join(sections)} (default: all)",
    )
    args = parser.parse_args(argv)
    chosen = set(args.sections.split(","))
    if chosen - set(sections):
        refuse(f"--sections takes a comma-separated subset of {','.join(sections)}")
    check_common_options(args)
    check_options(args, chosen)

    prepare_process(args.threads)
    env = environment()
    print(f"{title}{' (--quick)' if args.quick else ''}\n{environment_lines(env)}\n")
    start = time.perf_counter()
    results, tables = measure(args, chosen)
    elapsed = time.perf_counter() - start
    print(
        f"total {elapsed:.0f} s; load average at end {[round(v, 2) for v in os.getloadavg()]}; "
        f"compiled step loops ran: {compiled_in_effect()}"  # built at their first call
    )
    if args.json:
        end = {"load_average_at_end": list(os.getloadavg()), "compiled_steps": compiled_in_effect()}
        report = {"environment": env | end, "quick": args.quick, **results, "seconds": elapsed}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.write_docs:
        write_docs(args.write_docs, tables, argv, env)
