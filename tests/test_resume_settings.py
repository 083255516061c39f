"""A resume may change the settings that change no number (``MAY_CHANGE``): a run stopped and
resumed with them changed ends bit-identical to a run never stopped; a key that changes
numbers is still refused, and a sweep's resume reads the same list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import SMALL, config

from bpttlab import checks
from bpttlab.cli.run import train
from bpttlab.runs.resume import check_resume
from bpttlab.runs.sweepdir import resumable_overrides

ARGS = [*SMALL, "task=copy", "module.stop_when_solved=false", "trainer.val_check_interval=2"]
ARGS += ["callbacks.grad_flow.every_n_steps=2", "callbacks.grad_flow.figures_every_n_steps=100"]
FIRST = ["trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]
"""How the stopped run was started: the issue's batch-job settings."""
HARMLESS = [
    "trainer.log_every_n_steps=1",
    "callbacks.grad_flow.figures_every_n_steps=1",
    "keep_freed_memory=false",
]
"""Changed on resume, with the progress bar back on (FIRST left out)."""


def outcome(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """metrics.json but its wall time, the final weights, and every gradient profile."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("wall_seconds")
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    profiles = {
        f"{p.name}/{key}": value
        for p in sorted((run_dir / "grad_flow").glob("*.npz"))
        for key, value in np.load(p).items()
    }
    return metrics, checkpoint["state_dict"], profiles


def test_a_resume_that_changes_only_harmless_settings_ends_bit_identical(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train(config(*ARGS, *FIRST, "trainer.max_steps=6", run_dir=whole))["steps"] == 6
    assert train(config(*ARGS, *FIRST, "trainer.max_steps=4", run_dir=cut))["steps"] == 4
    resumed = config(*ARGS, *HARMLESS, "trainer.max_steps=6", "resume=true", run_dir=cut)
    assert train(resumed)["steps"] == 6

    (m1, w1, p1), (m2, w2, p2) = outcome(whole), outcome(cut)
    assert m1 == m2 and m1["status"] == "completed"
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert p1.keys() == p2.keys() and len(p1) > 0
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)


@pytest.mark.parametrize("line", ["flush_subnormals=false", "threads=2", "compiled_kernels=false"])
def test_a_resume_that_changes_a_number_changing_key_is_refused(tmp_path, line):
    assert train(config(*ARGS, *FIRST, "trainer.max_steps=2", run_dir=tmp_path))["steps"] == 2
    other = config(*ARGS, *FIRST, "trainer.max_steps=4", "resume=true", line, run_dir=tmp_path)
    with pytest.raises(checks.ConfigError) as error:
        check_resume(other)
    assert str(error.value).endswith(f"this command changes {line.split('=')[0]}")


def test_a_sweeps_resume_leaves_out_the_same_keys():
    lines = [*HARMLESS, *FIRST, "trainer.max_steps=9", "seed=1,2", "flush_subnormals=false"]
    assert resumable_overrides(lines) == ["seed=1,2", "flush_subnormals=false"]
