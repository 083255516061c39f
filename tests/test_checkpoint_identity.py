"""Checkpoints carry their identity: a checkpoint records the run that wrote it and a checksum,
so that no command continues a run from another run's checkpoint or a damaged one, overwrites
another run's checkpoint, or rewrites a finished run; and the exit status says what happened."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from test_train import SMALL, config

from bpttlab import checks
from bpttlab.cli.run import train
from bpttlab.runs.resume import check_resume
from bpttlab.runs.seal import SEAL, seal_problem, sealed

CLI = str(Path(sys.executable).parent / "bpttlab-train")
ARGS = [*SMALL, "task=copy", "callbacks.progress_bar=null", "~callbacks.grad_flow"]
ARGS += ["trainer.val_check_interval=2", "trainer.max_steps=3"]
TESTS = str(Path(__file__).parent)


def finished_run(run_dir: Path, *overrides: str) -> dict[Path, bytes]:
    """Train a tiny run into ``run_dir`` to the end; return its files' bytes."""
    assert train(config(*ARGS, *overrides, run_dir=run_dir))["status"] == "completed"
    return files(run_dir)


def files(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | env,
    )


def resume_args(run_dir: Path, *overrides: str) -> list[str]:
    return [*ARGS, *overrides, f"hydra.run.dir={run_dir}", "resume=true"]


def test_a_seal_tells_intact_damaged_and_foreign_checkpoints_apart():
    state = {
        "state_dict": {"w": torch.arange(6.0).reshape(2, 3)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "lr": 1e-3}],
        "global_step": 6,
    }
    mine = {"run": "a", "seed": 0, "config": "c0"}
    checkpoint = sealed(state, mine)
    assert seal_problem(checkpoint, mine) is None
    assert "belongs to run 'a' (seed 0" in seal_problem(checkpoint, mine | {"seed": 7})
    checkpoint["optimizer_states"][0]["state"][0]["exp_avg"][1] = 1.5e29
    assert seal_problem(checkpoint, mine).startswith("it is damaged")
    assert "no checksum" in seal_problem({k: v for k, v in state.items() if k != SEAL}, mine)


@pytest.mark.slow
def test_a_new_run_refuses_a_checkpoint_dir_holding_another_runs_checkpoint(tmp_path):
    """`seed=7 callbacks.checkpoint.dirpath=<a finished run>/checkpoints`: one line, exit 2,
    nothing written, the finished run's checkpoint untouched; train() refuses it too."""
    before = finished_run(tmp_path / "done")
    dirpath = tmp_path / "done" / "checkpoints"
    work = tmp_path / "work"
    work.mkdir()
    result = cli([*ARGS, "seed=7", f"callbacks.checkpoint.dirpath={dirpath}"], work)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("bpttlab-train: error: callbacks.checkpoint.dirpath=")
    assert len(result.stderr.splitlines()) == 1 and "holds no other run's" in result.stderr
    assert list(work.iterdir()) == []  # not even a run dir
    cfg = config(*ARGS, "seed=7", f"callbacks.checkpoint.dirpath={dirpath}", run_dir=work / "r")
    with pytest.raises(checks.ConfigError, match="callbacks.checkpoint.dirpath"):
        train(cfg)
    assert files(tmp_path / "done") == before


