"""Nothing a sweep ran is lost: real ``bpttlab-train -m`` processes, real signals, real files.

A second sweep into a sweep dir is refused before it writes; an interrupted sweep resumes with
``resume=true`` (interrupted runs continue, runs never started start, finished ones are left
as they are); a job's printed resume command works as printed; a job killed by the system
shows up in the report as failed."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_docs import drive

from bpttlab.analysis.report import report
from bpttlab.analysis.sweep import group_runs, read_runs

CLI = str(Path(sys.executable).parent / "bpttlab-train")
S = [
    *("trainer.max_steps=3", "task.gap=10", "cell.hidden_size=16", "module.batch_size=8"),
    *("trainer.enable_progress_bar=false", "module.val_batches=1"),
]

LONG = ["trainer.max_steps=100000", "module.stop_when_solved=false"]  # runs until stopped

pytestmark = pytest.mark.slow


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """A live ``bpttlab-train``; what it prints goes to ``cwd/output.txt`` (a pipe nobody
    reads while it runs could fill and stall it)."""
    output = open(cwd / "output.txt", "w")  # noqa: SIM115 (the child holds it; closed at exit)
    return subprocess.Popen([CLI, *args], cwd=cwd, stdout=output, stderr=subprocess.STDOUT)


def printed(cwd: Path) -> str:
    return (cwd / "output.txt").read_text()


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def run_one_after_another(argvs: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """``bpttlab-train`` with each of ``argvs``, one after another in one fresh interpreter
    (test_docs' driver: one start-up for all)."""
    job = {"cwd": str(cwd), "argvs": [[Path(CLI).name, *a] for a in argvs], "keep_going": True}
    (done,) = drive([job])
    return [subprocess.CompletedProcess(r["argv"], r["code"], r["out"], r["err"]) for r in done]


def wait_for(sweep: Path, pattern: str, process: subprocess.Popen) -> Path:
    """The first path matching ``pattern`` below ``sweep``, once the process has made it."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = sorted(sweep.glob(pattern))
        if found:
            return found[0]
        assert process.poll() is None, printed(sweep.parent)[-3000:]  # cwd: the sweep dir's parent
        time.sleep(0.02)
    raise AssertionError(f"no {pattern} in {sweep}")


def files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (but the locks, which hold the pid of their last holder)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def refused(result: subprocess.CompletedProcess, key: str, reason: str) -> None:
    """Exit 2 with one line naming ``key`` and saying ``reason``."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bpttlab-train: error: {key}="), lines
    assert reason in lines[0], lines


