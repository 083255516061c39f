"""``bpttlab-report --profiles KEY=A,B[,C] [--step N]``: the gradient profiles of chosen groups
on one log axis at one training step, written as the sweep was (``--profiles cell=rnn,gru``,
``--profiles bptt.truncation=null,20``).

A run's value of KEY is its group choice when KEY names a config group (``cell``, ``task``:
Hydra's record of the run, ``.hydra/hydra.yaml``), else its config value, spelt as on the
command line (``null``, ``true``). Runs with the same value that differ only in seed form a
curve: the geometric mean over the seeds of ||dL/dh_k|| (the mean of log10) and a band from
their minimum to their maximum. Keys that follow from the choice (a cell's own options: one
value per choice) do not split curves; every other setting the runs differ in (a gap, a hidden
size) gets a panel of its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bpttlab.analysis.compare import matches, spelled
from bpttlab.analysis.records import Run
from bpttlab.analysis.sweep import Group
from bpttlab.gradflow.figures import readable_log_axis, shade_landmarks
from bpttlab.gradflow.history import RunProfiles, load_run, profile_files

LANDMARK_GREYS = ("0.85", "0.6", "0.92")
"""Landmarks in greys, so that no shading takes the colour of a curve's band."""
STATE = "h_layer0"
"""The state whose profiles are drawn."""
ABSENT = object()
"""A run's value of a key it does not have."""


def parse(spec: str) -> tuple[str, list[str]]:
    """ "cell=rnn,gru" -> ("cell", ["rnn", "gru"]); ValueError naming --profiles otherwise."""
    key, _, values = spec.partition("=")
    chosen = [v.strip() for v in values.split(",") if v.strip()]
    if not key.strip() or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"--profiles {spec!r}: write KEY=A,B[,...], distinct values of a config key or "
            "group as the sweep was launched with them, e.g. --profiles cell=rnn,gru"
        )
    return key.strip(), chosen


def setting(run: Run, key: str) -> Any:
    """``run``'s value of ``key``: its group's option or config value (``Run.setting``), else
    (a run without Hydra's record) its hyperparameter of that name (``cell``: ``cell.kind``),
    else ``ABSENT``."""
    if key in run.choices or key in run.config:
        return run.setting(key)
    return run.hparams.get(key, ABSENT) if key != "seed" else ABSENT


