"""The table and figure of ``bptt=auto`` against fixed truncations in docs/results.md, from sweeps
of ``experiment=truncation_auto``: per cell, task, gap and schedule, over its seeds, the report's
summary (solved k/n, median step to solve, or the mean final normalised loss), the final
accuracy (mean [range]; copy only), sequences seen,
wall seconds, and the K that auto chose; the figure draws, per auto run, K against the
optimiser step with, beside it, how far back the full gradient reaches in the full-BPTT run of
the same seed (``steps_in_past`` x T, from its gradient-flow probes; an auto run's own probes
see its truncated gradient).

    bpttlab-train -m experiment=truncation_auto task=adding task.gap=100 seed=0,1,2
    python scripts/truncation_auto_table.py outputs/multirun --figure docs/figures/truncation_auto.png
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bpttlab.analysis.sweep import group_runs, read_runs
from bpttlab.gradflow import load_profile, profile_summary

PAST_THRESHOLD = 1e-3  # conf/callbacks/grad_flow.yaml
STATE = "h_layer0"
SCHEDULES = {None: "full BPTT", 5: "TBPTT(5)", 20: "TBPTT(20)", "auto": "auto"}


def spread(values: list[float], digits: str = ".3g") -> str:
    """Median [min, max] of ``values``."""
    if min(values) == max(values):
        return f"{values[0]:{digits}}"
    return f"{statistics.median(values):{digits}} [{min(values):{digits}}-{max(values):{digits}}]"


def chosen(run) -> list[tuple[int, int]]:
    """(step, K) of every choice an auto run made."""
    return [(c["step"], c["truncation"]) for c in run.metrics.get("truncation_history") or []]


def reach(run) -> list[tuple[int, float]]:
    """(step, steps_in_past x T) of every gradient-flow probe of ``run``."""
    points = []
    for path in sorted((run.path / "grad_flow").glob("step_*.npz")):
        profile = load_profile(path)
        past = profile_summary(profile[STATE], PAST_THRESHOLD)["steps_in_past"]
        points.append((int(profile["step"]), past * int(profile["seq_len"])))
    return points


def rows(groups) -> list[list[str]]:
    table = []
    for group in groups:
        first, done = group.first, group.finished
        truncation = first.config.get("bptt.truncation")
        ks = [k for run in done for _, k in chosen(run)]
        table.append(
            [
                first.hparams["cell"],
                task_of(first),
                SCHEDULES.get(truncation, str(truncation)),
                group.summary()["summary"],
                accuracy(done),
                spread([r.number("sequences") for r in done], ".0f"),
                spread([r.number("wall_seconds") for r in done], ".1f"),
                spread(ks, ".0f") + f" (last: {spread([chosen(r)[-1][1] for r in done], '.0f')})"
                if ks
                else "",
            ]
        )
    return table


def accuracy(runs) -> str:
    """Mean final validation accuracy of ``runs`` with its range ("" for tasks without one)."""
    values = [r.number("val_accuracy") for r in runs]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return ""
    return f"{statistics.fmean(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def figure(groups, path: Path) -> None:
    """A row per cell, a column per task and gap: each auto seed's K (solid) and, dotted,
    steps_in_past x T of the full-BPTT run of the same seed: how far back the full gradient
    reaches at that step."""
    autos = [g for g in groups if g.first.config.get("bptt.truncation") == "auto"]
    fulls = {where(g.first): g for g in groups if g.first.config.get("bptt.truncation") is None}
    if not autos:
        return
    cells = sorted({g.first.hparams["cell"] for g in autos})
    tasks = sorted(
        {task_of(g.first) for g in autos}, key=lambda t: (t.split()[0], int(t.split()[1]))
    )
    fig, axes = plt.subplots(
        len(cells), len(tasks), figsize=(3.4 * len(tasks), 2.8 * len(cells)), squeeze=False
    )
    for ax in axes.flat:
        ax.set_visible(False)
    for group in autos:
        cell, task = where(group.first)
        ax = axes[cells.index(cell)][tasks.index(task)]
        ax.set_visible(True)
        full = fulls.get((cell, task))
        full_runs = {r.seed: r for r in full.finished} if full else {}
        for i, run in enumerate(group.finished):
            steps, ks = zip(*chosen(run), strict=True)
            ax.step(steps, ks, where="post", color=f"C{i}", label=f"K, seed {run.seed}")
            if run.seed in full_runs and reach(full_runs[run.seed]):
                probe_steps, past = zip(*reach(full_runs[run.seed]), strict=True)
                ax.plot(probe_steps, past, ":", marker=".", color=f"C{i}")
        ax.set_title(f"{cell}, {task}")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("timesteps")
    legend_ax = next(ax for ax in axes.flat if ax.get_visible())
    legend_ax.plot([], [], ":", color="grey", label="full BPTT: steps_in_past x T")
    legend_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def task_of(run) -> str:
    return f"{run.hparams['task']} {run.config['task.gap']}"


def where(run) -> tuple[str, str]:
    """(cell, task and gap) of ``run``."""
    return run.hparams["cell"], task_of(run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", type=Path, nargs="+")
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args(argv)
    runs = [run for sweep in args.sweeps for run in read_runs(sweep)]
    groups = [g for g in group_runs(runs) if g.finished]
    header = [
        "cell",
        "task",
        "schedule",
        "solved (steps)",
        "accuracy",
        "sequences",
        "wall s",
        "K chosen",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows(groups):
        print("| " + " | ".join(row) + " |")
    if args.figure:
        figure(groups, args.figure)


if __name__ == "__main__":
    main()
