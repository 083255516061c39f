"""bpttlab-report: tables and figures of a sweep, with the spread over seeds.

    bpttlab-report outputs/multirun/<date>/<time> [--out DIR] [--compare KEY=A,B]
                   [--profiles KEY=A,B[,C] [--step N]]

Reads every run dir below PATH that holds a metrics.json (with its config.yaml, events and
grad_flow/ profiles), groups the runs whose configs differ only in ``seed`` (``bpttlab.analysis.sweep``)
and writes into DIR (default PATH/report):

- report.md and report.csv: a row per group: the settings that tell the groups apart; n (the
  completed and diverged runs, one per seed) and their seeds; solved k/n with its Wilson 95 %
  interval; the median solved_at_step over the solved seeds with [min, max]; the mean final
  normalised loss with its Student-t 95 % half-width; the diverged, failed (also killed),
  interrupted, running, invalid and duplicate counts (none of these but the diverged are ever
  in the numbers); and ``summary``, one cell such as "3/3 solved, median step 650 [500-800]"
  or "0/3, 0.94 ± 0.02". report.md then lists every run with its status (runs.csv holds the
  same rows), the failed runs with their error, the invalid runs and the duplicates with their
  paths and, when task or gap vary, the summary cells as a grid: a row per setting, a column
  per task and gap.
- results.png, curves.png, profiles.png (``bpttlab.analysis.figures``); spectra.png where the
  runs saved Lyapunov spectra (``bpttlab.analysis.spectra``).
- with ``--compare KEY=A,B``: compare_<KEY>.md, the per-seed paired differences B - A and their
  sign and Wilcoxon tests (``bpttlab.analysis.compare``), also printed.
- with ``--profiles KEY=A,B``: profiles_<KEY>.png, the gradient profiles of the groups with
  KEY=A, B, ... overlaid on one log axis at one step, with a band over seeds
  (``bpttlab.analysis.overlay``).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

from bpttlab.analysis import compare as paired
from bpttlab.analysis import figures as report_figures
from bpttlab.analysis import overlay
from bpttlab.analysis.spectra import spectra_figure
from bpttlab.analysis.sweep import STATUSES, Group, Run, group_runs, read_runs, value, varying
from bpttlab.checks import ConfigError
from bpttlab.runs.rundir import check_writable

RUN_RESULTS = ("status", "solved", "solved_at_step", "normalized_loss", "diverged", "steps")
GROUP_RESULTS = (
    "n",
    "seeds",
    "solved",
    "solve_rate_low",
    "solve_rate_high",
    "median_step",
    "min_step",
    "max_step",
    "loss_mean",
    "loss_ci95",
    "diverged",
    "failed",
    "interrupted",
    "running",
    "invalid",
    "duplicates",
    "summary",
)
FIGURES = ("results.png", "curves.png", "profiles.png")


def group_table(groups: list[Group]) -> tuple[list[str], list[list[Any]]]:
    """Header and a row per group: the settings that vary between groups, then its numbers."""
    columns = varying(groups)
    rows = []
    for group in groups:
        summary = group.summary()
        rows.append(
            [*(value(group.first, c) for c in columns), *(summary[k] for k in GROUP_RESULTS)]
        )
    return [*columns, *GROUP_RESULTS], rows


def run_table(runs: list[Run], groups: list[Group]) -> tuple[list[str], list[list[Any]]]:
    """Header and a row per run: its name, the group settings, its seed and results."""
    columns = varying(groups)
    header = ["run", *columns, "seed", *RUN_RESULTS]
    rows = [
        [
            r.path.name,
            *(value(r, c) for c in columns),
            r.seed,
            r.status,
            *(r.metrics.get(k) for k in RUN_RESULTS[1:]),
        ]
        for r in runs
    ]
    return header, rows


def summary_table(groups: list[Group]) -> tuple[list[str], list[list[Any]]] | None:
    """The ``summary`` cells as a grid: a row per setting, a column per task and gap (the
    README's results table); None when neither task nor gap varies."""
    columns = varying(groups)
    across = [c for c in ("task", "gap") if c in columns]
    if not across:
        return None
    down = [c for c in columns if c not in across]
    heads: dict[str, None] = {}
    cells: dict[str, dict[str, str]] = {}
    for group in groups:
        head = " ".join(str(value(group.first, c)) for c in across)
        row = ", ".join(f"{c}={value(group.first, c)}" for c in down) or "runs"
        heads[head] = None
        cells.setdefault(row, {})[head] = group.summary()["summary"]
    header = [", ".join(down) or "", *heads]
    return header, [[row, *(line.get(h) for h in heads)] for row, line in cells.items()]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


def _markdown(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def write_tables(runs: list[Run], groups: list[Group], out: Path) -> None:
    """report.md (groups, then runs), report.csv (groups) and runs.csv (runs)."""
    g_header, g_rows = group_table(groups)
    r_header, r_rows = run_table(runs, groups)
    _csv(out / "report.csv", g_header, g_rows)
    _csv(out / "runs.csv", r_header, r_rows)
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    solved = sum(bool(r.metrics.get("solved")) for r in runs if r.finished)
    duplicates = [d for g in groups for d in g.duplicates]
    extra = [f"{counts[s]} {s}" for s in ("running", "invalid") if counts[s]]
    extra += [f"{len(duplicates)} duplicates of a seed"] if duplicates else []
    summary = (
        f"{len(runs)} runs in {len(groups)} groups: {counts['completed']} completed "
        f"({solved} solved), {counts['diverged']} diverged, {counts['interrupted']} interrupted, "
        f"{counts['failed']} failed{''.join(', ' + e for e in extra)} (only the completed and "
        "diverged runs, one per seed, are in the numbers and figures)."
    )
    legend = (
        "n: completed and diverged runs; solved: k/n with the Wilson 95 % interval "
        "[solve_rate_low, solve_rate_high]; median_step [min_step, max_step]: solved_at_step "
        "over the solved seeds; loss_mean ± loss_ci95: final normalised loss, mean and "
        "Student-t 95 % half-width over the runs that have one (not the diverged)."
    )
    lines = ["# Sweep report", "", summary, "", "## Groups (runs that differ only in seed)", ""]
    lines += [
        legend,
        "",
        *_markdown(g_header, g_rows),
        "",
        "## Runs",
        "",
        *_markdown(r_header, r_rows),
    ]
    grid = summary_table(groups)
    if grid is not None:
        lines += ["", "## Summary by task and gap", "", *_markdown(*grid)]
    failed = [
        (r, r.metrics.get("error", "no error recorded")) for r in runs if r.status == "failed"
    ]
    lines += _listed("Failed runs", failed)
    lines += _listed("Invalid runs (not counted)", [(r, r.problem) for r in runs if r.problem])
    lines += _listed(
        "Duplicates of a seed (not counted: a rerun of a seed is not another seed)",
        [(run, f"seed {run.seed} again, counted in {kept.path}") for run, kept in duplicates],
    )
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _listed(title: str, entries: list[tuple[Run, str | None]]) -> list[str]:
    """A report.md section: a line per run, its path and what to say about it."""
    if not entries:
        return []
    return [
        "",
        f"## {title}",
        "",
        *(f"- {r.path}: {' '.join(str(why).split())}" for r, why in entries),
    ]


def report(
    root: Path,
    out: Path | None = None,
    compare: str | None = None,
    profiles: str | None = None,
    step: int | None = None,
) -> Path:
    """Write the tables and figures for the runs below ``root`` (given ``compare`` "KEY=A,B",
    compare_<KEY>.md; given ``profiles`` "KEY=A,B", profiles_<KEY>.png at ``step``; ValueError
    if they cannot be made); return the output dir."""
    runs = read_runs(root)
    if not runs:
        raise SystemExit(f"bpttlab-report: error: no readable metrics.json below {root}")
    out = out or root / "report"
    groups = group_runs(runs)
    overlaid = overlay.select(groups, profiles, step) if profiles is not None else None
    out.mkdir(parents=True, exist_ok=True)
    write_tables(runs, groups, out)
    report_figures.results_figure(groups).savefig(out / "results.png")
    report_figures.curves_figure(groups).savefig(out / "curves.png")
    report_figures.profiles_figure(groups).savefig(out / "profiles.png")
    (out / "spectra.png").unlink(missing_ok=True)  # drawn only for runs with callbacks.lyapunov
    if (spectra := spectra_figure(groups)) is not None:
        spectra.savefig(out / "spectra.png")
    if compare is not None:
        key, a, b = paired.parse(compare)
        counted = [r for g in groups for r in g.counted]  # one run per seed
        text = paired.markdown(paired.compare(counted, key, a, b), key, a, b)
        (out / f"compare_{key}.md").write_text(text)
    if overlaid is not None:
        overlay.overlay_figure(overlaid).savefig(out / f"profiles_{overlaid.key}.png")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bpttlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a multirun (or run) directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default PATH/report)"
    )
    parser.add_argument(
        "--compare",
        metavar="KEY=A,B",
        default=None,
        help="pair runs by seed across two values of a config group or key, as the sweep "
        "wrote them, e.g. cell=rnn,gru or cell.init=default,chrono",
    )
    parser.add_argument(
        "--profiles",
        metavar="KEY=A,B",
        default=None,
        help="overlay the gradient profiles of groups at one step, e.g. cell=rnn,gru",
    )
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="the step --profiles draws (default: the last step every run probed)",
    )
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        parser.error(f"{args.path} is not a directory")
    if args.step is not None and args.profiles is None:
        parser.error("--step is the step of --profiles: give --profiles KEY=A,B too")
    if args.profiles is not None:
        try:
            overlay.parse(args.profiles)
        except ValueError as error:
            parser.error(str(error))
    if args.compare is not None:
        try:
            paired.parse(args.compare)
        except ValueError as error:
            parser.error(str(error))
    try:  # before any figure is drawn: a file, or a directory no one may write in, is refused
        check_writable("--out", args.out or args.path / "report")
    except ConfigError as error:
        print(f"bpttlab-report: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        out = report(args.path, args.out, args.compare, args.profiles, args.step)
    except ValueError as error:
        parser.error(str(error))
    drawn = [out / f for f in (*FIGURES, "spectra.png") if (out / f).exists()]
    print(f"report: {out / 'report.md'}\nfigures: {', '.join(str(f) for f in drawn)}")
    if args.compare is not None:
        path = out / f"compare_{paired.parse(args.compare)[0]}.md"
        print(path.read_text(), end="")
        print(f"comparison: {path}")
    if args.profiles is not None:
        print(f"profiles: {out / f'profiles_{overlay.parse(args.profiles)[0]}.png'}")


if __name__ == "__main__":
    main()
