"""Paired comparisons across seeds: ``bpttlab-report DIR --compare KEY=A,B``.

KEY is a config key (``cell.init``, ``bptt.truncation``) or a config group (``cell``, ``task``),
written as the sweep was. Two runs pair when they have the same seed and their configs are the
same except for KEY (A in one, B in the other), where they write, and, when KEY is a group
(or a key its option sets), the keys of the group that only follow from its option (a cell's
own defaults); see ``pairing_context``. Pairs with the same config otherwise form one
comparison (say, one per task and gap). For each: the per-seed differences B - A of the final
normalised loss (pairs where both runs have one) and of solved_at_step (pairs where both
solved), each with an exact two-sided sign test and Wilcoxon signed-rank test; with fewer
than 6 non-zero differences neither test can reach p < 0.05, and the text says so.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from bpttlab.analysis import stats
from bpttlab.analysis.sweep import Group, Run, varying

ALPHA = 0.05


def parse(spec: str) -> tuple[str, str, str]:
    """ "cell.init=default,chrono" -> ("cell.init", "default", "chrono"); ValueError otherwise."""
    key, _, values = spec.partition("=")
    parts = values.split(",")
    if not key or len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ValueError(f"--compare {spec!r}: expected KEY=A,B with two different values")
    return key, parts[0], parts[1]


def spelled(value: Any) -> str:
    """A config value as it is written on the command line (null, true, 3, 0.001, chrono)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def matches(written: str, value: Any) -> bool:
    """Whether ``value`` (a group's option or a config value) is the one ``written`` on the
    command line: ``null`` is None, ``true`` is True, ``3e-5`` is 0.00003."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return written == spelled(value) or (value is None and written in ("None", "~"))
    try:
        return float(written) == float(value)
    except (TypeError, ValueError):
        return False


def which(value: Any, a: str, b: str) -> str | None:
    """``a`` or ``b``, whichever ``value`` is written as, else None."""
    return next((spec for spec in (a, b) if matches(spec, value)), None)


def _seed_order(seed: Any) -> tuple:
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


@dataclass
class Difference:
    """Per-seed paired differences B - A of one metric, and the tests on them."""

    metric: str
    seeds: list[Any]
    a: list[float]
    b: list[float]

    @property
    def deltas(self) -> list[float]:
        return [y - x for x, y in zip(self.a, self.b, strict=True)]

    def sentence(self, label_a: str, label_b: str) -> str:
        n = len(self.deltas)
        if n == 0:
            return f"{self.metric}: no pair has a value in both runs."
        nonzero = sum(d != 0 for d in self.deltas)
        median = statistics.median(self.deltas)
        sign, wilcoxon = stats.sign_test(self.deltas), stats.wilcoxon(self.deltas)
        text = (
            f"{self.metric}: {label_b} - {label_a} over {n} seeds: median {median:+.4g} "
            f"({sum(d < 0 for d in self.deltas)} lower, {sum(d > 0 for d in self.deltas)} higher); "
            f"sign test p = {sign:.3g}, Wilcoxon signed-rank p = {wilcoxon:.3g}. "
        )
        if stats.smallest_p(nonzero) >= ALPHA:
            return text + (
                f"With {nonzero} non-zero differences no two-sided test can reach p < {ALPHA} "
                f"(the smallest possible p is {stats.smallest_p(nonzero):.3g}; it needs 6): "
                "these seeds cannot tell."
            )
        if min(sign, wilcoxon) < ALPHA:
            return text + f"The difference is significant at {ALPHA} (Wilcoxon p = {wilcoxon:.3g})."
        return text + f"Not significant at {ALPHA}: these seeds cannot tell."


@dataclass
class Comparison:
    """The pairs of one context (the rest of the config)."""

    context: str
    seeds: list[Any]
    loss: Difference
    steps: Difference
    solved_a: str
    solved_b: str


def pairing_context(run: Run, key: str) -> tuple[tuple[str, str], ...]:
    """What a run must share with the run it pairs with: its config and group options but for
    the seed, where it writes and ``key``. When ``key`` is a group (``cell``) or a key that its
    group's option sets (``cell.kind``, not set on the command line), that option and the keys
    it sets (``cell.nonlinearity``) are left out too; keys set on the command line stay."""
    group = key.split(".", 1)[0]
    follows = group in run.choices and (key == group or key not in run.overridden)
    kept = [
        (k, v)
        for k, v in run.identity(key)
        if not (follows and k.startswith(group + ".") and k not in run.overridden)
    ]
    options = [
        (f"{g} (group)", o) for g, o in sorted(run.choices.items()) if not follows or g != group
    ]
    return tuple(kept + options)


def compare(runs: list[Run], key: str, a: str, b: str) -> list[Comparison]:
    """Pair the finished runs by seed across KEY = A and KEY = B (a config key, or a config
    group such as ``cell``); one Comparison per context. Raises ValueError when no run has KEY
    or no pair is found, saying why."""
    finished = [r for r in runs if r.finished]
    if not any(key in r.config or key in r.choices for r in finished):
        groups = sorted({g for r in finished for g in r.choices})
        known = (
            f" (config groups: {', '.join(groups)}; or a key such as cell.kind)" if groups else ""
        )
        raise ValueError(f"--compare: no run has the config key or group {key!r}{known}")
    sides: dict[tuple, dict[str, dict[Any, Run]]] = {}
    for run in finished:
        spec = which(run.setting(key), a, b) if key in run.config or key in run.choices else None
        if spec is None:
            continue
        sides.setdefault(pairing_context(run, key), {a: {}, b: {}})[spec][run.seed] = run
    contexts = [(ident, s) for ident, s in sides.items() if set(s[a]) & set(s[b])]
    if not contexts:
        raise ValueError("--compare: " + unpaired(finished, key, a, b))
    groups = [Group([next(iter(s[a].values()))]) for _, s in contexts]
    columns = varying(groups, key)
    comparisons = []
    for group, (_, side) in zip(groups, contexts, strict=True):
        seeds = sorted(set(side[a]) & set(side[b]), key=_seed_order)
        pairs = [(side[a][s], side[b][s]) for s in seeds]
        context = ", ".join(f"{c}={_show(group.first, c)}" for c in columns) or "all runs"
        comparisons.append(
            Comparison(
                context,
                seeds,
                _difference("normalized_loss", seeds, pairs, lambda r: r.number("normalized_loss")),
                _difference("solved_at_step", seeds, pairs, _solved_step),
                _rate([x for x, _ in pairs]),
                _rate([y for _, y in pairs]),
            )
        )
    return comparisons


def unpaired(runs: list[Run], key: str, a: str, b: str) -> str:
    """Why no run with KEY = A pairs with a run with KEY = B, naming the keys that differ."""
    side = {spec: [r for r in runs if which(r.setting(key), a, b) == spec] for spec in (a, b)}
    head = f"no seed has runs with both {key}={a} and {key}={b}"
    for spec in (a, b):
        if not side[spec]:
            values = sorted({spelled(r.setting(key)) for r in runs if r.setting(key) is not None})
            return f"{head}: no finished run has {key}={spec} (they have {', '.join(values)})"
    seeds = {spec: {json.dumps(r.seed) for r in side[spec]} for spec in (a, b)}
    if not seeds[a] & seeds[b]:
        listed = [f"{key}={spec} has seeds {' '.join(sorted(seeds[spec]))}" for spec in (a, b)]
        return f"{head}: {'; '.join(listed)}"
    pairs = [(x, y) for x in side[a] for y in side[b] if x.seed == y.seed]
    differing = [_differences(pairing_context(x, key), pairing_context(y, key)) for x, y in pairs]
    (x, y), keys = min(zip(pairs, differing, strict=True), key=lambda pair: len(pair[1]))
    shown = ", ".join(keys[:MAX_KEYS]) + (
        f" and {len(keys) - MAX_KEYS} more" if keys[MAX_KEYS:] else ""
    )
    return (
        f"no run with {key}={a} pairs with a run with {key}={b}: runs pair when they have the "
        f"same seed and agree on every other key; the closest, {x.path.name} and {y.path.name} "
        f"(seed {x.seed}), differ in {shown}"
    )


MAX_KEYS = 6
"""Differing keys a message names; the rest are counted."""


def _differences(x: tuple, y: tuple) -> list[str]:
    """``key: A-value vs B-value`` for each key whose value differs between two contexts."""
    first, second = dict(x), dict(y)
    keys = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    return [f"{k}: {first.get(k, 'absent')} vs {second.get(k, 'absent')}" for k in keys]


def _show(run: Run, column: str) -> Any:
    return run.hparams[column] if column in run.hparams else run.config.get(column)


def _solved_step(run: Run) -> float:
    return run.number("solved_at_step") if run.metrics.get("solved") else math.nan


def _rate(runs: list[Run]) -> str:
    return f"{sum(bool(r.metrics.get('solved')) for r in runs)}/{len(runs)} solved"


def _difference(metric: str, seeds: list[Any], pairs: list[tuple[Run, Run]], read) -> Difference:
    kept = [(s, read(x), read(y)) for s, (x, y) in zip(seeds, pairs, strict=True)]
    kept = [(s, x, y) for s, x, y in kept if math.isfinite(x) and math.isfinite(y)]
    return Difference(
        metric, [s for s, _, _ in kept], [x for _, x, _ in kept], [y for *_, y in kept]
    )


def markdown(comparisons: list[Comparison], key: str, a: str, b: str) -> str:
    """The comparisons as Markdown: a table of per-seed values and differences per context,
    and a sentence per metric."""
    lines = [f"# Paired comparison: {key}={b} against {key}={a}", ""]
    lines.append(
        f"Differences are {b} - {a}, paired by seed; p-values are exact and two-sided "
        "(sign test and Wilcoxon signed-rank, zero differences dropped)."
    )
    for c in comparisons:
        lines += ["", f"## {c.context}", "", f"{a}: {c.solved_a}; {b}: {c.solved_b}.", ""]
        lines.append(f"| seed | loss {a} | loss {b} | Δ loss | step {a} | step {b} | Δ step |")
        lines.append("|---|---|---|---|---|---|---|")
        loss = dict(
            zip(c.loss.seeds, zip(c.loss.a, c.loss.b, c.loss.deltas, strict=True), strict=True)
        )
        steps = dict(
            zip(c.steps.seeds, zip(c.steps.a, c.steps.b, c.steps.deltas, strict=True), strict=True)
        )
        for seed in c.seeds:
            cells = [*(loss.get(seed) or ("—",) * 3), *(steps.get(seed) or ("—",) * 3)]
            lines.append(f"| {seed} | " + " | ".join(_fmt(v) for v in cells) + " |")
        lines += ["", c.loss.sentence(a, b), "", c.steps.sentence(a, b)]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
