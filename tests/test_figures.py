"""Figures you can read: the tick labels of every log axis as drawn (at least two, plain
numbers), legends without options a group does not have, profiles.png split by gap, and the
initialisation profile kept in TensorBoard after more probes than it shows per tag."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import fit, small_module
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from bpttlab.analysis import figures as report_figures
from bpttlab.analysis.sweep import group_runs, read_runs
from bpttlab.gradflow import GradientFlow
from bpttlab.gradflow.figures import FAMILY, profile_figure, readable_log_axis
from bpttlab.gradflow.profile import save_profile
from bpttlab.tasks import CopyTask

TENSORBOARD_IMAGES_PER_TAG = 10  # `tensorboard --samples_per_plugin` default for images


def labelled_ticks(figure: Figure, which: int = 0) -> list[tuple[float, str]]:
    """(value, label) of the y ticks in view of the figure's ``which``-th axes, as drawn."""
    FigureCanvasAgg(figure).draw()
    axis = figure.axes[which].yaxis
    low, high = sorted(axis.get_view_interval())
    ticks = [(tick.get_loc(), tick.label1) for tick in axis.get_major_ticks()]
    return [
        (value, text.get_text())
        for value, text in ticks
        if low <= value <= high and text.get_visible() and text.get_text()
    ]


def assert_readable(ticks: list[tuple[float, str]]) -> None:
    """At least two labels, each a plain number equal to its tick (3 significant digits)."""
    assert len(ticks) >= 2, ticks
    for value, text in ticks:
        assert float(text) == pytest.approx(value, rel=1e-3), (value, text)


@pytest.mark.parametrize(
    ("low", "high"),
    [(0.011, 0.019), (0.21, 0.49), (1.02, 1.08), (1e-20, 1.0), (3e-3, 4e-1)],
)
def test_the_profile_figure_labels_at_least_two_ticks(low, high):
    """Data within less than a decade (the issue's single "1e-02"), within 1-2-5 steps, within
    10 %, and over twenty decades (at most 8 labels there)."""
    profile = np.geomspace(low, high, 30)
    ticks = labelled_ticks(profile_figure({"h_layer0": profile}, 7, {}, []))
    assert_readable(ticks)
    assert len(ticks) <= 9


def test_a_log_axis_reads_2_not_2_times_10_to_the_0():
    figure = Figure()
    ax = figure.add_subplot()
    ax.semilogy([0, 1, 2], [1.5, 2.0, 2.6])
    readable_log_axis(ax.yaxis)
    ticks = labelled_ticks(figure)
    assert_readable(ticks)
    assert (2.0, "2") in ticks


def write_run(root: Path, name: str, cell: dict, seed: int, gap: int, losses: list[float]) -> Path:
    """A run dir as bpttlab-train leaves it, with real event files and npz profiles."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "seed": seed,
        "cell": cell,
        "task": {"_target_": "bpttlab.tasks.CopyTask", "gap": gap},
        "bptt": {"truncation": None},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps({"status": "completed", "solved": False}))
    with SummaryWriter(str(run)) as writer:
        for step, loss in enumerate(losses):
            writer.add_scalar("val/normalized_loss", loss, step * 10)
    task = CopyTask(gap=gap)
    (run / "grad_flow").mkdir()
    for step in (0, 10):
        profile = np.geomspace(0.5, 1.0, task.seq_len) * (1 + seed)
        save_profile(
            run / "grad_flow" / f"step_{step:06d}.npz",
            step,
            task.seq_len,
            None,
            [],
            task.landmarks(),
            {"h_layer0": profile},
            {},
        )
    return run


@pytest.fixture
def two_cells_two_gaps(tmp_path) -> Path:
    """rnn (tanh) and gru (no nonlinearity option) on copy at gaps 5 and 10, two seeds each."""
    root = tmp_path / "sweep"
    for n, (cell, gap, seed) in enumerate(
        (c, g, s) for c in ("rnn", "gru") for g in (5, 10) for s in (0, 1)
    ):
        options = {"kind": cell} | ({"nonlinearity": "tanh"} if cell == "rnn" else {})
        losses = [1.05 - 0.01 * i - 0.02 * seed for i in range(5)]
        write_run(root, f"{n}_{cell}_gap{gap}_seed{seed}", options, seed, gap, losses)
    return root


def test_curves_legend_has_no_none_and_its_log_axis_reads(two_cells_two_gaps):
    """The curves span 0.99 to 1.05 (less than a decade): still two plain labels; the GRU's
    legend entry says "gru", not "gru nonlinearity=None"."""
    groups = group_runs(read_runs(two_cells_two_gaps))
    figure = report_figures.curves_figure(groups)
    assert_readable(labelled_ticks(figure))
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert not [t for t in legend if "None" in t]
    assert "gru gap=5 (n=2)" in legend and "rnn nonlinearity=tanh gap=5 (n=2)" in legend


def test_profiles_png_has_a_panel_per_cell_and_gap_shaded_with_its_own_landmarks(
    two_cells_two_gaps,
):
    groups = group_runs(read_runs(two_cells_two_gaps))
    figure = report_figures.profiles_figure(groups)
    visible = [ax for ax in figure.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in visible]
    assert titles == ["gru, copy gap 5", "gru, copy gap 10", "rnn, copy gap 5", "rnn, copy gap 10"]
    for ax, title in zip(visible, titles, strict=True):
        gap = int(title.rsplit(" ", 1)[1])
        marker = gap + 9  # copy: 10 symbols, then the marker after gap - 1 blanks
        spans = sorted(
            (round(p.get_x() + 0.5), round(p.get_x() + p.get_width() + 0.5)) for p in ax.patches
        )
        assert spans == [(0, 10), (marker, marker + 1), (marker + 1, gap + 20)]
        assert not [t for t in ax.get_legend_handles_labels()[1] if "None" in t]
    assert_readable(labelled_ticks(figure))  # the panels share it: labelled on the first


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_initial_profile_stays_in_tensorboard_after_ten_probes(tmp_path):
    """Twelve probes, each drawn: TensorBoard (10 images per tag) no longer shows step 0 under
    ``profile``, but ``initial_profile`` holds that one image, at the size the docs state."""
    module = small_module(CopyTask(gap=3), "rnn")
    flow = GradientFlow(every_n_steps=1, figures_every_n_steps=1)
    fit(module, tmp_path, steps=12, callbacks=[flow])
    guidance = {"images": TENSORBOARD_IMAGES_PER_TAG}
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance=guidance)
    events.Reload()
    initial = events.Images(f"{FAMILY}/initial_profile")
    assert [image.step for image in initial] == [0]
    latest = events.Images(f"{FAMILY}/profile")
    assert len(latest) == TENSORBOARD_IMAGES_PER_TAG and latest[-1].step == 11
    assert png_size(initial[0].encoded_image_string) == (700, 392)
    heatmap = events.Images(f"{FAMILY}/heatmap/h_layer0")[-1]
    assert png_size(heatmap.encoded_image_string) == (700, 392)
