"""Solve rate and accuracy of each group of a sweep, for the selective-copy and associative-recall
blocks of docs/results.md: a row per group (runs that differ only in seed, grouped as
``bpttlab-report`` groups them), named by the settings that tell the groups apart, with solved
k/n and its Wilson 95 % interval, and the final validation accuracy, its mean over the seeds with
a Student-t 95 % half-width. With ``--figure``, both against one setting (``--x``, on a log
axis), a line per value of the others.

    bpttlab-train experiment=recall_lr
    python scripts/accuracy_table.py outputs/multirun/<date>/<time>_<id> --x lr --figure recall_lr.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bpttlab.analysis import stats
from bpttlab.analysis.sweep import Group, group_runs, read_runs, value, varying
from bpttlab.gradflow.figures import readable_log_axis


def accuracy(group: Group) -> tuple[float, float]:
    """Mean final validation accuracy over the group's finished runs, with its t 95 % half-width
    (nan with fewer than two runs)."""
    values = [r.number("val_accuracy") for r in group.finished]
    values = [v for v in values if math.isfinite(v)]
    return stats.mean_interval(values) if values else (math.nan, math.nan)


def telling(groups: list[Group]) -> list[str]:
    """The settings that tell the groups apart, less those that follow from the others (a
    cell's ``init`` when the cells differ)."""
    names = varying(groups)
    for name in reversed(list(names)):
        rest = [n for n in names if n != name]
        labels = {tuple(str(value(g.first, n)) for n in rest) for g in groups}
        if rest and len(labels) == len(groups):
            names = rest
    return names


def rows(groups: list[Group], names: list[str]) -> list[list[str]]:
    table = []
    for group in groups:
        summary = group.summary()
        mean, half = accuracy(group)
        solved = (
            f"{summary['solved']} [{summary['solve_rate_low']:.2f}, "
            f"{summary['solve_rate_high']:.2f}]"
        )
        steps = "" if summary["median_step"] is None else f"{summary['median_step']:g}"
        interval = "" if not math.isfinite(half) else f" ± {half:.3f}"
        table.append(
            [
                *(str(value(group.first, n)) for n in names),
                solved,
                steps,
                f"{mean:.3f}{interval}",
            ]
        )
    return table


def markdown(names: list[str], table: list[list[str]]) -> str:
    header = [*names, "solved [Wilson 95 %]", "median step", "accuracy (mean ± t 95 %)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def figure(groups: list[Group], names: list[str], x: str, path: Path) -> None:
    """Solve rate (Wilson interval) and accuracy (t interval) against ``x``, a line per value
    of the other names."""
    others = [n for n in names if n != x]
    lines: dict[str, list[Group]] = {}
    for group in groups:
        label = ", ".join(str(value(group.first, n)) for n in others) or "runs"
        lines.setdefault(label, []).append(group)
    fig, (rate_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=140)
    for i, (label, members) in enumerate(lines.items()):
        members.sort(key=lambda g: float(value(g.first, x)))
        shift = 1.06 ** (i - (len(lines) - 1) / 2)  # side by side, so the bars do not overlap
        xs = [float(value(g.first, x)) * shift for g in members]
        summaries = [g.summary() for g in members]
        rates = [s["solve_rate"] for s in summaries]
        low = [r - s["solve_rate_low"] for r, s in zip(rates, summaries, strict=True)]
        high = [s["solve_rate_high"] - r for r, s in zip(rates, summaries, strict=True)]
        rate_ax.errorbar(xs, rates, yerr=[low, high], marker="o", capsize=3, label=label)
        means, halves = zip(*(accuracy(g) for g in members), strict=True)
        halves = [0.0 if not math.isfinite(h) else h for h in halves]
        accuracy_ax.errorbar(xs, means, yerr=halves, marker="o", capsize=3, label=label)
    n = max(len(g.finished) for g in groups)
    rate_ax.set(ylabel=f"solve rate ({n} seeds, Wilson 95 %)", ylim=(-0.03, 1.03))
    accuracy_ax.set(ylabel="final accuracy (mean, t 95 %)", ylim=(-0.03, 1.03))
    for ax in (rate_ax, accuracy_ax):
        ax.set_xscale("log")
        readable_log_axis(ax.xaxis)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    accuracy_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep or run directories")
    parser.add_argument("--x", help="the setting on the figure's x axis, e.g. lr")
    parser.add_argument("--figure", type=Path, help="where to draw the figure (needs --x)")
    args = parser.parse_args(argv)
    if args.figure and not args.x:
        parser.error("--figure needs --x")
    runs = [run for sweep in args.sweeps for run in read_runs(sweep)]
    groups = [g for g in group_runs(runs) if g.finished]
    if not groups:
        raise SystemExit(
            f"accuracy_table: no finished run under {', '.join(map(str, args.sweeps))}"
        )
    names = telling(groups)
    if args.x and args.x not in names:
        raise SystemExit(
            f"accuracy_table: --x {args.x} does not vary here; the groups vary in {names}"
        )
    print(markdown(names, rows(groups, names)))
    if args.figure:
        figure(groups, names, args.x, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
