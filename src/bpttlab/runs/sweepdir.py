"""A sweep dir holds one sweep: Hydra's record of it (multirun.yaml: its config and the overrides
of its command line), a run dir per job, and ``.lock`` while the process that launched it lives.

A new sweep goes only into a directory that holds no sweep and no run yet; ``resume=true``
continues the sweep a directory holds, only with that sweep's own overrides (but for the keys
that a resume may change), and only when every unfinished run in it can continue from its
checkpoint. A job whose run never started starts fresh; a finished one is left as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from bpttlab.checks import ConfigError
from bpttlab.runs.outcome import one_line
from bpttlab.runs.resume import check_resume, may_change
from bpttlab.runs.rundir import holds_run, run_dirs

SWEEP_RECORD = "multirun.yaml"
FINISHED = ("completed", "diverged")


def holds_sweep(path: Path) -> bool:
    """Whether ``path`` holds a sweep (or a run, which a sweep must not mix with)."""
    return (Path(path) / SWEEP_RECORD).is_file() or holds_run(path) or bool(run_dirs(path))


def recorded_overrides(sweep_dir: Path) -> list[str]:
    """The overrides of the command line that launched the sweep in ``sweep_dir`` (Hydra's
    ``hydra.overrides.task`` in multirun.yaml), but for the keys that a resume may change."""
    record = Path(sweep_dir) / SWEEP_RECORD
    try:
        lines = OmegaConf.load(record).hydra.overrides.task
    except Exception as error:
        raise ConfigError(
            "resume", True, f"false here: {record} cannot be read ({one_line(error)})"
        ) from None
    return resumable_overrides(list(lines))


def resumable_overrides(lines: list[str]) -> list[str]:
    """``lines`` without the overrides of the keys that a resume may change."""
    return [line for line in lines if not may_change(line.split("=", 1)[0].lstrip("+~"))]


def check_sweep_resume(sweep_dir: Path, overrides: list[str]) -> None:
    """Check that a sweep with the task ``overrides`` and ``resume=true`` can continue the sweep
    in ``sweep_dir``; raise a one-line ConfigError otherwise."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SWEEP_RECORD).is_file():
        raise ConfigError(
            "resume",
            True,
            f"false unless hydra.sweep.dir names a sweep to continue ({sweep_dir} holds no "
            f"{SWEEP_RECORD})",
        )
    recorded, given = recorded_overrides(sweep_dir), resumable_overrides(overrides)
    if recorded != given:
        dropped = [line for line in recorded if line not in given]
        added = [line for line in given if line not in recorded]
        changes = [f"drops {' '.join(dropped)}"] if dropped else []
        changes += [f"adds {' '.join(added)}"] if added else []
        raise ConfigError(
            "resume",
            True,
            "the sweep's own overrides, in their order (only trainer.max_steps and settings "
            "that change no number may change, docs/safety.md; "
            f"{SWEEP_RECORD} records them); this command "
            + (", ".join(changes) or "reorders them (the order numbers the jobs)"),
        )
    for run_dir in sorted(run_dirs(sweep_dir)):
        check_run_continues(run_dir)


def check_run_continues(run_dir: Path) -> None:
    """A run of a resumed sweep must have finished, never have begun training (no config.yaml,
    no metrics.json: it starts fresh), or be able to resume from its checkpoint."""
    config, metrics = run_dir / "config.yaml", run_dir / "metrics.json"
    if not config.is_file() and not metrics.is_file():
        return
    try:
        if json.loads(metrics.read_text()).get("status") in FINISHED:
            return
    except (OSError, ValueError, AttributeError):
        pass  # no readable outcome: it must resume
    try:
        cfg = OmegaConf.load(config)
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
        check_resume(cfg)
    except Exception as error:
        reason = one_line(error)
        if isinstance(error, ConfigError):  # the why, without "resume=True is invalid: ..."
            reason = str(error).split(" accepts ", 1)[-1].removeprefix("false here: ")
        raise ConfigError(
            "resume",
            True,
            f"false here: the run in {run_dir} cannot continue ({reason}); "
            "move it out of the sweep dir to run it again from the start",
        ) from None
