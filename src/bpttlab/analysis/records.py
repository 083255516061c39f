"""The runs below a directory, read back from what each left in its run dir.

A run dir is a directory holding a metrics.json, a config.yaml or Hydra's record of the job
(``bpttlab.runs.rundir.RUN_RECORDS``). Its status is metrics.json's ``status`` (completed,
diverged, interrupted or failed); a metrics.json written before runs recorded one reads
"diverged" when ``diverged`` is true, else "completed". A run that started and left no
metrics.json is ``running`` while a live process holds its lock, else ``failed``: killed
(SIGKILL, out of memory) or crashed (a segfault) before it could record how it ended. A
metrics.json that cannot be read, or holds a value a run never writes (``"solved": "yes"``,
``"solved_at_step": -5``, ``"status": "weird"``), makes the run ``invalid``: listed with its
path and why, never counted.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bpttlab.cli.hparams import hyperparameters
from bpttlab.runs.rundir import HYDRA_RECORD, live_pid, run_dirs

RECORDED = ("completed", "diverged", "interrupted", "failed")
"""The statuses a run writes into its metrics.json."""
STATUSES = (*RECORDED, "running", "invalid")
FINISHED = ("completed", "diverged")
"""Statuses whose results count: divergence is a result, a crash or a kill is not."""
NO_OUTCOME = (
    "no metrics.json: the run ended without recording how (killed, e.g. SIGKILL or out of "
    "memory, or crashed, e.g. a segfault)"
)


def _step(value: object) -> bool:
    return type(value) is int and value >= 0


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


CHECKS = {
    "status": (lambda v: v in RECORDED, "one of " + ", ".join(RECORDED)),
    "solved": (lambda v: type(v) is bool, "true or false"),
    "diverged": (lambda v: type(v) is bool, "true or false"),
    "solved_at_step": (lambda v: v is None or _step(v), "a step >= 0 or null"),
    "diverged_at_step": (lambda v: v is None or _step(v), "a step >= 0 or null"),
    "steps": (_step, "a step count >= 0"),
    "normalized_loss": (lambda v: v is None or (_number(v) and v >= 0), "a number >= 0 or null"),
    "final_val_loss": (lambda v: v is None or _number(v), "a finite number or null"),
    "val_accuracy": (lambda v: v is None or (_number(v) and 0 <= v <= 1), "0 to 1 or null"),
}
"""What each metrics.json key the report reads may hold, as a run writes it."""
PATH_KEYS = {"run_dir", "dirpath", "save_dir", "default_root_dir", "log_dir", "ckpt_path"}
"""Config keys that say where a run writes, not what it runs: never part of a group's identity."""
RUNTIME_KEYS = (
    *("callbacks.progress_bar", "trainer.enable_progress_bar"),
    *("keep_freed_memory", "compiled_kernels", "resume"),
)
"""Config keys (and the keys under them) that change what a run shows, how fast it goes or
whether it continued an earlier process, not what it computes (beyond float rounding): never
part of a group's identity either."""


