"""Sweeps from the command line: real Hydra multiruns with the joblib, submitit and Optuna
plugins, divergence inside a grid, resume after a kill, and the sweep report."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bpttlab.analysis.report import report

CLI = [str(Path(sys.executable).parent / "bpttlab-train")]
SMALL = [
    "cell.hidden_size=8",
    "module.batch_size=8",
    "module.val_batches=1",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "callbacks.grad_flow.every_n_steps=3",
    "callbacks.progress_bar=null",
]

pytestmark = pytest.mark.slow


def run_cli(args: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/metrics.json"))


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory) -> Path:
    """A 2 x 2 grid (cell x gap) run by the joblib launcher, two jobs at a time."""
    root = tmp_path_factory.mktemp("joblib")
    sweep = root / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    run_cli([*args, "cell=rnn,gru", "task=copy", "task.gap=4,8", *SMALL], root)
    return sweep


def test_joblib_grid_runs_every_job_with_its_own_outputs(joblib_sweep):
    """Four run dirs, readable names (cell, task+gap, truncation, clip), each with metrics.json,
    event files, gradient profiles and a config that matches its name."""
    dirs = run_dirs(joblib_sweep)
    assert [d.name for d in dirs] == [
        "0_rnn_copy4_trunc-None_clip-norm_seed0",
        "1_rnn_copy8_trunc-None_clip-norm_seed0",
        "2_gru_copy4_trunc-None_clip-norm_seed0",
        "3_gru_copy8_trunc-None_clip-norm_seed0",
    ]
    for d in dirs:
        config = yaml.safe_load((d / "config.yaml").read_text())
        assert d.name.split("_")[1] == config["cell"]["kind"]
        assert json.loads((d / "metrics.json").read_text())["steps"] == 6
        assert list(d.glob("events.out.tfevents.*"))  # in the run dir: TensorBoard names it so
        assert list((d / "grad_flow").glob("*.npz"))
        assert config["threads"] is None  # chosen per job from the launcher's n_jobs


def test_hparams_tab_holds_hyperparameters_and_final_metrics(joblib_sweep):
    """Each run's events carry the HPARAMS plugin data (hyperparameters and metric tags) and the
    final metric values under those tags, so TensorBoard's HPARAMS tab compares the runs."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = run_dirs(joblib_sweep)[0]
    events = EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = dict(session.session_start_info.hparams)
    assert hparams["cell"].string_value == "rnn" and hparams["gap"].number_value == 4
    for key in ("hidden_size", "num_layers", "init", "task", "truncation", "update_every", "clip"):
        assert key in hparams
    for key in ("clip_threshold", "optim", "lr", "seed"):
        assert key in hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"z_hparams/normalized_loss", "z_hparams/solved", "z_hparams/diverged"} <= metric_tags
    assert "z_hparams/normalized_loss" in events.Tags()["scalars"]


def test_report_on_a_finished_multirun(joblib_sweep, tmp_path):
    """bpttlab-report writes a Markdown and CSV row per group (here one run each) and per run
    with the varying hyperparameters and results, and the figures."""
    out = report(joblib_sweep, tmp_path / "report")
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["n"] for r in rows} == {"1"}
    assert {"cell", "gap", "solved", "median_step", "loss_mean", "diverged", "summary"} <= set(
        rows[0]
    )
    assert "hidden_size" not in rows[0]  # constant across the sweep
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert {"status", "solved_at_step", "normalized_loss"} <= set(runs[0]) and len(runs) == 4
    assert {(r["cell"], r["gap"]) for r in rows} == {
        ("rnn", "4"),
        ("rnn", "8"),
        ("gru", "4"),
        ("gru", "8"),
    }
    markdown = (out / "report.md").read_text()
    assert "4 runs" in markdown and markdown.count("\n| ") >= 5
    for figure in ("results.png", "profiles.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "bpttlab-report"), str(joblib_sweep)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "report.md" in result.stdout


def test_submitit_local_runs_two_jobs(tmp_path):
    """The submitit code path (as on SLURM) runs locally: two jobs, two metrics.json."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
    ]
    run_cli([*args, "cell=rnn,lstm", "task.gap=6", *SMALL], tmp_path)
    assert len(run_dirs(sweep)) == 2


def test_optuna_search_of_three_trials(tmp_path):
    """hparams_search=optuna runs 3 trials and records the best parameters and a finite best
    value of the optimised metric."""
    sweep = tmp_path / "sweep"
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"]
    small = [a for a in SMALL if not a.startswith("cell.hidden_size")]  # searched
    run_cli([*args, "task.gap=6", *small], tmp_path)
    assert len(run_dirs(sweep)) == 3
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optim.lr", "cell.hidden_size", "clip.threshold"}
    assert 0 < best["best_value"] < 1000


def test_a_grid_with_diverging_runs_completes(tmp_path):
    """Huge learning rates without clipping blow some runs up; the grid still completes, every
    run has its metrics.json, and the diverged ones say so with the step."""
    sweep = tmp_path / "sweep"
    grid = [
        "cell=rnn",
        "cell.nonlinearity=relu",
        "optim=sgd",
        "optim.lr=1e6,1e-3",
        "clip=none,norm",
    ]
    run_cli(["-m", f"hydra.sweep.dir={sweep}", "task.gap=6", *grid, *SMALL], tmp_path)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in run_dirs(sweep)]
    assert len(metrics) == 4
    diverged = [m for m in metrics if m["diverged"]]
    assert diverged and all(m["diverged_at_step"] is not None for m in diverged)
    assert any(not m["diverged"] for m in metrics)


def test_a_killed_run_resumes_to_the_same_metrics(tmp_path):
    """Kill a run (SIGKILL) once it has checkpointed, rerun it with resume=true in the same run
    dir: it ends with exactly the metrics of an uninterrupted run with the same seed."""
    args = [
        *SMALL,
        "task=copy",
        "task.gap=6",
        "trainer.max_steps=100",  # killed after its checkpoint at step 10 here: most runs on
        "trainer.val_check_interval=10",
    ]
    args += ["callbacks.checkpoint.every_n_train_steps=5", "callbacks.grad_flow.every_n_steps=10"]
    run_cli([*args, "hydra.run.dir=whole"], tmp_path)

    killed = tmp_path / "killed"
    process = subprocess.Popen([*CLI, *args, f"hydra.run.dir={killed}"], cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let the checkpoint write finish; the run still has far to go
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()  # it really died mid-way
    run_cli([*args, f"hydra.run.dir={killed}", "resume=true"], tmp_path)

    def final(path: Path) -> dict:
        metrics = json.loads((path / "metrics.json").read_text())
        metrics.pop("wall_seconds")
        return metrics

    assert final(killed) == final(tmp_path / "whole")


def test_subnormals_are_flushed_in_joblib_workers_unless_switched_off(tmp_path):
    """flush_subnormals=true,false through joblib workers: each run observes, on every kernel
    thread, exactly what its config asked for (recorded in its metrics.json); each also keeps
    freed memory, the default, which a worker cannot undo (so it is not swept here)."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    run_cli([*args, "flush_subnormals=true,false", "task.gap=4", "threads=2", *SMALL], tmp_path)
    seen = {}
    for run in run_dirs(sweep):
        asked = yaml.safe_load((run / "config.yaml").read_text())["flush_subnormals"]
        metrics = json.loads((run / "metrics.json").read_text())
        seen[asked] = metrics["subnormals_flushed"]
        assert metrics["freed_memory_kept"]
    assert seen == {True: True, False: False}
