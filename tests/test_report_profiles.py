"""A real tiny sweep (``bpttlab-train -m cell=rnn,gru seed=0,1``) as TensorBoard and
``bpttlab-report --profiles cell=rnn,gru`` see it: run dirs named with their seed, event files
in the run dir itself (TensorBoard names the run by it), the loss families first, and the
overlaid profiles against the npz files averaged here in float64."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_report import BIN, tiny_sweep

from bpttlab.analysis import compare, overlay
from bpttlab.analysis import figures as report_figures
from bpttlab.analysis.records import read_run
from bpttlab.analysis.sweep import group_runs, read_runs

RUNS = [
    "0_rnn_copy4_trunc-None_clip-norm_seed0",
    "1_rnn_copy4_trunc-None_clip-norm_seed1",
    "2_gru_copy4_trunc-None_clip-norm_seed0",
    "3_gru_copy4_trunc-None_clip-norm_seed1",
]


def test_a_runs_value_is_its_group_choice_else_its_config_value_as_written(tmp_path):
    """``bptt`` is a group (its choice in Hydra's record), ``bptt.truncation`` a config key;
    values match as the command line writes them."""
    (tmp_path / ".hydra").mkdir()
    optim = {"lr": 3e-5, "foreach": None, "nesterov": True}
    config = {"seed": 0, "cell": {"kind": "rnn"}, "bptt": {"truncation": 20}, "optim": optim}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"cell": "rnn", "bptt": "truncated", "task": "copy"}
    record = {"hydra": {"runtime": {"choices": choices}}}
    (tmp_path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(record))
    run = read_run(tmp_path)
    assert overlay.setting(run, "bptt") == "truncated"
    assert overlay.setting(run, "bptt.truncation") == 20
    assert overlay.setting(run, "bpt") is overlay.ABSENT
    assert compare.matches("20", 20) and not compare.matches("2", 20)
    assert compare.matches("3e-5", overlay.setting(run, "optim.lr"))
    assert compare.matches("null", overlay.setting(run, "optim.foreach"))
    assert compare.matches("true", overlay.setting(run, "optim.nesterov"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Four runs of 4 steps, probed at steps 0 and 2, validated at 2 and 4."""
    sweep = tmp_path_factory.mktemp("profiles") / "sweep"
    tiny_sweep(sweep, "cell=rnn,gru", "seed=0,1", "cell.hidden_size=4", "task=copy", "task.gap=4")
    return sweep


def report(*args: str) -> subprocess.CompletedProcess:
    command = [str(BIN / "bpttlab-report"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_run_dirs_carry_the_seed_and_their_own_events(sweep):
    """Each run dir is named with its seed and holds its event files (no ``tensorboard/``
    below it); TensorBoard's Time Series, which sorts tag families by name and opens the first
    two, opens on ``train/`` and ``val/``, the one-point families after them."""
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == RUNS
    for name in RUNS:
        run = sweep / name
        assert list(run.glob("events.out.tfevents.*")) and not (run / "tensorboard").exists()
    events = EventAccumulator(str(sweep / RUNS[0]), size_guidance={"images": 0})
    events.Reload()
    tags = [*events.Tags()["scalars"], *events.Tags()["images"]]
    families = sorted({tag.split("/", 1)[0] for tag in tags})
    assert families == ["train", "val", "z_grad_flow", "z_hparams"]


@pytest.mark.slow
def test_profiles_overlay_cells_with_the_geometric_mean_and_range_of_seeds(sweep):
    result = report(str(sweep), "--profiles", "cell=rnn,gru")
    assert result.returncode == 0, result.stderr[-3000:]
    png = sweep / "report" / "profiles_cell.png"
    assert f"profiles: {png}" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = overlay.select(group_runs(read_runs(sweep)), "cell=rnn,gru", None)
    assert chosen.step == 2  # the last step every run probed (steps 0 and 2)
    figure = overlay.overlay_figure(chosen)
    ax = figure.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if line.get_label()[0] != "_"}
    assert list(lines) == ["rnn (n=2)", "gru (n=2)"]
    bands = ax.collections
    for (cell, line), band in zip(lines.items(), bands, strict=True):
        cell = cell.split()[0]
        rows = np.stack(
            [
                np.load(sweep / name / "grad_flow" / "step_000002.npz")["h_layer0"]
                for name in RUNS
                if f"_{cell}_" in name
            ]
        ).astype(np.float64)
        geometric = np.exp(np.log(rows).mean(axis=0))
        np.testing.assert_allclose(line.get_ydata(), geometric, rtol=1e-12)
        edges = band.get_paths()[0].vertices
        for k in range(rows.shape[1]):
            at_k = edges[np.isclose(edges[:, 0], k), 1]
            assert np.isclose(at_k, rows[:, k].min()).any()
            assert np.isclose(at_k, rows[:, k].max()).any()
    shaded = {text.get_text() for text in ax.get_legend().get_texts()}
    assert {"symbols", "marker", "recall"} <= shaded  # copy's landmarks, shared by the cells


@pytest.mark.slow
def test_the_reports_legends_name_no_option_a_cell_lacks(sweep):
    """rnn has nonlinearity tanh, gru none: the labels say "gru", never "nonlinearity=None"."""
    groups = group_runs(read_runs(sweep))
    legend = report_figures.curves_figure(groups).axes[0].get_legend().get_texts()
    labels = [text.get_text() for text in legend]
    assert "gru (n=2)" in labels and not [t for t in labels if "None" in t]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profiles", "cell=rnn,lstm"], "no finished run has cell=lstm (values here: gru, rnn)"),
        (["--profiles", "cell=rnn,gru", "--step", "3"], "--step 3: not probed in every run"),
        (["--profiles", "cel=rnn,gru"], "no run has the config key or group 'cel'"),
        (["--profiles", "cell"], "write KEY=A,B[,...]"),
        (["--step", "2"], "--step is the step of --profiles"),
    ],
)
def test_profiles_refuses_what_it_cannot_draw_before_writing_anything(
    sweep, tmp_path, args, message
):
    result = report(str(sweep), "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "bpttlab-report: error:" in result.stderr
    assert not (tmp_path / "out").exists()
