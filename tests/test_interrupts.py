"""SIGINT and SIGTERM sent to a real `bpttlab-train`: the run stops at a batch boundary, says
so in metrics.json and in one line with the command that resumes it, and that command ends
bit-identical to a run never interrupted (metrics, weights, gradient profiles, validations)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import signal_after_first_checkpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CLI = str(Path(sys.executable).parent / "bpttlab-train")
ARGS = [
    "cell.hidden_size=8",
    "module.batch_size=8",
    "module.val_batches=1",
    "module.stop_when_solved=false",
    "task=copy",
    "task.gap=6",
    "callbacks.progress_bar=null",
    "callbacks.checkpoint.every_n_train_steps=5",
    "callbacks.grad_flow.every_n_steps=10",
    "callbacks.grad_flow.figures_every_n_steps=1000",
]

STEPS = 60
"""Long enough that the signal, sent within 0.05 s of the first checkpoint (step 5), lands
mid-run (it landed at steps 6 to 14 on a loaded 2-core machine); past the validation at step 50
of the third schedule."""

EVERY_BATCH = "trainer.val_check_interval=1"
"""A validation after every batch: the signal lands in a batch that a validation follows, or
in the validation itself, the two places where a resume could skip or repeat one."""

pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def validations(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every validation, as TensorBoard reads them back."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return sorted((e.step, e.value) for e in events.Scalars("val/loss"))


def logged_validations(run_dir: Path) -> list[str]:
    """train.log's validation lines, without their time stamps."""
    lines = (run_dir / "train.log").read_text().splitlines()
    return [line.split("] ", 1)[1] for line in lines if "] validation at step" in line]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def profiles(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {p.name: dict(np.load(p)) for p in sorted((run_dir / "grad_flow").glob("*.npz"))}


@pytest.mark.parametrize(
    ("sig", "schedule"),
    [
        (signal.SIGINT, ["bptt.truncation=null", EVERY_BATCH]),
        (signal.SIGTERM, ["bptt.truncation=4", EVERY_BATCH]),
        (signal.SIGTERM, ["bptt.truncation=4", "trainer.val_check_interval=50"]),
    ],
    ids=["SIGINT-full-BPTT", "SIGTERM-TBPTT", "SIGTERM-TBPTT-validating-every-50"],
)
def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, sig, schedule):
    args = [*ARGS, *schedule, f"trainer.max_steps={STEPS}"]
    whole = tmp_path / "whole"
    run([*args, f"hydra.run.dir={whole}"], tmp_path)

    cut = tmp_path / "cut"
    command = [CLI, *args, f"hydra.run.dir={cut}"]
    delay = random.uniform(0.0, 0.05)
    returncode, stdout, stderr = signal_after_first_checkpoint(command, tmp_path, cut, sig, delay)
    assert returncode == 128 + sig.value, stderr[-3000:]
    metrics = json.loads((cut / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and 0 < metrics["steps"] < STEPS
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"interrupted at step {metrics['steps']}; resume with: bpttlab-train ")
    resume = last.split("resume with: ", 1)[1]
    # the checkpoint is the state at the step the run stopped
    checkpoint = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == metrics["steps"]

    import shlex

    run(shlex.split(resume)[1:], tmp_path)
    final = {k: v for k, v in json.loads((cut / "metrics.json").read_text()).items()}
    expected = json.loads((whole / "metrics.json").read_text())
    final.pop("wall_seconds"), expected.pop("wall_seconds")
    assert final == expected and final["status"] == "completed"
    w1, w2 = weights(whole), weights(cut)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    p1, p2 = profiles(whole), profiles(cut)
    assert p1.keys() == p2.keys()
    assert all(np.array_equal(p1[f][k], p2[f][k]) for f in p1 for k in p1[f])
    assert validations(cut) == validations(whole)
    assert logged_validations(cut) == logged_validations(whole)