@dataclass
class Run:
    """One run: its directory, flattened config, hyperparameters and metrics; ``problem`` says
    why its metrics.json cannot be counted (then ``metrics`` is empty)."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    problem: str | None = None
    choices: dict[str, str] = field(default_factory=dict)
    """The option of each config group it was composed from (``{"cell": "gru"}``)."""
    overridden: tuple[str, ...] = ()
    """The keys and groups its command line set (``cell``, ``task.gap``, ``seed``)."""
    hparams: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.hparams = hyperparameters(OmegaConf.create(_nest(self.config)))

    @property
    def status(self) -> str:
        if self.problem is not None:
            return "invalid"
        status = self.metrics.get("status")
        if status in STATUSES:
            return status
        return "diverged" if self.metrics.get("diverged") else "completed"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.metrics.get("seed"))

    def setting(self, key: str) -> Any:
        """A group's option (``cell``: ``gru``), else the config key's value (None if absent)."""
        return self.choices[key] if key in self.choices else self.config.get(key)

    def identity(self, *without: str) -> tuple[tuple[str, str], ...]:
        """The config without ``seed``, the path-like and runtime keys and ``without``: equal
        for the runs of one group."""
        if not self.config:  # no config.yaml: a group of its own
            return (("run", str(self.path)),)
        dropped = {"seed", *without}
        return tuple(
            (key, json.dumps(value))
            for key, value in sorted(self.config.items())
            if key not in dropped
            and key.rsplit(".", 1)[-1] not in PATH_KEYS
            and not any(key == k or key.startswith(k + ".") for k in RUNTIME_KEYS)
        )

    def number(self, key: str) -> float:
        value = self.metrics.get(key)
        return float(value) if isinstance(value, int | float) and value is not None else math.nan


def warn(message: str) -> None:
    print(f"bpttlab-report: warning: {message}", file=sys.stderr)


def read_runs(root: Path) -> list[Run]:
    """Every run below ``root``, in natural directory order; an invalid one with a one-line
    warning."""
    runs = [read_run(run_dir) for run_dir in sorted(run_dirs(root), key=_natural)]
    for run in runs:
        if run.problem is not None:
            warn(f"{run.path}: {run.problem}; the run is not counted")
    return runs


def read_run(run_dir: Path) -> Run:
    config = read_config(run_dir / "config.yaml") or read_config(
        run_dir / HYDRA_RECORD / "config.yaml", run_dir
    )
    chosen = read_choices(run_dir / HYDRA_RECORD)
    if live_pid(run_dir) is not None:
        return Run(run_dir, config, {"status": "running"}, None, *chosen)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        return Run(run_dir, config, {"status": "failed", "error": NO_OUTCOME}, None, *chosen)
    try:
        metrics = json.loads(metrics_file.read_text())
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())
        return Run(run_dir, config, {}, f"unreadable metrics.json ({reason})", *chosen)
    bad = [
        f"{key} = {json.dumps(metrics[key])} (a run writes {accepts})"
        for key, (valid, accepts) in CHECKS.items()
        if key in metrics and not valid(metrics[key])
    ]
    if bad:
        return Run(run_dir, config, {}, "invalid metrics.json: " + "; ".join(bad), *chosen)
    return Run(run_dir, config, metrics, None, *chosen)


def read_choices(record: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """From Hydra's record of a job: the option of each config group it was composed from
    (Hydra's own groups left out), and the keys its command line set. Empty without one."""
    try:
        choices = OmegaConf.load(record / "hydra.yaml").hydra.runtime.choices
        options = {
            str(group): str(option)
            for group, option in OmegaConf.to_container(choices).items()
            if option is not None and not str(group).startswith("hydra/")
        }
    except Exception:  # no record, or one that cannot be read: the config alone tells
        return {}, ()
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(record / "overrides.yaml"))
        keys = tuple(str(line).split("=", 1)[0].lstrip("+~") for line in overrides)
    except Exception:
        keys = ()
    return options, keys


def read_config(path: Path, run_dir: Path | None = None) -> dict[str, Any]:
    """The saved config, flattened to dotted keys ({} when missing or unreadable). Hydra's
    record (given ``run_dir``) is resolved with ``run_dir`` as the run's dir, where it can."""
    if not path.exists():
        return {}
    try:
        config = OmegaConf.load(path)
        if run_dir is not None:
            config.run_dir = str(run_dir)
            with contextlib.suppress(Exception):  # what only Hydra resolves stays as written
                OmegaConf.resolve(config)
        container = OmegaConf.to_container(config, resolve=False)
    except Exception as error:  # a broken yaml must not stop the report
        warn(f"{path}: unreadable config.yaml ({' '.join(str(error).split())})")
        return {}
    return flatten(container) if isinstance(container, dict) else {}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _natural(path: Path) -> list[tuple[int, int, str]]:
    """Sort key that puts run 10 after run 9 (numbers before words, so that any two dir names
    compare)."""
    words = path.name.replace("_", " ").split()
    key = [(0, int(w), "") if w.isdigit() else (1, 0, w) for w in words]
    return key + [(2, 0, str(path))]
