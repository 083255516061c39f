"""The README's vanishing table from a sweep of ``experiment=vanishing``: per cell, over its
seeds, the median and range of ``decay_per_step`` of h in layer 0 at initialisation (the first
probe) and at the last probe, the median ratio ||dL/dh_0|| / ||dL/dh_(T-1)|| at the last probe,
and the final validation accuracy.

    bpttlab-train experiment=vanishing seed=0,1,2
    python scripts/vanishing_table.py outputs/multirun/<date>/<time>_<id>
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bpttlab.analysis.sweep import group_runs, read_runs
from bpttlab.gradflow import load_profile, profile_summary

PAST_THRESHOLD = 1e-3  # conf/callbacks/grad_flow.yaml
STATE = "h_layer0"


def spread(values: list[float], digits: str = ".2g") -> str:
    """Median [min, max] of ``values``."""
    low, high = min(values), max(values)
    return f"{statistics.median(values):{digits}} [{low:{digits}}, {high:{digits}}]"


def probes(run_path: Path) -> list[dict]:
    return [load_profile(p) for p in sorted((run_path / "grad_flow").glob("step_*.npz"))]


def row(group) -> list[str]:
    at_init, at_end, ratios, accuracies, last_steps = [], [], [], [], []
    for run in group.finished:
        saved = probes(run.path)
        first = profile_summary(saved[0][STATE], PAST_THRESHOLD)
        last = profile_summary(saved[-1][STATE], PAST_THRESHOLD)
        at_init.append(first["decay_per_step"])
        at_end.append(last["decay_per_step"])
        ratios.append(last["first"] / last["last"] if last["last"] > 0 else float("nan"))
        accuracies.append(run.metrics.get("val_accuracy") or 0.0)
        last_steps.append(int(saved[-1]["step"]))
    solved = sum(bool(run.metrics.get("solved")) for run in group.finished)
    return [
        group.runs[0].config["cell.kind"],
        str(len(group.finished)),
        spread(at_init),
        spread(at_end) + f" (step {spread(last_steps, 'd')})",
        spread(ratios),
        spread(accuracies, ".2f") + f", solved {solved}/{len(group.finished)}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args(argv)
    header = [
        "cell",
        "seeds",
        "decay per step at init",
        "at the last probe",
        "||dL/dh_0|| / ||dL/dh_T-1|| then",
        "val recall accuracy",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for group in group_runs(read_runs(args.sweep)):
        print("| " + " | ".join(row(group)) + " |")


if __name__ == "__main__":
    main()
