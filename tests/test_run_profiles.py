"""A run's gradient profiles as data (``bpttlab.gradflow.load_run``), read back from the npz
files a real fit wrote, against each file read alone and against the task's own definition of
its landmarks and the truncation's windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import fit, small_module

from bpttlab.gradflow import GradientFlow, RunProfiles, load_profile, load_run
from bpttlab.tasks import CopyTask


@pytest.fixture(scope="module")
def truncated_fit(tmp_path_factory) -> tuple[Path, GradientFlow]:
    """An LSTM under TBPTT(10) on copy (gap 5, T = 25: three optimiser steps per batch), probed
    at steps 0, 3, 6 with the full-BPTT reference, its npz files in the logger's dir as a
    library fit leaves them."""
    root = tmp_path_factory.mktemp("fit")
    module = small_module(CopyTask(gap=5), "lstm", truncation=10)
    flow = GradientFlow(every_n_steps=3, full_reference=True, figures_every_n_steps=1000)
    trainer = fit(module, root, steps=9, callbacks=[flow])
    return Path(trainer.log_dir), flow


def test_load_run_holds_every_probe_of_every_state(truncated_fit):
    log_dir, flow = truncated_fit
    files = sorted(flow.profile_dir.glob("step_*.npz"))
    assert flow.profile_dir == log_dir / "grad_flow"
    assert [f.name for f in files] == ["step_000000.npz", "step_000003.npz", "step_000006.npz"]
    run = load_run(log_dir)
    assert isinstance(run, RunProfiles) and run.directory == flow.profile_dir
    assert run.steps.tolist() == [0, 3, 6]
    assert set(run.profiles) == {"h_layer0", "c_layer0"} == set(run.full)
    assert run.seq_len == 25
    for i, path in enumerate(files):
        saved = load_profile(path)
        for key in ("h_layer0", "c_layer0"):
            assert run.profiles[key].shape == (3, 25)
            np.testing.assert_array_equal(run.profiles[key][i], saved[key])
            np.testing.assert_array_equal(run.full[key][i], saved[f"full_{key}"])
            np.testing.assert_array_equal(run.at(int(saved["step"]))[key], saved[key])


def test_load_run_holds_the_tasks_landmarks_and_the_truncation(truncated_fit):
    """Copy (Arjovsky et al.) with gap 5: 10 symbols at 0..9, the marker at gap + 9 = 14, the
    recall at the last 10 steps 15..24; TBPTT(10) over T = 25 starts windows at 10 and 20."""
    log_dir, flow = truncated_fit
    run = load_run(log_dir)
    assert run.landmarks == {"symbols": (0, 10), "marker": (14, 15), "recall": (15, 25)}
    assert run.truncation == 10 and run.boundaries == (10, 20)
    for other in (flow.profile_dir, str(log_dir)):  # the profile dir itself, a str path
        again = load_run(other)
        np.testing.assert_array_equal(again.profiles["c_layer0"], run.profiles["c_layer0"])


def test_load_run_says_what_is_missing(tmp_path, truncated_fit):
    with pytest.raises(FileNotFoundError, match="run_dir='.*nowhere' is not a directory"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "grad_flow").mkdir()
    with pytest.raises(ValueError, match="holds no gradient profiles"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match=r"step=2 was not probed .*\(probed: 0, 3, 6\)"):
        load_run(truncated_fit[0]).at(2)
