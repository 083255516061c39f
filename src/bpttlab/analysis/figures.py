"""bpttlab-report's figures, as matplotlib Figure objects (no pyplot, no global backend), each
showing the spread over the seeds of a group.

- results: the mean final normalised loss (Student-t 95 % interval) and the median solved step
  ([min, max] over the solved seeds, k/n beside it) against the gap, a line per group kind;
- curves: validation normalised loss against step, per group the median over seeds and a band
  between two quantiles of the seeds (``BAND``); a run that stopped once solved holds its last
  value afterwards;
- profiles: ||dL/dh_k|| / its peak, per group the median over seeds and a ``BAND`` band, at
  initialisation (step 0, dashed) and at the last training step every seed saved (solid).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bpttlab.analysis.sweep import Group, Run, value, varying
from bpttlab.gradflow.figures import readable_log_axis, shade_landmarks
from bpttlab.gradflow.profile import load_profile

BAND = (0.25, 0.75)
"""The seeds' quantiles that bound the bands (the interquartile range)."""

DODGE = 0.015
"""Relative shift of each line's gaps in the results figure, so that intervals do not overlap."""


def label(group: Group, columns: list[str]) -> str:
    """The group's values of ``columns``, "gru hidden_size=64"; an option the group does not
    have (a GRU's ``nonlinearity``) is left out, not written "None"."""
    values = {c: value(group.first, c) for c in columns}
    parts = [str(v) if c == "cell" else f"{c}={v}" for c, v in values.items() if v is not None]
    return " ".join(parts) or "runs"


def _band_label() -> str:
    return f"band: {BAND[0]:.0%}–{BAND[1]:.0%} of seeds"


