"""Checks on where a command line would write, made before Hydra creates anything: the run or
sweep dir must be creatable, not in use by a live run, not hold a finished run (unless
resuming it), and a resume must match the run it continues."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from bpttlab.checks import ConfigError
from bpttlab.cli.command_line import MULTIRUN_FLAGS, parse_overrides
from bpttlab.runs.resume import check_no_checkpoint, check_resume
from bpttlab.runs.rundir import busy, check_writable, live_pid


def last_value(args: list[str], key: str) -> str | None:
    """The value of the last override of ``key`` in ``args``, as Hydra reads it (unquoted)."""
    lines = [a for a in args if a.startswith(key + "=")]
    if not lines:
        return None
    value = parse_overrides(lines[-1:])[0].value()
    return value if isinstance(value, str) else lines[-1].split("=", 1)[1]


def is_multirun(args: list[str]) -> bool:
    return any(a in MULTIRUN_FLAGS for a in args) or last_value(args, "hparams_search") not in (
        None,
        "null",
    )


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
    if is_multirun(args):
        return  # each job checks its own dir under its lock
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
