"""The table and figure of ``bptt=auto`` against fixed truncations in docs/results.md, from sweeps
of ``experiment=truncation_auto``: per task, gap and schedule, over its seeds, the report's
summary (solved k/n, median step to solve, or the mean final normalised loss), sequences seen,
wall seconds, and the K that auto chose; the figure draws, per auto run, K against the
optimiser step with, beside it, how far back the full gradient reaches in the full-BPTT run of
the same seed (``steps_in_past`` x T, from its gradient-flow probes; an auto run's own probes
see its truncated gradient).

    bpttlab-train -m experiment=truncation_auto task=adding task.gap=100 seed=0,1,2
    python scripts/truncation_auto_table.py outputs/multirun --figure docs/figures/truncation_auto.png
"""

from __future__ import annotations

import argparse
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
                task_of(first),
                SCHEDULES.get(truncation, str(truncation)),
                group.summary()["summary"],
                spread([r.number("sequences") for r in done], ".0f"),
                spread([r.number("wall_seconds") for r in done], ".1f"),
                spread(ks, ".0f") + f" (last: {spread([chosen(r)[-1][1] for r in done], '.0f')})"
                if ks
                else "",
            ]
        )
    return table


def figure(groups, path: Path) -> None:
    """Per task and gap, each auto seed's K (solid) and, dotted, steps_in_past x T of the
    full-BPTT run of the same seed: how far back the full gradient reaches at that step."""
    autos = [g for g in groups if g.first.config.get("bptt.truncation") == "auto"]
    fulls = {task_of(g.first): g for g in groups if g.first.config.get("bptt.truncation") is None}
    if not autos:
        return
    fig, axes = plt.subplots(1, len(autos), figsize=(4.2 * len(autos), 3.2), squeeze=False)
    for ax, group in zip(axes[0], autos, strict=True):
        full = fulls.get(task_of(group.first))
        full_runs = {r.seed: r for r in full.finished} if full else {}
        for i, run in enumerate(group.finished):
            steps, ks = zip(*chosen(run), strict=True)
            ax.step(steps, ks, where="post", color=f"C{i}", label=f"K, seed {run.seed}")
            if run.seed in full_runs and reach(full_runs[run.seed]):
                probe_steps, past = zip(*reach(full_runs[run.seed]), strict=True)
                ax.plot(probe_steps, past, ":", marker=".", color=f"C{i}")
        ax.set_title(task_of(group.first))
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("timesteps")
    axes[0][0].plot([], [], ":", color="grey", label="full BPTT: steps_in_past x T")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def task_of(run) -> str:
    return f"{run.hparams['task']} {run.config['task.gap']}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", type=Path, nargs="+")
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args(argv)
    groups = group_runs([run for sweep in args.sweeps for run in read_runs(sweep)])
    header = ["task", "schedule", "solved (steps)", "sequences", "wall s", "K chosen"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows(groups):
        print("| " + " | ".join(row) + " |")
    if args.figure:
        figure(groups, args.figure)


if __name__ == "__main__":
    main()