@dataclass
class Curve:
    """The runs of one value of the key in one panel, one per seed, read at ``step``."""

    value: str
    runs: list[Run]
    data: list[RunProfiles]
    step: int

    @property
    def profiles(self) -> np.ndarray:
        """(seeds, T) ||dL/dh_k|| at ``step``; NaN where it is 0 (no log)."""
        rows = np.stack([d.at(self.step)[STATE] for d in self.data])
        return np.where(rows > 0, rows, np.nan)

    def mean_band(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Geometric mean over the seeds, their minimum and their maximum, per timestep."""
        rows = self.profiles
        with np.errstate(all="ignore"):
            mean = 10.0 ** np.nanmean(np.log10(rows), axis=0)
        return mean, np.nanmin(rows, axis=0), np.nanmax(rows, axis=0)


@dataclass
class Overlay:
    """What ``--profiles`` draws: per panel title, a curve per chosen value of ``key``."""

    key: str
    step: int
    panels: dict[str, list[Curve]]


def select(groups: list[Group], spec: str, step: int | None) -> Overlay:
    """The curves of ``spec`` ("KEY=A,B") at ``step`` (default: the last step every chosen run
    probed), from the finished runs, one per seed; ValueError when they cannot be drawn."""
    key, values = parse(spec)
    runs = [r for g in groups for r in g.finished]
    settings = {r.path: setting(r, key) for r in runs}
    if all(v is ABSENT for v in settings.values()):
        raise ValueError(f"--profiles {spec}: no run has the config key or group {key!r}")
    found = {path: next((w for w in values if matches(w, v)), None) for path, v in settings.items()}
    missing = [w for w in values if w not in found.values()]
    if missing:
        present = sorted({spelled(v) for v in settings.values() if v is not ABSENT})
        raise ValueError(
            f"--profiles {spec}: no finished run has {key}={missing[0]} (values here: "
            f"{', '.join(present)})"
        )
    chosen = [r for r in runs if found[r.path] is not None]
    data = {r.path: load_run(r.path) for r in chosen if profile_files(r.path)}
    chosen = [r for r in chosen if r.path in data]
    if not chosen:
        raise ValueError(f"--profiles {spec}: none of these runs saved gradient profiles")
    common = set.intersection(*(set(data[r.path].steps.tolist()) for r in chosen))
    if step is None:
        if not common:
            raise ValueError(f"--profiles {spec}: no step is probed in every run; pick --step")
        step = max(common)
    elif step not in common:
        steps = ", ".join(str(s) for s in sorted(common)) or "none"
        raise ValueError(f"--step {step}: not probed in every run (every run has: {steps})")
    follows = _following(chosen, key, found)
    panels: dict[str, dict[str, Curve]] = {}
    identities = {r.path: dict(r.identity(*follows)) for r in chosen}
    differing = _differing(list(identities.values()))
    for run in chosen:
        title = ", ".join(f"{k}={spelled(run.config.get(k))}" for k in differing)
        curve = panels.setdefault(title, {}).setdefault(
            found[run.path], Curve(found[run.path], [], [], step)
        )
        curve.runs.append(run)
        curve.data.append(data[run.path])
    ordered = {
        title: [curves[v] for v in values if v in curves] for title, curves in panels.items()
    }
    return Overlay(key, step, ordered)


def _following(runs: list[Run], key: str, found: dict[Path, str | None]) -> list[str]:
    """Config keys under ``key`` that take one value per value of ``key``: they follow from
    the choice (a GRU has no ``nonlinearity``) and must not split its runs."""
    under = {k for r in runs for k in r.config if k == key or k.startswith(key + ".")}
    return [
        k
        for k in sorted(under)
        if all(
            len({json.dumps(r.config.get(k)) for r in runs if found[r.path] == v}) == 1
            for v in {found[r.path] for r in runs}
        )
    ]


def _differing(identities: list[dict[str, str]]) -> list[str]:
    keys = sorted(set().union(*identities))
    return [k for k in keys if len({i.get(k) for i in identities}) > 1]


def overlay_figure(overlay: Overlay) -> Figure:
    """A panel per setting, on each a curve per value of the key with its band over seeds."""
    step, panels = overlay.step, overlay.panels
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(7.5 * columns, 4.2 * rows), dpi=100)
    grid = fig.subplots(rows, columns, squeeze=False, sharey=True)
    for unused in list(grid.flatten())[len(panels) :]:
        unused.set_visible(False)
    for ax, (title, curves) in zip(grid.flatten(), panels.items(), strict=False):
        shared = {json.dumps(c.data[0].landmarks) for c in curves}
        for i, curve in enumerate(curves):
            colour = f"C{i % 10}"
            mean, low, high = curve.mean_band()
            k = np.arange(len(mean))
            name = f"{curve.value} (n={len(curve.runs)})"
            ax.semilogy(k, mean, "-", color=colour, label=name, linewidth=1.6)
            ax.fill_between(k, low, high, color=colour, alpha=0.2, linewidth=0)
            if len(shared) > 1:  # the curves' landmarks differ: each in its curve's colour
                for start, end in curve.data[0].landmarks.values():
                    ax.axvspan(start - 0.5, end - 0.5, color=colour, alpha=0.1, linewidth=0)
            for boundary in curve.data[0].boundaries:
                ax.axvline(boundary - 0.5, color=colour, linestyle=":", linewidth=0.8)
        if len(shared) == 1:
            shade_landmarks(ax, curves[0].data[0].landmarks, LANDMARK_GREYS)
        readable_log_axis(ax.yaxis)
        ax.set(title=title, xlabel="timestep k")
        ax.legend(fontsize=9)
    for row in grid:
        row[0].set_ylabel(f"||dL/d{STATE}|| at step {step}")
    fig.suptitle(
        f"{overlay.key}: geometric mean over seeds, band from their min to their max"
        + (
            " (truncation dotted)"
            if any(c.data[0].boundaries for p in panels.values() for c in p)
            else ""
        )
    )
    fig.tight_layout()
    return fig
