"""A table of bad command lines: each exits 2 with one line on stderr that names the full key,
and creates no run dir. Most run in-process through ``bpttlab.cli.train.main``; a few as real
subprocesses of the console script."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bpttlab.analysis import report
from bpttlab.cli import train
from bpttlab.runs.rundir import RunLock

S = "trainer.max_steps=3 task.gap=10 cell.hidden_size=16 module.batch_size=8"
"""A small run, which the line after it breaks."""
BAD = [
    # groups and unknown keys
    ("cell=transformer", "cell"),
    ("task=sorting", "task"),
    ("clip=hard", "clip"),
    ("optim=lbfgs", "optim"),
    ("bptt=sometimes", "bptt"),
    ("logger=wandb", "logger"),
    ("trainer=fast", "trainer"),
    ("experiment=nope", "experiment"),
    ("cell.hiden_size=64", "cell.hiden_size"),
    ("trainer.max_stepz=10", "trainer.max_stepz"),
    ("grad_flow.enabled=maybe", "grad_flow.enabled"),
    ("callbacks.grad_flow.enabled=maybe", "callbacks.grad_flow.enabled"),
    ("logger=null", "logger"),
    ("~logger", "logger"),
    # values
    ("task.gap=0", "task.gap"),
    ("task=copy task.gap=-3", "task.gap"),
    ("task.gap=abc", "task.gap"),
    ("task.gap=1.5", "task.gap"),
    ("'task.gap=[1,2'", "task.gap"),
    ("task=temporal_order task.gap=5", "task.gap"),
    ("task=variable_copy task.gap=5", "task.gap"),
    ("task=associative_recall task.num_keys=2", "task.num_keys"),
    ("task=delayed_recall task.num_classes=1", "task.num_classes"),
    ("task=copy task.recall_loss_only=maybe", "task.recall_loss_only"),
    ("bptt.truncation=0", "bptt.truncation"),
    ("bptt.truncation=-5", "bptt.truncation"),
    ("bptt.truncation=20 bptt.update_every=30", "bptt.update_every"),
    ("bptt.update_every=5", "bptt.update_every"),
    ("bptt.truncation=sometimes", "bptt.truncation"),
    ("bptt.truncation=auto bptt.max_bias=0", "bptt.max_bias"),
    ("bptt=auto bptt.max_bias=-0.1", "bptt.max_bias"),
    ("bptt=auto bptt.min_truncation=0", "bptt.min_truncation"),
    ("bptt=auto bptt.min_truncation=8 bptt.max_truncation=4", "bptt.max_truncation"),
    ("bptt=auto bptt.adapt_every_n_steps=0", "bptt.adapt_every_n_steps"),
    ("bptt=auto bptt.update_every=2", "bptt.update_every"),
    ("clip.threshold=0", "clip.threshold"),
    ("clip.threshold=-1", "clip.threshold"),
    ("clip.threshold=inf", "clip.threshold"),
    ("clip.mode=sometimes", "clip.mode"),
    ("cell.hidden_size=0", "cell.hidden_size"),
    ("cell.hidden_size=1000000000", "cell.hidden_size"),
    ("cell.num_layers=0", "cell.num_layers"),
    ("cell.embedding_dim=0", "cell.embedding_dim"),
    ("cell.kind=transformer", "cell.kind"),
    ("cell=rnn cell.nonlinearity=sigmoid", "cell.nonlinearity"),
    ("cell=lstm cell.init=identity", "cell.init"),
    ("cell.init=xavier", "cell.init"),
    ("cell.forget_bias=nan", "cell.forget_bias"),
    ("cell.onednn=maybe", "cell.onednn"),
    ("cell.kernel=foo", "cell.kernel"),
    ("cell=gru cell.kernel=foo", "cell.kernel"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-1e-3", "optim.lr"),
    ("optim.lr=nan", "optim.lr"),
    ("optim=sgd optim.momentum=-1", "optim.momentum"),
    ("optim=sgd optim.momentum=5", "optim.momentum"),
    ("optim=rmsprop optim.alpha=2", "optim.alpha"),
    ("optim=sgd +optim.weight_decay=-1", "optim.weight_decay"),
    ("+optim.betas=[0.9,1.5]", "optim.betas.1"),
    ("+optim.betas=[0.9]", "optim.betas"),
    ("+optim.eps=0", "optim.eps"),
    ("optim._target_=builtins.print", "optim._target_"),
    ("task._target_=os.system", "task._target_"),
    ("cell._target_=os.system", "cell._target_"),
    ("+module._recursive_=false", "module._recursive_"),
    ("seed=-1", "seed"),
    ("seed=abc", "seed"),
    ("seed=1.5", "seed"),
    ("seed=0,1,2", "seed"),
    ("experiment=results task=copy cell.hidden_size=32,64", "cell.hidden_size"),
    ("module.batch_size=0", "module.batch_size"),
    ("module.val_batches=0", "module.val_batches"),
    ("module.stop_when_solved=maybe", "module.stop_when_solved"),
    ("module.flossing.weight=-1", "module.flossing.weight"),
    ("module.flossing.weight=inf", "module.flossing.weight"),
    ("module.flossing.k=0", "module.flossing.k"),
    ("module.flossing.steps_before=-1", "module.flossing.steps_before"),
    ("module.flossing.every_n_steps=0", "module.flossing.every_n_steps"),
    ("module.flossing.until_step=-2", "module.flossing.until_step"),
    ("threads=-2", "threads"),
    ("threads=0", "threads"),
    ("resume=maybe", "resume"),
    ("compiled_kernels=maybe", "compiled_kernels"),
    ("resume=true", "resume"),
    ("optimized_metric=normalised_loss", "optimized_metric"),
    # trainer
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval"),
    ("trainer.val_check_interval=0.5", "trainer.val_check_interval"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
    ("trainer.precision=banana", "trainer.precision"),
    ("trainer.precision=16-mixed", "trainer.precision"),
    ("trainer.accelerator=tpu", "trainer.accelerator"),
    ("trainer.devices=2", "trainer.devices"),
    ("trainer.num_sanity_val_steps=-1", "trainer.num_sanity_val_steps"),
    ("trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar"),
    ("trainer.deterministic=sometimes", "trainer.deterministic"),
    # callbacks
    ("callbacks.grad_flow.every_n_steps=0", "callbacks.grad_flow.every_n_steps"),
    ("callbacks.grad_flow.full_reference=maybe", "callbacks.grad_flow.full_reference"),
    ("callbacks.grad_flow.past_threshold=0", "callbacks.grad_flow.past_threshold"),
    ("callbacks.grad_flow.figures_every_n_steps=0", "callbacks.grad_flow.figures_every_n_steps"),
    ("callbacks.checkpoint.every_n_train_steps=0", "callbacks.checkpoint.every_n_train_steps"),
    ("callbacks.lyapunov.every_n_steps=0", "callbacks.lyapunov.every_n_steps"),
    ("callbacks.lyapunov.k=0", "callbacks.lyapunov.k"),
    ("callbacks.lyapunov.reorth_every=0", "callbacks.lyapunov.reorth_every"),
    ("callbacks.lyapunov.warmup=-1", "callbacks.lyapunov.warmup"),
    (
        "callbacks.lyapunov.every_n_steps=5 callbacks.lyapunov.warmup=500",
        "callbacks.lyapunov.warmup",
    ),
    ("callbacks.lyapunov.every_n_steps=5 ~logger ~callbacks.grad_flow", "logger"),
    # sweeps: every combination is checked
    ("-m task.gap=50,0", "task.gap"),
    ("-m cell=rnn,lstm,gur", "cell"),
    ("-m task=copy,temporal_order task.gap=12,5,14", "task.gap"),
    ("-m cell=rnn,lstm cell.init=default,identity", "cell.init"),
    ("-m hydra/launcher=joblib hydra.launcher.n_jobs=0", "hydra.launcher.n_jobs"),
    # where the run would write
    ("hydra.run.dir=", "hydra.run.dir"),
    ("hydra.run.dir=a_file", "hydra.run.dir"),
    ("hydra.run.dir=/proc/no/such/dir", "hydra.run.dir"),
    ("-m hydra.sweep.dir=a_file seed=1,2", "hydra.sweep.dir"),
    ("hydra.run.dir=live", "hydra.run.dir"),
    ("hydra.run.dir=finished", "hydra.run.dir"),
    ("hydra.run.dir=empty resume=true", "resume"),
    ("hydra.run.dir=garbage resume=true", "resume"),
    ("hydra.job.chdir=maybe", "hydra.job.chdir"),  # Hydra's own keys
    ("hydra/launcher=nope", "hydra/launcher"),
    ("hydra.launcher.n_jobs=2", "hydra.launcher.n_jobs"),  # the basic launcher has none
    ("~seed", "seed"),  # keys the run needs
    ("~module", "module"),
    ("'hydra.run.dir=a(1)'", "hydra.run.dir"),  # Hydra's grammar: quote it
    ("hydra.run.dir='\"finished\"'", "hydra.run.dir"),  # quoted: the dir as Hydra reads it
    # nonsense that used to run, or to end in a traceback
    (f"{S} +foo=1", "foo"),  # a top-level key nothing reads
    (f"{S} +foo.bar=1", "foo.bar"),
    (f"{S} threads=100000", "threads"),  # more than the OS lets a process start
    (f"{S} logger.save_dir=/proc/foo", "logger.save_dir"),  # no one may write there
    # memory: the key that drives it, estimated without allocating the network
    (f"{S} cell=lru cell.state_size=100000000", "cell.state_size"),
    (f"{S} cell.num_layers=100000000", "cell.num_layers"),
    (f"{S} cell.embedding_dim=1000000000", "cell.embedding_dim"),
    (f"{S} cell=mingru cell.expansion=1e7", "cell.expansion"),
    (f"{S} cell=minlstm cell.ff_mult=100000000", "cell.ff_mult"),
    (f"{S} cell=orthogonal cell.hidden_size=100000", "cell.hidden_size"),
    (f"{S} module.val_batches=100000000", "module.val_batches"),
    (f"{S} module.batch_size=1000000000", "module.batch_size"),
    (f"{S} callbacks.grad_flow.save_dir=/proc/foo", "callbacks.grad_flow.save_dir"),
    ("hparams_search=optuna hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials"),
    ("hparams_search=optuna hydra.sweeper.direction=sideways", "hydra.sweeper.direction"),
    ("-m hydra/launcher=joblib hydra.launcher.backend=nonsense seed=1,2", "hydra.launcher.backend"),
    # your own modules
    ("imports=[no_such_module_of_yours]", "imports"),
    ("imports=[os.path,no_such_module_of_yours]", "imports"),
    ("imports=5", "imports"),
    ("-m imports=[os],[json] seed=1,2", "imports"),
]
SUBPROCESS = {
    "imports=[no_such_module_of_yours]",
    "'task.gap=[1,2'",
    "-m task=copy,temporal_order task.gap=12,5,14",
    "hydra.run.dir=live",
    "'hydra.run.dir=a(1)'",
}
CLI = str(Path(sys.executable).parent / "bpttlab-train")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working dir with a file, a dir a live run holds, a finished run, an empty dir and a
    run whose checkpoint is garbage."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a directory\n")
    for name in ("live", "finished", "empty", "garbage"):
        (tmp_path / name).mkdir()
    (tmp_path / "finished" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "finished" / "metrics.json").write_text("{}\n")
    (tmp_path / "garbage" / "checkpoints").mkdir()
    (tmp_path / "garbage" / "checkpoints" / "last.ckpt").write_bytes(b"\x00garbage")
    with RunLock(tmp_path / "live"):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        yield tmp_path
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # nothing created: no run dir, no outputs/


def check_one_line(stderr: str, key: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) >= 1 and all(line.startswith("bpttlab-train: error: ") for line in lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bpttlab-train: error: {key}="), lines[0]
    assert f"{key} accepts" in lines[0]


@pytest.mark.parametrize(("line", "key"), BAD, ids=[b[0] for b in BAD])
def test_bad_command_line_in_process(workdir, monkeypatch, capsys, line, key):
    def would_run() -> None:
        raise AssertionError(f"{line!r} was accepted")

    monkeypatch.setattr(train, "_hydra_main", would_run)
    monkeypatch.setattr(sys, "argv", ["bpttlab-train", *shlex.split(line)])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    check_one_line(capsys.readouterr().err, key)


@pytest.mark.parametrize("line", sorted(SUBPROCESS))
def test_bad_command_line_as_a_real_process(workdir, line):
    key = dict(BAD)[line]
    result = subprocess.run(
        [CLI, *shlex.split(line)], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    check_one_line(result.stderr, key)


USAGE = [
    "--bogus",
    "seed=1 -m cell=rnn,gru",
    "-m seed=0,1 --run",
    "-m experiment=results seed=0,1,2 --cfg job",
    "seed=1 --config-name nope",
    "--config-dir elsewhere",
]


@pytest.mark.parametrize("line", USAGE)
def test_flags_hydra_refuses_are_one_line(workdir, monkeypatch, capsys, line):
    monkeypatch.setattr(train, "_hydra_main", lambda: pytest.fail(f"{line!r} was accepted"))
    monkeypatch.setattr(sys, "argv", ["bpttlab-train", *shlex.split(line)])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpttlab-train: error: "), lines
    assert "--help" in lines[0]


def test_print_only_flags_are_left_to_hydra(workdir, monkeypatch):
    """--cfg job prints the composed config and runs nothing: no check may trip on its value."""
    result = subprocess.run(
        [CLI, "experiment=results", "task=copy", "--cfg", "job"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gap: " in result.stdout and not result.stderr


def test_the_table_is_long_enough():
    assert len(BAD) >= 80 and len({line for line, _ in BAD}) == len(BAD)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no one may write in: a read-only tmpfs (root ignores mode bits)."""
    path = tmp_path / "read_only"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)])
    if mounted.returncode != 0:
        pytest.skip("mounting a read-only tmpfs is not permitted here")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("line", [S, f"-m {S} seed=1,2"])