def test_a_second_sweep_into_a_sweep_dir_is_refused_before_it_writes(tmp_path):
    """While a sweep runs in D, a second one into D (new or resumed) is refused in one line,
    exit 2, and D's files are as they were: its multirun.yaml, its jobs' Hydra records. Once
    the first has stopped, a new sweep into D is still refused: resume=true continues it."""
    sweep = tmp_path / "sweep"
    first = start(["-m", *S, *LONG, "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    job = wait_for(sweep, "0_*/config.yaml", first).parent  # job 0 is training
    record = {p: p.read_bytes() for p in [sweep / "multirun.yaml", *job.glob(".hydra/*")]}
    assert len(record) == 4
    second, resumed = run_one_after_another(
        [
            ["-m", *S, "seed=2,3", f"hydra.sweep.dir={sweep}"],
            ["-m", *S, "seed=0,1", f"hydra.sweep.dir={sweep}", "resume=true"],
        ],
        tmp_path,
    )
    refused(second, "hydra.sweep.dir", f"pid {first.pid} is running there")
    refused(resumed, "hydra.sweep.dir", f"pid {first.pid} is running there")
    assert {p: p.read_bytes() for p in record} == record
    assert sorted(p.name for p in sweep.iterdir()) == [".lock", job.name, "multirun.yaml"]
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=600) == 130, printed(tmp_path)[-3000:]
    before = files(sweep)
    third = run(["-m", *S, "seed=2,3", f"hydra.sweep.dir={sweep}"], tmp_path)
    refused(third, "hydra.sweep.dir", "holds no sweep yet (this one does: add resume=true")
    assert files(sweep) == before


def test_an_interrupted_sweep_resumes_as_documented(tmp_path):
    """seed=0,1,2 interrupted (SIGINT) in job 1, then the same command with resume=true: job 0,
    finished, is left byte for byte as it was; job 1 continues from its checkpoint and keeps
    Hydra's record of its first start; job 2, never started, starts; the report sees one group
    of three seeds. A resume with other sweep values is refused before anything is written."""
    sweep = tmp_path / "sweep"
    args = ["-m", *S, "seed=0,1,2", f"hydra.sweep.dir={sweep}"]
    process = start(args, tmp_path)
    wait_for(sweep, "1_*/config.yaml", process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=600) == 130, printed(tmp_path)[-3000:]
    job0, job1 = sorted(sweep.glob("[01]_*"))
    assert [r.status for r in read_runs(sweep)] == ["completed", "interrupted"]
    finished, record = files(job0), files(job1 / ".hydra")
    other = run([*args[:-2], "seed=0,1", args[-1], "resume=true"], tmp_path)
    refused(other, "resume", "this command drops seed=0,1,2, adds seed=0,1")
    result = run([*args, "resume=true"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert files(job0) == finished
    assert files(job1 / ".hydra") == record
    runs = read_runs(sweep)
    assert [(r.path.name[0], r.status, r.metrics["steps"]) for r in runs] == [
        ("0", "completed", 3),
        ("1", "completed", 3),
        ("2", "completed", 3),
    ]
    assert "resume" in (job1 / "train.log").read_text()
    (group,) = group_runs(runs)
    assert (group.summary()["n"], group.summary()["seeds"]) == (3, "0 1 2")


def test_the_resume_command_a_sweep_job_prints_works_as_printed(tmp_path):
    """seed=0,1 interrupted in job 0: it prints a command naming its own seed=0, which run as
    printed finishes that run."""
    sweep = tmp_path / "sweep"
    process = start(["-m", *S, "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    job = wait_for(sweep, "0_*/config.yaml", process).parent
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=600) == 130, printed(tmp_path)[-3000:]
    (line,) = [x for x in printed(tmp_path).splitlines() if "resume with: " in x]
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[0] == "bpttlab-train" and "-m" not in command
    assert "seed=0" in command and "seed=0,1" not in command
    assert command[-2:] == [f"hydra.run.dir={job}", "resume=true"]
    result = run(command[1:], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(r.path, r.status) for r in read_runs(sweep)] == [(job, "completed")]


def test_a_job_killed_by_the_system_is_reported_failed(tmp_path):
    """SIGKILL a sweep while job 0 trains (what the OOM killer or a segfault does): the report
    counts it running while it lives, failed once it is dead (no metrics.json), and names it;
    a resume of the sweep is refused (the run cannot continue: no checkpoint), in one line,
    before anything is written."""
    sweep = tmp_path / "sweep"
    args = ["-m", *S, *LONG, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    args += ["callbacks.checkpoint.every_n_train_steps=100000"]  # killed before a checkpoint
    process = start(args, tmp_path)
    job = wait_for(sweep, "0_*/config.yaml", process).parent
    assert [r.status for r in read_runs(sweep)] == ["running"]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (job / "metrics.json").exists()  # it died without a word
    markdown = (report(sweep) / "report.md").read_text()
    assert "1 runs in 1 groups: 0 completed (0 solved), 0 diverged, 0 interrupted, 1 failed" in (
        markdown
    )
    assert f"- {job}: no metrics.json: the run ended without recording how" in markdown
    before = files(sweep)
    result = run([*args, "resume=true"], tmp_path)
    refused(result, "resume", f"the run in {job} cannot continue")
    assert "move it out of the sweep dir" in result.stderr
    assert files(sweep) == before
