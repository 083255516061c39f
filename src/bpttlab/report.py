"""bpttlab-report: a table and figures from a multirun directory.

    bpttlab-report outputs/multirun/<date>/<time> [--out DIR]

Reads every run dir below PATH that holds a metrics.json (with its config.yaml and grad_flow/
profiles) and writes, into DIR (default PATH/report): report.md and report.csv (one row per
run: the hyperparameters that vary, solved, solved_at_step, final normalised loss, diverged),
results.png (normalised loss and solved step against gap, a line per cell and truncation),
curves.png (validation normalised loss against step, a line per run) and profiles.png (each
run's last saved gradient profile, a panel per cell).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bpttlab.gradflow import load_profile
from bpttlab.hparams import KEYS, hyperparameters

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

RESULTS = ("solved", "solved_at_step", "normalized_loss", "diverged", "steps")


@dataclass
class Run:
    """One finished run: its directory, hyperparameters and metrics."""

    path: Path
    hparams: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def profile_path(self) -> Path | None:
        profiles = sorted((self.path / "grad_flow").glob("step_*.npz"))
        return profiles[-1] if profiles else None


def collect(root: Path) -> list[Run]:
    """Every run below ``root`` that wrote a metrics.json, in directory order."""
    runs = []
    for metrics_file in sorted(root.rglob("metrics.json"), key=_natural):
        run_dir = metrics_file.parent
        config = run_dir / "config.yaml"
        cfg = OmegaConf.load(config) if config.exists() else OmegaConf.create()
        runs.append(Run(run_dir, hyperparameters(cfg), json.loads(metrics_file.read_text())))
    return runs


def _natural(path: Path) -> list[Any]:
    """Sort key that puts run 10 after run 9."""
    return [int(p) if p.isdigit() else p for p in path.parent.name.replace("_", " ").split()] + [
        str(path)
    ]


def varying(runs: list[Run]) -> list[str]:
    """The hyperparameters that differ between runs (all of them for a single run)."""
    names = list(KEYS)
    if len(runs) < 2:
        return names
    return [n for n in names if len({json.dumps(r.hparams[n]) for r in runs}) > 1]


def table(runs: list[Run]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: run name, varying hyperparameters, results."""
    columns = varying(runs)
    header = ["run", *columns, *RESULTS]
    rows = [
        [r.path.name, *(r.hparams[c] for c in columns), *(r.metrics.get(k) for k in RESULTS)]
        for r in runs
    ]
    return header, rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def write_tables(runs: list[Run], out: Path) -> None:
    header, rows = table(runs)
    with open(out / "report.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    solved = sum(bool(r.metrics.get("solved")) for r in runs)
    diverged = sum(bool(r.metrics.get("diverged")) for r in runs)
    summary = f"{len(runs)} runs: {solved} solved, {diverged} diverged."
    (out / "report.md").write_text("\n".join([f"# Sweep report\n\n{summary}\n", *lines]) + "\n")


def _line_label(hp: dict[str, Any], keys: list[str]) -> str:
    return " ".join(f"{k}={hp[k]}" if k != "cell" else str(hp[k]) for k in keys) or "runs"


def results_figure(runs: list[Run]) -> plt.Figure:
    """Final normalised loss and solved step against gap; a line per cell (and truncation, clip)."""
    split = [
        k
        for k in ("cell", "init", "truncation", "clip", "task")
        if k in varying(runs) or k == "cell"
    ]
    lines: dict[str, list[Run]] = {}
    for run in runs:
        lines.setdefault(_line_label(run.hparams, split), []).append(run)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    for label, members in sorted(lines.items()):
        members.sort(key=lambda r: r.hparams["gap"] or 0)
        gaps = [r.hparams["gap"] for r in members]
        loss = [_number(r.metrics.get("normalized_loss")) for r in members]
        solved = [_number(r.metrics.get("solved_at_step")) for r in members]
        left.plot(gaps, loss, "o-", label=label)
        right.plot(gaps, solved, "o-", label=label)
    left.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="memoryless baseline")
    left.set(
        xlabel="gap T",
        ylabel="final val loss / baseline",
        title="normalised loss (lower is better)",
    )
    right.set(xlabel="gap T", ylabel="optimiser step", title="solved at step (missing: never)")
    left.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _number(value: Any) -> float:
    return float(value) if value is not None else math.nan


