"""The runs of a sweep grouped over seeds (the runs themselves: ``bpttlab.analysis.records``).

Runs whose configs differ only in ``seed`` (and in where they write, how fast they ran, or
whether they were resumed) form a group. A group's numbers count its completed and diverged
runs, one per seed: a second run of a seed the group has already is a duplicate, not an
independent seed, and is left out of every number (the group keeps its first finished run of
that seed, else its first run). Interrupted, failed, running and invalid runs are counted
apart.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from bpttlab.analysis import stats
from bpttlab.analysis.records import FINISHED, STATUSES, Run, read_runs
from bpttlab.cli.hparams import KEYS

__all__ = ["FINISHED", "STATUSES", "Group", "Run", "compact", "group_runs", "read_runs", "varying"]
APART = ("failed", "interrupted", "running", "invalid")
"""Statuses counted apart from a group's numbers."""


@dataclass
class Group:
    """Runs whose configs differ only in seed."""

    runs: list[Run]

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def duplicates(self) -> list[tuple[Run, Run]]:
        """Each run of a seed that the group counts in another run, with that run: its first
        finished run of the seed, else its first valid one, else its first."""
        kept: dict[str, Run] = {}
        for run in sorted(self.runs, key=lambda r: (not r.finished, r.status == "invalid")):
            if run.seed is not None:
                kept.setdefault(json.dumps(run.seed), run)
        pairs = [(r, kept[json.dumps(r.seed)]) for r in self.runs if r.seed is not None]
        return [(run, other) for run, other in pairs if other is not run]

    @property
    def counted(self) -> list[Run]:
        """The runs but the duplicates, in order."""
        left_out = {id(run) for run, _ in self.duplicates}
        return [r for r in self.runs if id(r) not in left_out]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.counted if r.finished]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.counted)

    def summary(self) -> dict[str, Any]:
        """The group's numbers: n finished runs (one per seed), their seeds, solve rate k/n
        with its Wilson 95 % interval, median solved_at_step over the solved runs with its
        range, mean final normalised loss with its Student-t 95 % half-width (over the runs
        that have one), and the diverged, failed, interrupted, running, invalid and duplicate
        counts."""
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
            **{status: self.count(status) for status in APART},
            "duplicates": len(self.duplicates),
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
    0.02"; then the diverged count, and the runs left out: failed, interrupted, running,
    invalid, and duplicates of a seed."""
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
    apart = [f"{row[s]} {s}" for s in (*APART, "duplicates") if row[s]]
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
