"""``imports=[...]``: the worked example of docs/extending.md (its cell module written into a
tmp dir, its commands run there as real ``bpttlab-train`` processes, the sweep on two joblib
workers), a task of the user's own, and the user cell's options checked as bpttlab's own (the
refused command lines one after another in one fresh interpreter, as test_docs drives them)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_docs import ROOT, drive, fenced_blocks, scaled

CLI = str(Path(sys.executable).parent / "bpttlab-train")
EXAMPLE = ROOT / "docs" / "extending.md"
MY_TASKS = '''
import math
from dataclasses import dataclass

import torch

from bpttlab import Batch, Task


@dataclass
class FirstTokenTask(Task):
    """Name, at the last step, the first of gap + 1 random tokens."""

    gap: int = 10
    input_size = output_size = 4
    baseline_loss = math.log(4)

    @property
    def seq_len(self) -> int:
        return self.gap + 1

    def generate(self, batch_size, generator):
        tokens = torch.randint(0, 4, (batch_size, self.seq_len), generator=generator)
        return Batch.answered_at_end(tokens, tokens[:, :1])
'''


def example() -> tuple[str, list[list[str]]]:
    """docs/extending.md's cell module and the commands that use it."""
    blocks = fenced_blocks(EXAMPLE)
    (index,) = [i for i, b in enumerate(blocks) if '@register("leaky")' in b.text]
    module, commands = blocks[index], blocks[index + 1]
    assert commands.language == "bash"
    return module.text, [shlex.split(line) for line in commands.text.splitlines() if line]


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def saved(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


@pytest.mark.slow
def test_the_documented_cell_trains_and_sweeps_on_joblib_workers(tmp_path):
    module, commands = example()
    (tmp_path / "my_cells.py").write_text(module)
    (run, sweep) = commands
    run_dir, sweep_dir = tmp_path / "run", tmp_path / "sweep"
    single = cli([*scaled(run)[1:], f"hydra.run.dir={run_dir}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert (saved(run_dir)["cell"]["kind"], saved(run_dir)["cell"]["leak"]) == ("leaky", 0.2)
    assert '"status": "completed"' in (run_dir / "metrics.json").read_text()

    workers = [a for a in scaled(sweep)[1:] if not a.startswith("hydra.launcher.n_jobs=")]
    swept = cli([*workers, "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    runs = sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
    assert sorted(saved(r)["cell"]["leak"] for r in runs) == [0.2, 0.8]
    for r in runs:
        assert '"status": "completed"' in (r / "metrics.json").read_text()


@pytest.mark.slow
def test_a_task_of_your_own_and_the_options_of_your_cell(tmp_path):
    module, _ = example()
    (tmp_path / "my_cells.py").write_text(module)
    (tmp_path / "my_tasks.py").write_text(MY_TASKS)
    small = ["cell.hidden_size=4", "module.batch_size=4", "module.val_batches=1"]
    small += ["trainer.max_steps=2", "trainer.val_check_interval=1", "task.gap=5"]
    run_dir = tmp_path / "run"
    chosen = ["imports=[my_cells,my_tasks]", "cell=leaky", "task=first_token"]
    done = cli([*chosen, *small, f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert saved(run_dir)["task"] == {"_target_": "my_tasks.FirstTokenTask", "gap": 5}
    elsewhere = tmp_path / "elsewhere"  # where my_tasks cannot be imported
    elsewhere.mkdir()
    report = subprocess.run(
        [str(Path(CLI).parent / "bpttlab-report"), str(run_dir), "--out", str(elsewhere / "r")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert (elsewhere / "r" / "report.csv").exists()

    refused = {
        "cell.leak=1.5": "cell: cannot be built from this config: leak=1.5 is invalid",
        "cell.leek=0.3": "is invalid: cell.leek accepts nothing: there is no such key",
    }
    without = ["bpttlab-train", "cell=leaky", *small]  # not imported: not a choice; run first
    argvs = [without, *(["bpttlab-train", *chosen, *small, line] for line in refused)]
    (done,) = drive([{"cwd": str(tmp_path), "argvs": argvs, "keep_going": True}])
    assert done[0]["code"] == 2
    assert "cell='leaky' is invalid: cell accepts one of" in done[0]["err"]
    for message, result in zip(refused.values(), done[1:], strict=True):
        assert result["code"] == 2, result["err"][-3000:]
        (only,) = result["err"].strip().splitlines()
        assert only.startswith("bpttlab-train: error: ") and message in only
    assert not (tmp_path / "outputs").exists()
