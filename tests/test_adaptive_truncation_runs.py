"""``bptt=auto`` in real `bpttlab-train` runs: every choice of K reaches TensorBoard (read back
by its EventAccumulator), metrics.json and the checkpoint; a run interrupted by SIGTERM and
resumed across a change of K ends bit-identical to a run never interrupted."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from signal import SIGTERM

import numpy as np
import pytest
import torch
from conftest import signal_after_first_checkpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CLI = str(Path(sys.executable).parent / "bpttlab-train")
ARGS = [
    "bptt=auto",
    "threads=1",  # two threads on a loaded 2-core machine made these runs 10x slower
    "bptt.max_bias=0.05",
    "bptt.adapt_every_n_steps=20",
    "cell=gru",
    "cell.hidden_size=8",
    "module.batch_size=8",
    "module.val_batches=1",
    "module.stop_when_solved=false",
    "task=copy",
    "task.gap=6",
    "optim.lr=0.03",
    "callbacks.progress_bar=null",
    "callbacks.checkpoint.every_n_train_steps=5",
    "callbacks.grad_flow.every_n_steps=10",
    "callbacks.grad_flow.figures_every_n_steps=1000",
    "trainer.val_check_interval=20",
]
LOGGED = ("truncation", "bias", "relative_error", "cosine", "decay_per_step", "measured")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def history(run_dir: Path) -> list[dict]:
    """metrics.json's choices of K, without their (timed) cost."""
    records = json.loads((run_dir / "metrics.json").read_text())["truncation_history"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def logged(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {key: [(e.step, e.value) for e in events.Scalars(f"bptt/{key}")] for key in LOGGED}


def profiles(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {p.name: dict(np.load(p)) for p in sorted((run_dir / "grad_flow").glob("*.npz"))}


def test_every_choice_reaches_tensorboard_metrics_and_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    run([*ARGS, "trainer.max_steps=60", f"hydra.run.dir={run_dir}"], tmp_path)
    choices = history(run_dir)
    assert [c["step"] for c in choices][:1] == [0] and len(choices) >= 3
    steps = [c["step"] for c in choices]
    assert all(b - a >= 20 for a, b in zip(steps, steps[1:], strict=False))
    scalars = logged(run_dir)
    for key in LOGGED:  # float32 in the event file
        expected = [(c["step"], pytest.approx(c[key], rel=1e-6, abs=1e-30)) for c in choices]
        assert scalars[key] == expected, key
    assert all(c["bias"] <= 0.05 for c in choices)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    kept = saved["bpttlab_truncation"]["history"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in kept] == choices


@pytest.mark.slow
def test_sigterm_and_resume_across_a_change_of_truncation_equals_an_uninterrupted_run(tmp_path):
    args = [*ARGS, "trainer.max_steps=200"]
    whole = tmp_path / "whole"
    run([*args, f"hydra.run.dir={whole}"], tmp_path)

    cut = tmp_path / "cut"
    command = [CLI, *args, f"hydra.run.dir={cut}"]
    returncode, stdout, stderr = signal_after_first_checkpoint(command, tmp_path, cut, SIGTERM)
    assert returncode == 128 + SIGTERM.value, stderr[-3000:]
    stopped_at = json.loads((cut / "metrics.json").read_text())["steps"]
    in_force = [c["truncation"] for c in history(whole) if c["step"] < stopped_at][-1]
    later = [c["truncation"] for c in history(whole) if c["step"] >= stopped_at]
    assert any(k != in_force for k in later), (in_force, later)  # K changes after the cut

    resume = stdout.strip().splitlines()[-1].split("resume with: ", 1)[1]
    run(shlex.split(resume)[1:], tmp_path)
    assert history(cut) == history(whole)
    w1 = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    w2 = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert logged(cut) == logged(whole)
    p1, p2 = profiles(whole), profiles(cut)  # gradient-flow probes, windows as K set them
    assert p1.keys() == p2.keys() and len(p1) >= 10
    assert all(np.array_equal(p1[f][k], p2[f][k]) for f in p1 for k in p1[f])
