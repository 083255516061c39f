"""The runs of a sweep, read back from their directories, and their groups over seeds.

A run is a directory with a metrics.json (and the config.yaml its run saved). Its status is
metrics.json's ``status`` (completed, diverged, interrupted or failed); a metrics.json written
before runs recorded one reads "diverged" when ``diverged`` is true, else "completed". Runs
whose configs differ only in ``seed`` (and in where they write) form a group; a group's
numbers count its completed and diverged runs, and count failed and interrupted runs apart.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bpttlab.analysis import stats
from bpttlab.cli.hparams import KEYS, hyperparameters

STATUSES = ("completed", "diverged", "interrupted", "failed")
FINISHED = ("completed", "diverged")
"""Statuses whose results count: divergence is a result, a crash or a kill is not."""

PATH_KEYS = {"run_dir", "dirpath", "save_dir", "default_root_dir", "log_dir", "ckpt_path"}
"""Config keys that say where a run writes, not what it runs: never part of a group's identity."""

RUNTIME_KEYS = (
    *("callbacks.progress_bar", "trainer.enable_progress_bar"),
    *("keep_freed_memory", "compiled_kernels"),
)
"""Config keys (and the keys under them) that change what a run shows or how fast, not what it
computes (beyond float rounding): never part of a group's identity either."""


@dataclass
class Run:
    """One run: its directory, flattened config, hyperparameters and metrics."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    hparams: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.hparams = hyperparameters(OmegaConf.create(_nest(self.config)))

    @property
    def status(self) -> str:
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
            and not key.startswith(RUNTIME_KEYS)
        )

    def number(self, key: str) -> float:
        value = self.metrics.get(key)
        return float(value) if isinstance(value, int | float) and value is not None else math.nan


def warn(message: str) -> None:
    print(f"bpttlab-report: warning: {message}", file=sys.stderr)


def read_runs(root: Path) -> list[Run]:
    """Every run below ``root`` with a readable metrics.json, in natural directory order; an
    unreadable one is skipped with a one-line warning."""
    runs = []
    for metrics_file in sorted(root.rglob("metrics.json"), key=_natural):
        run_dir = metrics_file.parent
        try:
            metrics = json.loads(metrics_file.read_text())
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            reason = " ".join(str(error).split())
            warn(f"skipped {metrics_file}: unreadable metrics.json ({reason})")
            continue
        runs.append(Run(run_dir, read_config(run_dir / "config.yaml"), metrics))
    return runs


def read_config(path: Path) -> dict[str, Any]:
    """The saved config, flattened to dotted keys ({} when missing or unreadable)."""
    if not path.exists():
        return {}
    try:
        container = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
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
    words = path.parent.name.replace("_", " ").split()
    key = [(0, int(w), "") if w.isdigit() else (1, 0, w) for w in words]
    return key + [(2, 0, str(path))]


@dataclass
class Group:
    """Runs whose configs differ only in seed."""

    runs: list[Run]

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.finished]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)

    def summary(self) -> dict[str, Any]:
        """The group's numbers: n finished runs, their seeds, solve rate k/n with its Wilson
        95 % interval, median solved_at_step over the solved runs with its range, mean final
        normalised loss with its Student-t 95 % half-width (over the runs that have one),
        and the diverged, interrupted and failed counts."""
        done = self.finished
        n = len(done)
        solved = [r for r in done if r.metrics.get("solved")]
        steps = [r.number("solved_at_step") for r in solved]
        steps = [s for s in steps if math.isfinite(s)]
        losses = [r.number("normalized_loss") for r in done]
        losses = [v for v in losses if math.isfinite(v)]
        low, high = stats.wilson(len(solved), n)
        mean, half = stats.mean_interval(losses)
        row = {
            "n": n,
            "seeds": " ".join(str(r.seed) for r in done),
            "solved": f"{len(solved)}/{n}",
            "solve_rate": len(solved) / n if n else math.nan,
            "solve_rate_low": low,
            "solve_rate_high": high,
            "median_step": statistics.median(steps) if steps else None,
            "min_step": min(steps) if steps else None,
            "max_step": max(steps) if steps else None,
            "loss_mean": mean if losses else None,
            "loss_ci95": half if len(losses) > 1 else None,
            "loss_n": len(losses),
            "diverged": self.count("diverged"),
            "interrupted": self.count("interrupted"),
            "failed": self.count("failed"),
        }
        row["summary"] = compact(row)
        return row


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by their config without seed and paths, in order of first appearance."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        groups.setdefault(run.identity(), Group([])).runs.append(run)
    return list(groups.values())


def _step(value: float) -> str:
    return f"{value:g}"


def compact(row: dict[str, Any]) -> str:
    """One table cell for a group: "3/3 solved, median step 650 [500-800]" when some seeds
    solved the task, else the mean normalised loss with its t 95 % half-width, "0/3, 0.94 ±
    0.02"; then the diverged count, and the failed and interrupted runs left out."""
    n = row["n"]
    if n == 0:
        text = "no finished run"
    elif row["median_step"] is not None:
        solved = row["solved"]
        if row["min_step"] == row["max_step"]:
            text = f"{solved} solved, step {_step(row['median_step'])}"
        else:
            text = (
                f"{solved} solved, median step {_step(row['median_step'])} "
                f"[{_step(row['min_step'])}-{_step(row['max_step'])}]"
            )
    elif row["loss_mean"] is not None:
        text = f"{row['solved']}, {row['loss_mean']:.2f}"
        if row["loss_ci95"] is not None and math.isfinite(row["loss_ci95"]):
            text += f" ± {row['loss_ci95']:.2f}"
    else:
        text = row["solved"]
    if row["diverged"]:
        text += f", {row['diverged']} diverged"
    apart = [f"{row[s]} {s}" for s in ("failed", "interrupted") if row[s]]
    if apart:
        text += f" (left out: {', '.join(apart)})"
    return text


def varying(groups: list[Group], *without: str) -> list[str]:
    """Names that tell the groups apart: the hyperparameters (``hparams.KEYS``, not seed) that
    differ between groups, then, if those leave two groups alike, every other config key that
    differs, by its dotted name."""
    if len(groups) < 2:
        return []
    names = [
        n
        for n in KEYS
        if n != "seed"
        and KEYS[n] not in without
        and len({json.dumps(g.first.hparams[n]) for g in groups}) > 1
    ]
    labels = {tuple(json.dumps(g.first.hparams[n]) for n in names) for g in groups}
    if len(labels) == len(groups):  # the hyperparameters tell them apart
        return names
    covered = {KEYS[n] for n in KEYS}
    identities = [dict(g.first.identity(*without)) for g in groups]
    keys = sorted(set().union(*identities))
    names += [
        k
        for k in keys
        if k not in covered and len({identity.get(k) for identity in identities}) > 1
    ]
    return names


def value(run: Run, name: str) -> Any:
    """A column's value for ``run``: a hyperparameter by name, else a config key."""
    return run.hparams[name] if name in KEYS else run.config.get(name)
