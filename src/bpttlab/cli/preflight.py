"""Checks on where a command line would write, made before Hydra creates anything: the run or
sweep dir must be creatable, not in use by a live run or sweep, not hold a run or sweep
(unless resuming it), and a resume must match the run or sweep it continues. A sweep holds
its sweep dir's lock from here until its process ends."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from bpttlab.checks import ConfigError
from bpttlab.cli.command_line import MULTIRUN_FLAGS, parse_overrides
from bpttlab.runs.resume import check_no_checkpoint, check_resume
from bpttlab.runs.rundir import busy, check_writable, hold_while_alive, live_pid
from bpttlab.runs.sweepdir import check_sweep_resume, holds_sweep


def last_value(args: list[str], key: str) -> str | None:
    """The value of the last override of ``key`` in ``args``, as Hydra reads it (unquoted)."""
    lines = [a for a in args if a.startswith(key + "=")]
    if not lines:
        return None
    value = parse_overrides(lines[-1:])[0].value()
    return value if isinstance(value, str) else lines[-1].split("=", 1)[1]


def is_multirun(args: list[str], config_dir: str, config_name: str) -> bool:
    """Whether ``args`` ask for a sweep: ``-m``, a search, or an experiment that is a sweep."""
    if any(a in MULTIRUN_FLAGS for a in args):
        return True
    if last_value(args, "hparams_search") not in (None, "null"):
        return True
    experiment = last_value(args, "experiment")
    if experiment in (None, "null"):
        return False
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name, [f"experiment={experiment}"], return_hydra_config=True)
    return str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def check_run_dirs(args: list[str], config_dir: str, config_name: str) -> None:
    """Raise a one-line ConfigError when the run that ``args`` ask for cannot safely write."""
    run_dir, sweep_dir = last_value(args, "hydra.run.dir"), last_value(args, "hydra.sweep.dir")
    for key, value in (("hydra.run.dir", run_dir), ("hydra.sweep.dir", sweep_dir)):
        if value is not None:
            check_writable(key, value)
    n_jobs = last_value(args, "hydra.launcher.n_jobs")
    if n_jobs is not None and not (
        n_jobs.lstrip("-").isdigit() and int(n_jobs) not in (0,) and int(n_jobs) >= -1
    ):
        raise ConfigError("hydra.launcher.n_jobs", n_jobs, "an integer >= 1, or -1 for every core")
    checkpoint_dir = last_value(args, "callbacks.checkpoint.dirpath")
    resuming = str(last_value(args, "resume")).lower() == "true"
    if checkpoint_dir is not None and "${" not in checkpoint_dir and not resuming:
        check_no_checkpoint(checkpoint_dir)  # another run's: a new run would overwrite it
    if is_multirun(args, config_dir, config_name):
        hold_sweep_dir(args, sweep_dir)  # each job then checks its own dir under its lock
        return
    if run_dir is None:  # a new, unique run dir
        if str(last_value(args, "resume")).lower() == "true":
            raise ConfigError("resume", True, "false unless hydra.run.dir names the run to resume")
        return
    overrides = [a for a in args if not a.startswith("-") and not a.startswith("hydra")]
    path = Path(run_dir).absolute()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.run_dir = str(path)  # set, not an override: a path needs no quoting
    pid = live_pid(path)
    if pid is not None:
        raise busy("hydra.run.dir", run_dir, pid)
    if cfg.get("resume"):
        check_resume(cfg)
    elif (path / "config.yaml").exists() or (path / "metrics.json").exists():
        raise ConfigError(
            "hydra.run.dir",
            run_dir,
            "a directory that holds no run yet (this one does: add resume=true to continue it)",
        )


def hold_sweep_dir(args: list[str], sweep_dir: str | None) -> None:
    """Check the sweep dir of a sweep and hold its lock until this process ends: a new sweep
    only in a directory that holds no sweep or run yet, ``resume=true`` only to continue the
    sweep that it holds. Without hydra.sweep.dir, a sweep gets a new, unique directory."""
    resume = str(last_value(args, "resume")).lower() == "true"
    if sweep_dir is None:
        if resume:
            raise ConfigError("resume", True, "false unless hydra.sweep.dir names the sweep")
        return
    path = Path(sweep_dir).absolute()
    if not resume:
        path.mkdir(parents=True, exist_ok=True)  # the command line passed every other check
    if path.is_dir():
        hold_while_alive(path, "hydra.sweep.dir")  # refused while another sweep lives there
    if not resume:
        if holds_sweep(path):
            raise ConfigError(
                "hydra.sweep.dir",
                sweep_dir,
                "a directory that holds no sweep yet (this one does: add resume=true to "
                "continue it)",
            )
        return
    if last_value(args, "hparams_search") not in (None, "null"):
        raise ConfigError("resume", True, "false with hparams_search (start a new search)")
    check_sweep_resume(path, [a for a in args if not a.startswith(("-", "hydra"))])