def results_figure(groups: list[Group]) -> Figure:
    """Mean normalised loss (t 95 % interval) and median solve step ([min, max]) against gap."""
    groups = [g for g in groups if g.finished]
    lines: dict[str, list[Group]] = {}
    split = [c for c in varying(groups) if c != "gap"] or ["cell"]
    for group in groups:
        lines.setdefault(label(group, split), []).append(group)
    fig = Figure(figsize=(10, 3.8), dpi=90)
    left, right = fig.subplots(1, 2)
    for i, (name, members) in enumerate(sorted(lines.items())):
        members.sort(key=lambda g: g.first.hparams["gap"] or 0)
        rows = [g.summary() for g in members]
        gaps = np.array([g.first.hparams["gap"] or 0 for g in members], dtype=float)
        gaps *= 1 + DODGE * (i - (len(lines) - 1) / 2)  # lines side by side, not on top
        mean = np.array([_num(r["loss_mean"]) for r in rows])
        half = np.array([_num(r["loss_ci95"], 0.0) for r in rows])
        left.errorbar(gaps, mean, yerr=half, fmt="o-", capsize=3, color=f"C{i}", label=name)
        median = np.array([_num(r["median_step"]) for r in rows])
        low = median - np.array([_num(r["min_step"]) for r in rows])
        high = np.array([_num(r["max_step"]) for r in rows]) - median
        right.errorbar(
            gaps, median, yerr=np.nan_to_num([low, high]), fmt="o-", capsize=3, color=f"C{i}"
        )
        for x, y, r in zip(gaps, median, rows, strict=True):
            if math.isfinite(y):
                right.annotate(
                    r["solved"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
    ticks = sorted({g.first.hparams["gap"] or 0 for g in groups})
    if len(ticks) == 1:  # one gap: keep the dodged lines near it
        left.set_xlim(
            ticks[0] * (1 - 4 * DODGE * len(lines)) - 1, ticks[0] * (1 + 4 * DODGE * len(lines)) + 1
        )
    right.set_xlim(left.get_xlim())
    for ax in (left, right):
        ax.set_xticks(ticks, [str(t) for t in ticks])
    if not any(r.metrics.get("solved") for g in groups for r in g.finished):
        right.text(0.5, 0.5, "no run solved the task", ha="center", transform=right.transAxes)
        right.set_yticks([])
    left.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="memoryless baseline")
    left.set(
        xlabel="gap T", ylabel="final val loss / baseline", title="normalised loss: mean, t 95 %"
    )
    right.set(
        xlabel="gap T",
        ylabel="optimiser step",
        title="solved at step: median [min, max], k/n solved",
    )
    left.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _num(value, missing: float = math.nan) -> float:
    if value is None or not math.isfinite(value):
        return missing
    return float(value)


def event_dir(run_dir: Path) -> Path | None:
    """Where a run's TensorBoard event files are: the run dir itself, or its ``tensorboard/``
    (where runs wrote them before TensorBoard named runs by their dir); None without any."""
    for directory in (run_dir, run_dir / "tensorboard"):
        if any(directory.glob("events.out.tfevents.*")):
            return directory
    return None


def read_curve(run: Run, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """A run's scalar ``tag`` from its TensorBoard events: (steps, values); empty without
    events (a run with the logger off)."""
    directory = event_dir(run.path)
    if directory is None:
        return np.array([], dtype=int), np.array([])
    events = EventAccumulator(str(directory))
    events.Reload()
    if tag not in events.Tags().get("scalars", []):
        return np.array([], dtype=int), np.array([])
    points = events.Scalars(tag)
    return np.array([p.step for p in points]), np.array([p.value for p in points], dtype=float)


def seed_matrix(curves: list[tuple[np.ndarray, np.ndarray, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves on the union of their steps: (steps, seeds x steps values), nan where a
    seed has no value; a seed that stopped solved holds its last value after its end."""
    steps = np.unique(np.concatenate([s for s, _, _ in curves])) if curves else np.array([])
    matrix = np.full((len(curves), len(steps)), np.nan)
    for i, (s, v, hold) in enumerate(curves):
        if not len(s):
            continue
        matrix[i, np.searchsorted(steps, s)] = v
        if hold:
            matrix[i, steps > s.max()] = v[np.argmax(s)]
    return steps, matrix


def median_band(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Columns with a value in any seed: (kept mask, median, low and high ``BAND`` quantiles)."""
    kept = ~np.all(np.isnan(matrix), axis=0)
    part = matrix[:, kept]
    return (
        kept,
        np.nanmedian(part, axis=0),
        np.nanquantile(part, BAND[0], axis=0),
        np.nanquantile(part, BAND[1], axis=0),
    )


def curves_figure(groups: list[Group], tag: str = "val/normalized_loss") -> Figure:
    """Validation normalised loss against step: per group the median over its seeds and a band
    between the seeds' ``BAND`` quantiles."""
    groups = [g for g in groups if g.finished]
    columns = varying(groups)
    fig = Figure(figsize=(6.5, 3.8), dpi=90)
    ax = fig.add_subplot()
    for i, group in enumerate(groups):
        runs = group.finished
        curves = [(*read_curve(r, tag), bool(r.metrics.get("solved"))) for r in runs]
        steps, matrix = seed_matrix(curves)
        if not matrix.size:
            continue
        kept, median, low, high = median_band(matrix)
        name = f"{label(group, columns)} (n={len(runs)})"
        diverged = group.count("diverged")
        if diverged:
            name += f", {diverged} diverged"
        ax.plot(steps[kept], median, "-", color=f"C{i % 10}", label=name, linewidth=1.3)
        if len(runs) > 1:
            ax.fill_between(steps[kept], low, high, color=f"C{i % 10}", alpha=0.2, linewidth=0)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="memoryless baseline")
    ax.set(
        xlabel="optimiser step",
        ylabel="val loss / baseline",
        title=f"learning curves: median over seeds, {_band_label()}",
        yscale="log",
    )
    readable_log_axis(ax.yaxis)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def profile_paths(run: Run) -> dict[int, Path]:
    """A run's saved profiles by step."""
    return {int(p.stem.split("_")[-1]): p for p in (run.path / "grad_flow").glob("step_*.npz")}


def panel(group: Group) -> tuple[str, str, str]:
    """The panel of ``group`` in profiles.png: its cell, task and gap (one task's landmarks)."""
    return tuple(str(group.first.hparams[name]) for name in ("cell", "task", "gap"))


def profiles_figure(groups: list[Group], state: str = "h_layer0") -> Figure:
    """||dL/dh_k|| / its peak against k, a panel per cell (and per task and gap, when they vary,
    so that a panel's shading is its curves' landmarks): per group the median over seeds and a
    ``BAND`` band, at step 0 (dashed) and at the last step that every seed saved (solid)."""
    groups = [g for g in groups if any(profile_paths(r) for r in g.finished)]
    panels = sorted({panel(g) for g in groups}, key=lambda p: (*p[:2], _num(_int(p[2]), -1)))
    many_tasks = len({p[1:] for p in panels}) > 1
    columns = max(1, min(4, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    fig = Figure(figsize=(4.6 * columns, 3.4 * rows), dpi=90)
    grid = fig.subplots(rows, columns, squeeze=False, sharey=True)
    axes = list(grid.flatten())
    for unused in axes[max(1, len(panels)) :]:
        unused.set_visible(False)
    if not panels:
        axes[0].text(0.5, 0.5, "no gradient profiles", ha="center", transform=axes[0].transAxes)
    for ax, (cell, task, gap) in zip(axes, panels, strict=False):
        members = [g for g in groups if panel(g) == (cell, task, gap)]
        others = [c for c in varying(members) if c not in ("cell", "task", "gap")]
        landmarks: dict[str, tuple[int, int]] = {}
        for i, group in enumerate(members):
            paths = [profile_paths(r) for r in group.finished if profile_paths(r)]
            common = set.intersection(*(set(p) for p in paths))
            trained = max((s for s in common if s > 0), default=None)
            for step, style in ((0, "--"), (trained, "-")):
                if step is None or step not in common:
                    continue
                data = [load_profile(p[step]) for p in paths]
                landmarks = landmarks or dict(
                    zip(
                        (str(n) for n in data[0]["landmark_names"]),
                        (tuple(int(v) for v in s) for s in data[0]["landmark_spans"]),
                        strict=True,
                    )
                )
                matrix = np.stack([_peak_normalised(d[state]) for d in data])
                kept, median, low, high = median_band(matrix)
                k = np.arange(matrix.shape[1])[kept]
                name = (label(group, others) + ", " if others else "") + f"step {step}"
                name += f" (n={len(data)})"
                colour = f"C{i % 10}"
                ax.semilogy(k, median, style, color=colour, label=name, linewidth=1.1)
                if len(data) > 1:
                    ax.fill_between(k, low, high, color=colour, alpha=0.15, linewidth=0)
        shade_landmarks(ax, landmarks)
        ax.set(title=f"{cell}, {task} gap {gap}" if many_tasks else cell, xlabel="timestep k")
        readable_log_axis(ax.yaxis)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for row in grid:
        row[0].set_ylabel(f"||dL/dh_k|| / its max\nmedian, {_band_label()}")
    fig.tight_layout()
    return fig


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _peak_normalised(profile: np.ndarray) -> np.ndarray:
    peak = profile.max() if profile.max() > 0 else 1.0
    return np.where(profile > 0, profile / peak, np.nan)
