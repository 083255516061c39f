"""The Lyapunov spectra of a sweep (``callbacks.lyapunov``'s npz files): per group, layer 0's
leading exponent against the training step, the median over seeds with a band between two
quantiles of the seeds (``figures.BAND``), in ``spectra.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bpttlab.analysis.figures import BAND, label, median_band
from bpttlab.analysis.sweep import Group, Run, varying


def spectrum_paths(run: Run) -> dict[int, Path]:
    """A run's saved spectra by step."""
    return {int(p.stem.split("_")[-1]): p for p in (run.path / "lyapunov").glob("step_*.npz")}


def leading_exponents(group: Group) -> tuple[list[int], np.ndarray]:
    """The steps every finished seed of ``group`` measured and layer 0's leading exponent at
    each: (steps, seeds x steps); no steps where a seed measured none."""
    paths = [spectrum_paths(run) for run in group.finished]
    if not paths or not all(paths):
        return [], np.empty((0, 0))
    steps = sorted(set.intersection(*(set(p) for p in paths)))
    matrix = [[float(np.load(p[s])["exponents"][0, 0]) for s in steps] for p in paths]
    return steps, np.array(matrix)


def spectra_figure(groups: list[Group]) -> Figure | None:
    """The leading exponent over training, a line and band per group; None without spectra."""
    measured = [(g, *leading_exponents(g)) for g in groups]
    measured = [(g, steps, m) for g, steps, m in measured if steps]
    if not measured:
        return None
    columns = varying([g for g, _, _ in measured])
    fig = Figure(figsize=(7, 3.6), dpi=90)
    ax = fig.add_subplot()
    for i, (group, steps, matrix) in enumerate(measured):
        _, median, low, high = median_band(matrix)
        colour = f"C{i % 10}"
        name = f"{label(group, columns)} (n={len(matrix)})"
        ax.plot(steps, median, "-", marker=".", color=colour, label=name, linewidth=1.2)
        if len(matrix) > 1:
            ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel="optimiser step",
        ylabel="leading exponent (nats / timestep)",
        title=f"layer 0: median over seeds, band {BAND[0]:.0%}-{BAND[1]:.0%} of seeds",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