def test_a_read_only_working_dir_is_refused_by_its_run_dir_key(
    read_only_dir, monkeypatch, capsys, line
):
    monkeypatch.chdir(read_only_dir)
    monkeypatch.setattr(train, "_hydra_main", lambda: pytest.fail(f"{line!r} was accepted"))
    monkeypatch.setattr(sys, "argv", ["bpttlab-train", *shlex.split(line)])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    key = "hydra.sweep.dir" if line.startswith("-m") else "hydra.run.dir"
    check_one_line(capsys.readouterr().err, key)


@pytest.mark.parametrize("out", ["a_file", "read_only", "read_only/report"])
def test_report_refuses_an_out_it_cannot_write_in_one_line(
    tmp_path, read_only_dir, monkeypatch, capsys, out
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a directory\n")
    (tmp_path / "sweep").mkdir()
    with pytest.raises(SystemExit) as exit_:
        report.main(["sweep", "--out", out])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bpttlab-report: error: --out='{out}'")
    assert (tmp_path / "a_file").read_text() == "not a directory\n"
    assert not any(read_only_dir.iterdir())


QUIET = [*shlex.split(S), "trainer.enable_progress_bar=false"]


@pytest.fixture
def full_disk(tmp_path):
    """A 3 MB tmpfs with a finished run on it, then filled to its last 40 KB."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        finished = subprocess.run(
            [CLI, *QUIET, f"hydra.run.dir={disk / 'finished'}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert finished.returncode == 0, finished.stderr[-2000:]
        stat = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 40_000))
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(full_disk):
    finished = files_of(full_disk / "finished")
    for args in (
        [f"hydra.run.dir={full_disk / 'new'}"],
        [f"hydra.run.dir={full_disk / 'finished'}", "resume=true", "trainer.max_steps=6"],
    ):
        result = subprocess.run(
            [CLI, *QUIET, *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 1
        said = (result.stdout + result.stderr).strip().splitlines()
        assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
        errors = [line for line in said if "No space left on device" in line]
        assert len(errors) == 1, said
        assert not list(full_disk.rglob("*.partial"))
    after = files_of(full_disk / "finished")
    for record in ("metrics.json", "config.yaml", "checkpoints/last.ckpt"):
        assert after[record] == finished[record], record  # the finished run's record, as it was


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_long_validation_stops_the_run_at_once(tmp_path, sig):
    """The validation after training, of 300,000 batches, takes a minute to make (and more to
    run): the first signal ends the run within seconds, recorded as interrupted, with the
    trained state saved."""
    run_dir = tmp_path / "run"
    args = [CLI, *QUIET, "module.val_batches=300000", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = run_dir / "train.log"
        deadline = time.monotonic() + 120
        while not (log.exists() and "budget:" in log.read_text()):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)
        time.sleep(8)  # its three steps, then well into the validation
        assert process.poll() is None
        process.send_signal(sig)
        sent = time.monotonic()
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert time.monotonic() - sent < 15
    assert process.returncode == 128 + sig, err[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert out.strip().splitlines()[-1].startswith("interrupted at step 3; resume with: ")
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3  # the trained state, which the resume validates