def curves_figure(runs: list[Run], tag: str = "val/normalized_loss") -> plt.Figure:
    """Validation normalised loss against optimiser step, a line per run (from its events)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=90)
    keys = varying(runs)
    for run in runs:
        events = EventAccumulator(str(run.path / "tensorboard"))
        events.Reload()
        points = events.Scalars(tag) if tag in events.Tags().get("scalars", []) else []
        label = _line_label(run.hparams, keys)
        if run.metrics.get("diverged"):
            label += f" (diverged at step {run.metrics.get('diverged_at_step')})"
        ax.plot(
            [p.step for p in points], [p.value for p in points], "o-", markersize=2, label=label
        )
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="memoryless baseline")
    ax.set(
        xlabel="optimiser step", ylabel="val loss / baseline", title="learning curves", yscale="log"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def profiles_figure(runs: list[Run], state: str = "h_layer0") -> plt.Figure:
    """Each run's last saved ||dL/dh_k|| profile, normalised to its peak, a panel per cell; with
    one run per cell, its first profile (at initialisation) dashed beside it. The task's
    landmarks (e.g. the copy symbols and marker) are shaded."""
    with_profiles = [r for r in runs if r.profile_path is not None]
    cells = sorted({r.hparams["cell"] for r in with_profiles}) or ["none"]
    fig, axes = plt.subplots(
        1, len(cells), figsize=(4.2 * len(cells), 3.4), dpi=90, squeeze=False, sharey=True
    )
    others = [k for k in varying(with_profiles) if k != "cell"]
    for ax, cell in zip(axes[0], cells, strict=True):
        members = [r for r in with_profiles if r.hparams["cell"] == cell]
        for i, run in enumerate(members):
            paths = sorted((run.path / "grad_flow").glob("step_*.npz"))
            shown = [paths[0], paths[-1]] if len(members) == 1 and len(paths) > 1 else [paths[-1]]
            for path in shown:
                data = load_profile(path)
                profile = data[state]
                peak = profile.max() if profile.max() > 0 else 1.0
                label = (
                    _line_label(run.hparams, others) + ", " if others else ""
                ) + f"step {int(data['step'])}"
                style = "--" if path != paths[-1] else "-"
                ax.semilogy(
                    np.where(profile > 0, profile / peak, np.nan),
                    style,
                    color=f"C{i}",
                    label=label,
                    linewidth=1.1,
                )
            if i == 0:
                for j, (name, (start, end)) in enumerate(
                    zip(data["landmark_names"], data["landmark_spans"], strict=True)
                ):
                    ax.axvspan(
                        start - 0.5,
                        end - 0.5,
                        color=plt.cm.Pastel1.colors[j % 9],
                        alpha=0.6,
                        label=str(name),
                    )
        ax.set(title=cell, xlabel="timestep k")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("||dL/dh_k|| / its max")
    fig.tight_layout()
    return fig


def report(root: Path, out: Path | None = None) -> Path:
    """Write the tables and figures for the runs below ``root``; return the output dir."""
    runs = collect(root)
    if not runs:
        raise SystemExit(f"bpttlab-report: error: no metrics.json below {root}")
    out = out or root / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_tables(runs, out)
    results_figure(runs).savefig(out / "results.png")
    curves_figure(runs).savefig(out / "curves.png")
    profiles_figure(runs).savefig(out / "profiles.png")
    plt.close("all")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="bpttlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a multirun (or run) directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default PATH/report)"
    )
    args = parser.parse_args()
    if not args.path.is_dir():
        parser.error(f"{args.path} is not a directory")
    out = report(args.path, args.out)
    figures = ", ".join(str(out / f) for f in ("results.png", "curves.png", "profiles.png"))
    print(f"report: {out / 'report.md'}\nfigures: {figures}")


if __name__ == "__main__":
    main()