def flip_bytes_in_a_tensor(path: Path, count: int = 400) -> None:
    """Invert ``count`` bytes in the middle of the checkpoint's largest tensor's data."""
    with zipfile.ZipFile(path) as archive:
        record = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    data = bytearray(path.read_bytes())
    with path.open("rb") as raw:  # the data start after the local header and its extra field
        raw.seek(record.header_offset + 26)
        name_length, extra_length = (int.from_bytes(raw.read(2), "little") for _ in range(2))
    start = record.header_offset + 30 + name_length + extra_length
    middle = start + max(0, record.file_size - count) // 2
    for i in range(middle, middle + min(count, record.file_size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_damaged_checkpoint_is_refused_and_the_finished_run_left_alone(tmp_path):
    run_dir = tmp_path / "run"
    finished_run(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    flip_bytes_in_a_tensor(checkpoint)
    torch.load(checkpoint, weights_only=True)  # it still loads: only the checksum can tell
    before = files(run_dir)
    result = cli(resume_args(run_dir, "trainer.max_steps=6"), tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.splitlines()) == 1
    assert f"{checkpoint} cannot continue this run: it is damaged" in result.stderr
    assert files(run_dir) == before


@pytest.mark.slow
def test_another_runs_checkpoint_of_the_same_shapes_is_refused(tmp_path):
    """Seed 7's checkpoint copied into seed 0's finished run: its resume is refused."""
    finished_run(tmp_path / "seed7", "seed=7")
    run_dir = tmp_path / "seed0"
    finished_run(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    shutil.copyfile(tmp_path / "seed7" / "checkpoints" / "last.ckpt", checkpoint)
    before = files(run_dir)
    longer = config(*ARGS, "trainer.max_steps=6", "resume=true", run_dir=run_dir)
    with pytest.raises(checks.ConfigError) as error:
        train(longer)
    assert f"{checkpoint} cannot continue this run: it belongs to run 'seed7' (seed 7" in str(
        error.value
    )
    assert "not to this run 'seed0' (seed 0" in str(error.value)
    assert files(run_dir) == before
    with pytest.raises(checks.ConfigError, match="belongs to run 'seed7'"):
        check_resume(longer)


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path):
    """The same command with resume=true: exit 0, one line, every file byte-identical."""
    run_dir = tmp_path / "run"
    before = finished_run(run_dir)
    result = cli(resume_args(run_dir), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"bpttlab-train: {run_dir} finished already (not solved after 3 steps")
    assert "nothing to resume" in line
    assert files(run_dir) == before


class SigtermInClosingValidation(L.Callback):
    """Sends this process a real SIGTERM in the validation that follows the last step, once
    (then makes ``sent``)."""

    def __init__(self, sent: str):
        self.sent = Path(sent)

    def on_validation_batch_start(self, trainer: L.Trainer, *_args: object) -> None:
        if trainer.state.fn == "validate" and not self.sent.exists():
            self.sent.touch()
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermAsClosingValidationStarts(L.Callback):
    """Sends this process a real SIGTERM as the closing validation starts, once (then makes
    ``sent``): Lightning's SIGTERM handler is still in (StopOnSignal, a Checkpoint subclass,
    takes SIGTERM back after this callback's hook)."""

    def __init__(self, sent: str):
        self.sent = Path(sent)

    def on_validation_start(self, trainer: L.Trainer, *_args: object) -> None:
        if trainer.state.fn == "validate" and not self.sent.exists():
            self.sent.touch()
            os.kill(os.getpid(), signal.SIGTERM)


def signalling(callback: type[L.Callback], *settings: str) -> str:
    entries = ",".join([f"_target_:{__name__}.{callback.__name__}", *settings])
    return f"+callbacks.sigterm={{{entries}}}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "sender",
    [SigtermInClosingValidation, SigtermAsClosingValidationStarts],
    ids=["in-the-validation", "as-lightning-catches-it"],
)
def test_sigterm_in_the_closing_validation_is_an_interruption_that_resumes(tmp_path, sender):
    """The last step is 3, validations every 2: the run ends with a validation of its own. A
    SIGTERM in it (or as it starts, when Lightning's handler sees it too and ends the validation
    with its SIGTERMException, a SystemExit) drops that validation at once (it may be long):
    the run is interrupted at step 3 with its trained state saved, the command exits 143, as a
    shell says of a command that SIGTERM ended, and the resume validates and completes."""
    run_dir = tmp_path / "run"
    sigterm = signalling(sender, f"sent:{tmp_path}/sent")
    args = [*ARGS, "module.val_batches=3", sigterm, f"hydra.run.dir={run_dir}"]
    result = cli(args, tmp_path, PYTHONPATH=TESTS)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["steps"] == 3
    assert result.stdout.strip().splitlines()[-1].startswith("interrupted at step 3; resume with")
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    resumed = cli([*args, "resume=true"], tmp_path, PYTHONPATH=TESTS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 3
    assert "validation at step 3" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_ctrl_c_while_the_command_starts_ends_it_in_one_line_with_130(tmp_path):
    """SIGINT while the libraries load, before the run takes SIGINT over."""
    process = subprocess.Popen(
        [CLI, *ARGS], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 120
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr == "bpttlab-train: interrupted\n" and stdout == ""
    assert list(tmp_path.iterdir()) == []
