"""Figures of gradient-flow profiles, as matplotlib Figure objects (no pyplot, no global
backend): shared by the GradientFlow callback and bpttlab-report; ``ProbeFigures`` draws a
run's probes into TensorBoard."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullFormatter

TINY = 1e-30  # floor for log10 of a zero norm
LANDMARK_COLOURS = colormaps["Pastel1"].colors


def shade_landmarks(ax: Axes, landmarks: dict[str, tuple[int, int]]) -> None:
    """Shade each task landmark's timesteps [start, end) on ``ax``, labelled for the legend."""
    for i, (label, (start, end)) in enumerate(landmarks.items()):
        colour = LANDMARK_COLOURS[i % len(LANDMARK_COLOURS)]
        ax.axvspan(start - 0.5, end - 0.5, color=colour, alpha=0.6, label=label)


def heatmap_figure(history: np.ndarray, steps: list[int], title: str) -> Figure:
    """log10 ||dL/dh_k||: timestep k across, training step down, with a colour bar."""
    fig = Figure(figsize=(7, 3.2), dpi=80)
    ax = fig.add_subplot()
    image = ax.imshow(
        np.log10(np.maximum(history, TINY)),
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(-0.5, history.shape[1] - 0.5, len(steps) - 0.5, -0.5),
        vmin=colour_floor(history),
    )
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
    ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
    ax.set(xlabel="timestep k", ylabel="training step", title=title)
    fig.colorbar(image, ax=ax, label="log10 norm", pad=0.02)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.16, top=0.9)
    return fig


def colour_floor(history: np.ndarray) -> float | None:
    """Colour-scale floor: the smallest non-zero norm (at most 12 decades below the peak), so
    exact zeros (beyond a truncation) show as the floor without crushing the scale."""
    positive = history[history > 0]
    if not positive.size:
        return None
    return max(float(np.log10(positive.min())), float(np.log10(positive.max())) - 12)


def profile_figure(
    profiles: dict[str, np.ndarray],
    step: int,
    landmarks: dict[str, tuple[int, int]],
    boundaries: list[int],
) -> Figure:
    """||dL/dh_k|| against k on a log scale, with the task's landmarks and truncation bounds.
    A profile named "full <name>" is drawn dashed in the colour of "<name>"."""
    fig = Figure(figsize=(7, 3.2), dpi=80)
    ax = fig.add_subplot()
    colour_of: dict[str, str] = {}
    for name, profile in profiles.items():
        base = name.removeprefix("full ")
        colour = colour_of.setdefault(base, f"C{len(colour_of)}")
        style = "--" if name != base else "-"
        ax.semilogy(
            np.where(profile > 0, profile, np.nan), style, color=colour, label=name, linewidth=1.2
        )
    shade_landmarks(ax, landmarks)
    for j, boundary in enumerate(boundaries):
        ax.axvline(
            boundary - 0.5,
            color="grey",
            linestyle=":",
            linewidth=0.8,
            label="truncation" if j == 0 else None,
        )
    # "1e-05", not mathtext's 10 to the -5: its parsing took half the time of drawing the figure
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="timestep k", ylabel="||dL/dh_k||", title=f"gradient through time, step {step}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.subplots_adjust(left=0.13, right=0.78, bottom=0.16, top=0.9)
    return fig


class ProbeFigures:
    """GradientFlow's TensorBoard figures: a heatmap per state (the history of every probe's
    log10 norms, so no row is lost) and the profile figure of the latest probe (log scale, task
    landmarks, truncation boundaries).

    Figures cost far more than a probe, so they are drawn on the first probe, then on the first
    probe at least ``every_n_steps`` after the last drawing, and on the last probe of the run
    (``draw_undrawn``). Without a TensorBoard writer the history is kept and nothing is drawn.
    """

    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps
        self.history: dict[str, list[np.ndarray]] = {}
        self.steps: list[int] = []
        self.last_drawn: int | None = None
        self._undrawn: tuple | None = None  # the arguments of ``_draw`` for the last probe

    def add(self, writer, step: int, profiles, full, landmarks, boundaries) -> None:
        """Add the probe of ``step`` (``profiles`` and its ``full`` reference, by state name) to
        the history; draw its figures into ``writer`` if they are due."""
        self.steps.append(step)
        for name, profile in profiles.items():
            self.history.setdefault(name, []).append(profile)
        if writer is None:
            return
        self._undrawn = writer, step, profiles, full, landmarks, boundaries
        if self.last_drawn is None or step - self.last_drawn >= self.every_n_steps:
            self.draw_undrawn()

    def draw_undrawn(self) -> None:
        """The figures of the last probe, unless they are drawn already."""
        if self._undrawn is None:
            return
        writer, step, profiles, full, landmarks, boundaries = self._undrawn
        for name in profiles:
            fig = heatmap_figure(np.stack(self.history[name]), self.steps, f"log10 ||dL/d{name}||")
            writer.add_figure(f"grad_flow/heatmap/{name}", fig, step)
        lines = dict(profiles) | {f"full {k}": v for k, v in full.items()}
        writer.add_figure(
            "grad_flow/profile", profile_figure(lines, step, landmarks, boundaries), step
        )
        self.last_drawn, self._undrawn = step, None
