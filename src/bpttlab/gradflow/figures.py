"""Figures of gradient-flow profiles, as matplotlib Figure objects (no pyplot, no global
backend): shared by the GradientFlow callback and bpttlab-report; ``ProbeFigures`` draws a
run's probes into TensorBoard."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator, NullFormatter

FAMILY = "z_grad_flow"
"""The TensorBoard tags' prefix of every figure and scalar GradientFlow logs. TensorBoard's Time
Series sorts tag families by name and opens the first two: this one sorts after ``train/`` and
``val/``, so that the loss curves, not one-point probe statistics, fill its first screen."""
CARD_INCHES, CARD_DPI = (5.0, 2.8), 140
"""TensorBoard figures: 700 x 392 pixels. TensorBoard shrinks an image to the width of its
card (about 350 pixels in a 1400 pixels wide window), so what keeps text readable there is its
size relative to the figure's width: a small figure with large text (a higher dpi reads the
same on a card and only draws slower)."""
CARD_STYLE = {
    "font.size": 12,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 10.5,
    "lines.linewidth": 1.6,
}
"""Font sizes (points) of the TensorBoard figures; docs/tensorboard.md says what they measure
on screen."""
TINY = 1e-30  # floor for log10 of a zero norm
LANDMARK_COLOURS = colormaps["Pastel1"].colors


class ReadableLogLocator(Locator):
    """Major ticks of a log axis at powers of ten (every n-th one, at most ``most``); where fewer
    than two of them fall in view, at 1, 2 and 5 times them, then at every multiple, then at a
    linear step: at least two labelled ticks however little the data span."""

    def __init__(self, most: int = 8):
        self.most = most

    def __call__(self) -> np.ndarray:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        vmin, vmax = sorted((vmin, vmax))
        if not (0 < vmax < math.inf):
            return np.array([])
        vmin = vmin if vmin > 0 else vmax / 10
        low, high = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
        stride = max(1, math.ceil((high - low + 1) / self.most))
        decades = range(low - low % stride, high + 1, stride)
        for multiples in ((1,), (1, 2, 5), range(1, 10)):
            ticks = np.array([m * 10.0**e for e in decades for m in multiples])
            inside = ticks[(ticks >= vmin * (1 - 1e-9)) & (ticks <= vmax * (1 + 1e-9))]
            if len(inside) >= 2:
                return inside
            decades = range(low, high + 1)
        return MaxNLocator(nbins=4).tick_values(vmin, vmax)


def plain_number(value: float, _position: object = None) -> str:
    """A tick label as a plain number: "2", "0.05", "1e-05" (no mathtext "2×10⁰", whose parsing
    also took half the time of drawing a figure)."""
    return f"{value:g}"


def readable_log_axis(axis: Axis) -> None:
    """Give a log-scale ``axis`` (``ax.yaxis``) at least two labelled ticks, labelled as plain
    numbers. Call it after the last plot on the axes: plotting with ``semilogy`` resets it."""
    axis.set_major_locator(ReadableLogLocator())
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(NullFormatter())


def shade_landmarks(
    ax: Axes, landmarks: dict[str, tuple[int, int]], colours=LANDMARK_COLOURS
) -> None:
    """Shade each task landmark's timesteps [start, end) on ``ax``, labelled for the legend."""
    for i, (label, (start, end)) in enumerate(landmarks.items()):
        colour = colours[i % len(colours)]
        ax.axvspan(start - 0.5, end - 0.5, color=colour, alpha=0.6, label=label)


def card_figure() -> Figure:
    """An empty figure of TensorBoard's size; draw it under ``rc_context(CARD_STYLE)``."""
    return Figure(figsize=CARD_INCHES, dpi=CARD_DPI)


@rc_context(CARD_STYLE)
def heatmap_figure(history: np.ndarray, steps: list[int], title: str) -> Figure:
    """log10 ||dL/dh_k||: timestep k across, training step down, with a colour bar."""
    fig = card_figure()
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
    fig.tight_layout(pad=0.4)
    return fig


def colour_floor(history: np.ndarray) -> float | None:
    """Colour-scale floor: the smallest non-zero norm (at most 12 decades below the peak), so
    exact zeros (beyond a truncation) show as the floor without crushing the scale."""
    positive = history[history > 0]
    if not positive.size:
        return None
    return max(float(np.log10(positive.min())), float(np.log10(positive.max())) - 12)


@rc_context(CARD_STYLE)
def profile_figure(
    profiles: dict[str, np.ndarray],
    step: int,
    landmarks: dict[str, tuple[int, int]],
    boundaries: list[int],
) -> Figure:
    """||dL/dh_k|| against k on a log scale, with the task's landmarks and truncation bounds.
    A profile named "full <name>" is drawn dashed in the colour of "<name>"."""
    fig = card_figure()
    ax = fig.add_subplot()
    colour_of: dict[str, str] = {}
    for name, profile in profiles.items():
        base = name.removeprefix("full ")
        colour = colour_of.setdefault(base, f"C{len(colour_of)}")
        style = "--" if name != base else "-"
        ax.semilogy(np.where(profile > 0, profile, np.nan), style, color=colour, label=name)
    shade_landmarks(ax, landmarks)
    for j, boundary in enumerate(boundaries):
        ax.axvline(
            boundary - 0.5,
            color="grey",
            linestyle=":",
            linewidth=1.2,
            label="truncation" if j == 0 else None,
        )
    readable_log_axis(ax.yaxis)
    ax.set(xlabel="timestep k", ylabel="||dL/dh_k||", title=f"gradient through time, step {step}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout(pad=0.4)
    return fig


class ProbeFigures:
    """GradientFlow's TensorBoard figures: a heatmap per state (the history of every probe's
    log10 norms, so no row is lost), the profile figure of the latest probe (log scale, task
    landmarks, truncation boundaries) and, under a tag of its own (``initial_profile``), that of
    the run's first probe: TensorBoard shows ten images per tag, so after ten drawings the
    first is gone from ``profile``.

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
            writer.add_figure(f"{FAMILY}/heatmap/{name}", fig, step)
        lines = dict(profiles) | {f"full {k}": v for k, v in full.items()}
        tags = ["profile"] + (["initial_profile"] if step == self.steps[0] else [])
        for tag in tags:
            figure = profile_figure(lines, step, landmarks, boundaries)
            writer.add_figure(f"{FAMILY}/{tag}", figure, step)
        self.last_drawn, self._undrawn = step, None
