"""Benchmark parallel sweeps: seed sweeps of LSTM runs through the real command line, one run
after another against hydra/launcher=joblib with 2 jobs.

    python scripts/bench_sweeps.py [--quick] [--sweep-grids N] [--threads N] [--json PATH]
        [--write-docs PATH]

Seed sweeps of LSTM runs (12 short runs of the results grid, 4 long ones, 4 of the README
LSTM) through ``bpttlab-train -m``: the basic launcher (one run after another, torch on every
core) against hydra/launcher=joblib with 2 jobs (torch threads per job = cores / 2, as bpttlab
sets them; loky keeps each worker, and its imports, for every job it runs), the two in turn
for each grid. Target: serial / parallel >= 1.6x. ``--quick`` runs 20 steps per run and
2 seeds per grid; ``--sweep-grids N`` only the first N grids.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_frame import run
from bench_protocol import progress, refuse, verdict
from bench_report import Section

SECTIONS = ("sweep",)
TARGET = 1.6
QUICK_STEPS, QUICK_SEEDS = 20, 2
GRIDS = {
    # name: (overrides of each run, steps per run in the full benchmark, seeds)
    # a seed sweep of experiment=results' runs, the common sweep: many short, small runs
    "short runs, results grid (LSTM 64, batch 32, copy T=70)": (
        ["cell.hidden_size=64", "module.batch_size=32", "task=copy", "task.gap=50"],
        300,
        12,
    ),
    # the same runs at the results grid's full length: start-up amortised
    "long runs, results grid (LSTM 64, batch 32, copy T=70)": (
        ["cell.hidden_size=64", "module.batch_size=32", "task=copy", "task.gap=50"],
        1500,
        4,
    ),
    # short runs of a model whose matmuls already use both cores in one process
    "README LSTM (hidden 128, batch 64, adding T=50)": (["task=adding", "task.gap=50"], 150, 4),
}
LAUNCHERS = {
    "serial": [],
    "joblib, 2 jobs": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep-grids", type=int, help="only the first N grids (default: all)")


def check_options(args: argparse.Namespace, sections: set[str]) -> None:
    if args.sweep_grids is not None and args.sweep_grids < 1:
        refuse("--sweep-grids must be at least 1")


def sweep_speedup(quick: bool, grids: int = len(GRIDS)) -> list[dict]:
    """Wall time of each grid's seed sweep under each launcher, and their ratio."""
    cli = str(Path(sys.executable).parent / "bpttlab-train")
    results = []
    for grid_name, (overrides, full_steps, full_seeds) in list(GRIDS.items())[:grids]:
        steps, seeds = (QUICK_STEPS, QUICK_SEEDS) if quick else (full_steps, full_seeds)
        grid = ["-m", "cell=lstm", *overrides, f"seed=range({seeds})", f"trainer.max_steps={steps}"]
        grid += ["~callbacks.grad_flow", "module.stop_when_solved=false"]
        grid += ["trainer.val_check_interval=100000", "trainer.enable_progress_bar=false"]
        times = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, launcher in LAUNCHERS.items():
                progress(f"sweep {grid_name}: {name}")
                start = time.perf_counter()
                command = [cli, *grid, *launcher, f"hydra.sweep.dir={tmp}/{len(times)}"]
                subprocess.run(command, check=True, capture_output=True)
                times[name] = time.perf_counter() - start
        speedup = times["serial"] / times["joblib, 2 jobs"]
        results.append(
            {
                "grid": grid_name,
                "runs": seeds,
                "steps_per_run": steps,
                "seconds": times,
                "speedup": speedup,
                "target": TARGET,
                "met": speedup >= TARGET,
            }
        )
    return results


def sweep_section(results: list[dict]) -> Section:
    rows = [
        [
            r["grid"],
            str(r["runs"]),
            str(r["steps_per_run"]),
            f"{r['seconds']['serial']:.1f}",
            f"{r['seconds']['joblib, 2 jobs']:.1f}",
            f"{r['speedup']:.2f}",
            verdict(r["speedup"], TARGET),
        ]
        for r in results
    ]
    return Section(
        "sweep",
        "Parallel sweeps: seed sweeps of LSTM runs from the command line, serial vs joblib",
        ["grid", "runs", "steps/run", "serial s", "joblib s", "speedup", "target"],
        rows,
        notes=["speedup = serial / joblib wall time of the whole sweep, start-up included."],
        counts="One sweep per launcher and grid, the two launchers in turn",
    )


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    results = {"sweep": sweep_speedup(args.quick, args.sweep_grids or len(GRIDS))}
    table = sweep_section(results["sweep"])
    print(table.text())
    return results, [table]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run(__doc__, SECTIONS, measure, argv, add_options, check_options)


if __name__ == "__main__":
    main()
