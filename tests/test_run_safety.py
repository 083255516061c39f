"""Nothing lost: unique run dirs, a lock a killed run does not leave behind, a crash recorded
as failed, a resume that refuses another config and leaves a finished record alone."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import SMALL, config

from bpttlab import checks
from bpttlab.cli.run import train
from bpttlab.runs.resume import check_resume
from bpttlab.runs.rundir import RunLock, live_pid

CLI = str(Path(sys.executable).parent / "bpttlab-train")
TINY = [*SMALL, "task=copy", "callbacks.progress_bar=null", "trainer.val_check_interval=3"]


class Crash(L.Callback):
    """Raises in the middle of training, as a bug would."""

    def on_train_batch_end(self, trainer, *_args):
        if trainer.global_step >= 3:
            raise RuntimeError("boom\nsecond line")


def test_a_second_lock_on_a_live_run_dir_is_refused(tmp_path):
    with RunLock(tmp_path):
        assert live_pid(tmp_path) is not None
        with pytest.raises(checks.ConfigError, match="no live run is using"), RunLock(tmp_path):
            pass
    assert live_pid(tmp_path) is None


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    """SIGKILL the process holding the lock: the lock is free at once."""
    code = (
        "import sys, time; from bpttlab.runs.rundir import RunLock; "
        f"lock = RunLock({str(tmp_path)!r}).__enter__(); print('locked', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    assert live_pid(tmp_path) == process.pid
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert live_pid(tmp_path) is None
    with RunLock(tmp_path):
        pass


def test_a_crash_is_recorded_as_failed_not_as_a_result(tmp_path, capsys):
    cfg = config(*TINY, "trainer.max_steps=30", run_dir=tmp_path)
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": f"{__name__}.Crash"}
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "RuntimeError: boom second line"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("failed at step ") and last.endswith("RuntimeError: boom second line")
    assert "Traceback" in (tmp_path / "train.log").read_text()  # the details stay in the log
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Tags()["scalars"]


def test_resume_refuses_another_config_and_keeps_the_finished_record(tmp_path, capsys):
    metrics = train(config(*TINY, "trainer.max_steps=6", run_dir=tmp_path))
    assert metrics["status"] == "completed"
    log = (tmp_path / "train.log").read_text()
    assert "validation at step 6" in log and log.strip().splitlines()[-1].endswith(
        capsys.readouterr().out.strip().splitlines()[-1]
    )
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    other = config(
        *TINY, "trainer.max_steps=6", "cell=gru", "seed=7", "resume=true", run_dir=tmp_path
    )
    with pytest.raises(checks.ConfigError) as error:
        check_resume(other)
    assert str(error.value).endswith(
        "this command changes cell.forget_bias, cell.kernel, cell.kind, cell.onednn, seed"
    )
    with pytest.raises(checks.ConfigError):
        train(other)
    # only the budget may change: that resume goes on and ends completed
    longer = config(*TINY, "trainer.max_steps=12", "resume=true", run_dir=tmp_path)
    assert before["metrics.json"] == (tmp_path / "metrics.json").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(longer)["steps"] == 12
    # batches depend on (seed, step) only: Lightning's "not resumable" warning is noise here
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]


@pytest.mark.slow
def test_two_runs_started_together_get_their_own_dirs(tmp_path):
    args = [*TINY, "trainer.max_steps=2"]
    processes = [
        subprocess.Popen([CLI, *args], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes)
    dirs = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(dirs) == 2 and all(f"run dir: {d}" in "".join(outputs) for d in dirs)
    assert all("_seed0_" in d.name for d in dirs)
    for d in dirs:
        assert json.loads((d / "metrics.json").read_text())["status"] == "completed"


NASTY_DIRS = ["run (1)", "it's, a=run", "back\\slash [x]"]


@pytest.mark.parametrize("name", NASTY_DIRS)
def test_the_resume_command_names_the_run_dir_as_hydra_reads_it(tmp_path, name):
    """A run dir whose name Hydra's override grammar would misread (parentheses, quotes,
    commas, brackets, backslashes): the printed resume command gives Hydra back that dir."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bpttlab.cli.run import resume_hint

    run_dir = tmp_path / name
    line = next(a for a in shlex.split(resume_hint(run_dir)) if a.startswith("hydra.run.dir="))
    assert OverridesParser.create().parse_overrides([line])[0].value() == str(run_dir)


@pytest.mark.slow
def test_a_run_in_a_dir_hydra_must_quote_runs_and_resumes(tmp_path):
    """`hydra.run.dir='.../run (1)'` (quoted for Hydra, as the README says): the run goes to
    that very dir, and the same line with resume=true continues it."""
    run_dir = tmp_path / "run (1)"
    quoted = f"hydra.run.dir='{run_dir}'"
    for steps, resume in ((2, []), (4, ["resume=true"])):
        args = [*TINY, "~callbacks.grad_flow", f"trainer.max_steps={steps}", quoted, *resume]
        result = subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads((run_dir / "metrics.json").read_text())["steps"] == steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run (1)"]
