"""Benchmark whole runs through the real command line: peak memory, start-up, freed memory.

    python scripts/bench_runs.py [--sections memory,startup,allocator,compiled] [--repeats N]
        [--json PATH] [--write-docs PATH] [--quick]

1. Memory. Peak resident memory (the child's own ``ru_maxrss``) of ``bpttlab-train task=copy``
   with truncated BPTT (truncation 20) at gap 1000 and gap 10000: 20 optimiser steps, a
   GradientFlow probe every 10 steps, validation every 10 batches (batch generation, probes
   and validation included), and full BPTT at gap 10000 for comparison; each with freed memory
   kept (the default) and returned (``keep_freed_memory=false``). Target: TBPTT's peak grows by
   at most 10 % from gap 1000 to gap 10000.

2. Start-up. Time from launching ``bpttlab-train`` (the default run) to the end of its first
   training step, seen as the first probe's npz appearing, against ``python -c "import
   lightning"`` until its import is done; alternated A B A B, medians. Target: at most 1.3x.

Both run with one torch thread (``threads=1``), so that a busy machine does not stall them.

3. Freed memory. The bench's LSTM run (adding task T = 200, hidden 128, batch 64, full BPTT,
   100 steps, no probes) with ``keep_freed_memory=true`` (the default) against ``false``,
   alternated A B A B on every core: each run's own training time (metrics.json's
   ``wall_seconds``), its minor page faults per step and its peak resident memory, medians.

4. Compiled steps. The same run with the RNN and the GRU (bpttlab's kernels, their default),
   and with the LSTM probed every 10 steps (probed steps run bpttlab's LSTM kernel), each with
   ``compiled_kernels=true`` (the default) against ``false``, alternated, medians.

``--quick`` (a smoke run): gaps 100 and 1000 for the memory runs, 10 steps for those of sections
3 and 4, and one round (unless ``--repeats``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_frame import run
from bench_report import Section

CLI = str(Path(sys.executable).parent / "bpttlab-train")
QUIET = ["threads=1", "trainer.enable_progress_bar=false"]
SECTIONS = ("memory", "startup", "allocator", "compiled")
GAPS, QUICK_GAPS = (1000, 10000), (100, 1000)  # the memory runs' short and long gap
QUICK_STEPS = ["trainer.max_steps=10"]  # the runs of sections 3 and 4 with --quick


def memory_runs(short: int, long: int) -> dict[str, list[str]]:
    return {
        f"TBPTT(20), gap {short}": [f"task.gap={short}", "bptt.truncation=20"],
        f"TBPTT(20), gap {long}": [f"task.gap={long}", "bptt.truncation=20"],
        f"full BPTT, gap {long}": [f"task.gap={long}", "trainer.max_steps=2"],
    }


ALLOCATOR_RUN = [
    *["task=adding", "task.gap=200", "cell.hidden_size=128", "module.batch_size=64"],
    *["trainer.max_steps=100", "~callbacks.grad_flow", "module.stop_when_solved=false"],
    "trainer.enable_progress_bar=false",
]
COMPILED_RUNS = {
    "RNN, no probes": [*ALLOCATOR_RUN, "cell=rnn"],
    "GRU, no probes": [*ALLOCATOR_RUN, "cell=gru"],
    "LSTM, probes every 10 steps": [
        *(a for a in ALLOCATOR_RUN if a != "~callbacks.grad_flow"),
        "callbacks.grad_flow.every_n_steps=10",
    ],
}
MEMORY_TARGET = 1.10
STARTUP_TARGET = 1.3


def run_to_end(command: list[str]) -> resource.struct_rusage:
    """Run ``command`` to the end; its own resource usage (peak memory, page faults). Its
    stderr goes to a file, which a long run cannot fill as it can a pipe nobody reads."""
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{stderr.read().decode()[-2000:]}")
    return usage


def peak_memory_mb(args: list[str], run_dir: Path) -> float:
    """Run the CLI to the end; its peak resident set in MB."""
    command = [CLI, "task=copy", "trainer.max_steps=20", "trainer.val_check_interval=10"]
    command += ["callbacks.grad_flow.every_n_steps=10", *QUIET, *args, f"hydra.run.dir={run_dir}"]
    return run_to_end(command).ru_maxrss / 1024


def memory(quick: bool) -> dict:
    """Each run with freed memory kept (the default) and returned (``keep_freed_memory``)."""
    short, long = QUICK_GAPS if quick else GAPS
    runs = memory_runs(short, long)
    peaks: dict[str, dict[str, float]] = {"kept": {}, "returned": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, args) in enumerate(runs.items()):
            for setting, keep in (("kept", True), ("returned", False)):
                print(f"  memory: {name}, freed memory {setting}", file=sys.stderr)
                run_dir = Path(tmp) / f"{setting}{i}"
                peaks[setting][name] = peak_memory_mb([*args, f"keep_freed_memory={keep}"], run_dir)
    short_run, long_run = list(runs)[:2]
    growth = {s: p[long_run] / p[short_run] for s, p in peaks.items()}
    return {"peak_mb": peaks, "tbptt_growth": growth, "gaps": [short, long]}


def seconds_to_first_step(workdir: Path) -> float:
    """Launch the default run in ``workdir`` (it makes its own run dir under outputs/);
    seconds until its first probe, written at the end of step 0, is on disk."""
    workdir.mkdir()
    start = time.perf_counter()
    child = subprocess.Popen(
        [CLI, "trainer.max_steps=1", *QUIET],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not any(workdir.glob("outputs/**/grad_flow/step_000000.npz")):
        if child.poll() is not None:
            raise SystemExit(f"bpttlab-train exited with {child.returncode} before its first step")
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    child.wait()
    return elapsed


def seconds_to_import_lightning() -> float:
    """Launch ``python -c "import lightning"``; seconds until the import is done (its exit,
    which tears down torch, is not counted, as it is not for bpttlab-train)."""
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-c", "import time, lightning; print(time.time())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout) - start


def startup(repeats: int) -> dict:
    times: dict[str, list[float]] = {"import lightning": [], "bpttlab-train": []}
    with tempfile.TemporaryDirectory() as tmp:
        seconds_to_import_lightning()  # warm the file cache for both
        for i in range(repeats):
            print(f"  start-up: round {i + 1}/{repeats}", file=sys.stderr)
            times["import lightning"].append(seconds_to_import_lightning())
            times["bpttlab-train"].append(seconds_to_first_step(Path(tmp) / str(i)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "seconds": times,
        "median": medians,
        "ratio": medians["bpttlab-train"] / medians["import lightning"],
    }


def timed_run(args: list[str], run_dir: Path, observed: str, expected: bool) -> dict:
    """One run: training seconds, minor page faults per step, peak MB; metrics.json's
    ``observed`` must be ``expected`` (the setting took effect)."""
    usage = run_to_end([CLI, *args, f"hydra.run.dir={run_dir}"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics[observed] is not expected:
        raise SystemExit(f"{observed} is not {expected} in {run_dir}")
    return {
        "seconds": metrics["wall_seconds"],
        "faults_per_step": usage.ru_minflt / metrics["steps"],
        "peak_mb": usage.ru_maxrss / 1024,
    }


def switch(args: list[str], key: str, observed: str, repeats: int) -> dict:
    """``key=true`` against ``key=false``, alternated: every run, medians and the speed-up."""
    runs: dict[bool, list[dict]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            print(f"  {key}: round {i + 1}/{repeats}", file=sys.stderr)
            for value in (True, False):
                run_dir = Path(tmp) / f"{value}{i}"
                runs[value].append(timed_run([*args, f"{key}={value}"], run_dir, observed, value))
    medians = {
        value: {k: statistics.median(r[k] for r in results) for k in results[0]}
        for value, results in runs.items()
    }
    speedup = medians[False]["seconds"] / medians[True]["seconds"]
    return {"runs": runs, "median": medians, "speedup": speedup}


def allocator(repeats: int, quick: bool) -> dict:
    run = ALLOCATOR_RUN + (QUICK_STEPS if quick else [])
    return switch(run, "keep_freed_memory", "freed_memory_kept", repeats)


def compiled(repeats: int, quick: bool) -> dict:
    return {
        name: switch(
            args + (QUICK_STEPS if quick else []), "compiled_kernels", "compiled_kernels", repeats
        )
        for name, args in COMPILED_RUNS.items()
    }


def at_most(value: float, target: float) -> str:
    return f"{'met' if value <= target else 'MISSED'} (<= {target:.2f})"


def memory_section(r: dict) -> Section:
    short, long = r["gaps"]
    kept, returned = r["peak_mb"]["kept"], r["peak_mb"]["returned"]
    rows = [[name, f"{kept[name]:.0f}", f"{returned[name]:.0f}"] for name in kept]
    growth = r["tbptt_growth"]
    rows.append(
        [f"TBPTT gap {long} / gap {short}"] + [f"{growth['kept']:.3f}", f"{growth['returned']:.3f}"]
    )
    return Section(
        "memory",
        "Peak memory of bpttlab-train task=copy (20 steps, probes, validation), one torch thread",
        ["run", "freed memory kept MB", "returned MB"],
        rows,
        notes=[
            f"TBPTT's growth from gap {short} to gap {long}, freed memory kept: "
            f"{at_most(growth['kept'], MEMORY_TARGET)}."
        ],
        counts="One run each (the child's own peak resident set, ru_maxrss)",
    )


def startup_section(r: dict, repeats: int) -> Section:
    m = r["median"]
    return Section(
        "startup",
        "Start-up: bpttlab-train to the end of its first step against import lightning",
        ["launch", "median s", "ratio", "target"],
        [
            ["python -c 'import lightning'", f"{m['import lightning']:.2f}", "", ""],
            ["bpttlab-train, to first step", f"{m['bpttlab-train']:.2f}", f"{r['ratio']:.2f}"]
            + [at_most(r["ratio"], STARTUP_TARGET)],
        ],
        counts=f"Medians of {repeats} launches each, alternating, one torch thread",
    )


def allocator_section(r: dict, repeats: int) -> Section:
    rows = [
        [
            "kept" if keep else "returned",
            f"{m['seconds']:.2f}",
            f"{m['faults_per_step']:.0f}",
            f"{m['peak_mb']:.0f}",
            f"{r['median'][True]['seconds'] / m['seconds']:.2f}",
        ]
        for keep, m in r["median"].items()
    ]
    return Section(
        "allocator",
        "Freed memory kept or returned (keep_freed_memory): the LSTM run, adding T=200",
        ["freed memory", "training s", "faults/step", "peak MB", "speed vs kept"],
        rows,
        notes=[f"Speed-up from keeping it: {r['speedup']:.2f}x."],
        counts=f"Medians of {repeats} runs each, alternating, on every core",
    )


def compiled_section(r: dict, repeats: int) -> Section:
    rows = [
        [
            name,
            f"{result['median'][True]['seconds']:.2f}",
            f"{result['median'][False]['seconds']:.2f}",
            f"{result['speedup']:.2f}",
        ]
        for name, result in r.items()
    ]
    return Section(
        "compiled",
        "Compiled steps or torch operations (compiled_kernels), training seconds",
        ["run", "compiled s", "torch ops s", "speed-up"],
        rows,
        counts=f"Medians of {repeats} runs each, alternating",
    )


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    repeats = args.repeats or (1 if args.quick else 5)
    report, tables = {}, []
    if "memory" in sections:
        report["memory"] = memory(args.quick)
        tables.append(memory_section(report["memory"]))
        print(tables[-1].text())
    if "startup" in sections:
        report["startup"] = startup(repeats)
        tables.append(startup_section(report["startup"], repeats))
        print(tables[-1].text())
    if "allocator" in sections:
        report["allocator"] = allocator(repeats, args.quick)
        tables.append(allocator_section(report["allocator"], repeats))
        print(tables[-1].text())
    if "compiled" in sections:
        report["compiled"] = compiled(repeats, args.quick)
        tables.append(compiled_section(report["compiled"], repeats))
        print(tables[-1].text())
    return report, tables


def main(argv: list[str] | None = None) -> None:
    run(__doc__, SECTIONS, measure, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
