"""Benchmark whole runs through the real command line: peak memory, start-up, freed memory.

    python scripts/bench_runs.py [--sections memory,startup,allocator,compiled] [--repeats N]
        [--json PATH]

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

CLI = str(Path(sys.executable).parent / "bpttlab-train")
QUIET = ["threads=1", "trainer.enable_progress_bar=false"]
MEMORY_RUNS = {
    "TBPTT(20), gap 1000": ["task.gap=1000", "bptt.truncation=20"],
    "TBPTT(20), gap 10000": ["task.gap=10000", "bptt.truncation=20"],
    "full BPTT, gap 10000": ["task.gap=10000", "trainer.max_steps=2"],
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


def memory() -> dict:
    """Each run with freed memory kept (the default) and returned (``keep_freed_memory``)."""
    peaks: dict[str, dict[str, float]] = {"kept": {}, "returned": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, args) in enumerate(MEMORY_RUNS.items()):
            for setting, keep in (("kept", True), ("returned", False)):
                print(f"  memory: {name}, freed memory {setting}", file=sys.stderr)
                run_dir = Path(tmp) / f"{setting}{i}"
                peaks[setting][name] = peak_memory_mb([*args, f"keep_freed_memory={keep}"], run_dir)
    growth = {s: p["TBPTT(20), gap 10000"] / p["TBPTT(20), gap 1000"] for s, p in peaks.items()}
    return {"peak_mb": peaks, "tbptt_growth": growth}


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


def allocator(repeats: int) -> dict:
    return switch(ALLOCATOR_RUN, "keep_freed_memory", "freed_memory_kept", repeats)


def compiled(repeats: int) -> dict:
    return {
        name: switch(args, "compiled_kernels", "compiled_kernels", repeats)
        for name, args in COMPILED_RUNS.items()
    }


def verdict(met: bool, target: str) -> str:
    return f"met ({target})" if met else f"MISSED ({target})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        default="memory,startup,allocator,compiled",
        help="memory,startup,allocator,compiled or some",
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds of sections 2 to 4")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    if sections - {"memory", "startup", "allocator", "compiled"} or args.repeats < 1:
        parser.error("--sections takes memory, startup, allocator, compiled; --repeats >= 1")
    report = {}
    if "memory" in sections:
        report["memory"] = r = memory()
        print("1. Peak memory of bpttlab-train task=copy (20 steps, probes, validation)")
        print(f"  {'':24s} {'freed memory kept':>18s} {'returned':>10s}")
        for name in MEMORY_RUNS:
            kept, returned = r["peak_mb"]["kept"][name], r["peak_mb"]["returned"][name]
            print(f"  {name:24s} {kept:15.0f} MB {returned:7.0f} MB")
        for setting, growth in r["tbptt_growth"].items():
            met = verdict(growth <= MEMORY_TARGET, "<= 1.10")
            print(f"  TBPTT gap 10000 / gap 1000, freed memory {setting}: {growth:.3f} {met}")
    if "startup" in sections:
        report["startup"] = r = startup(args.repeats)
        print(f"2. Start-up, medians of {args.repeats}")
        for name, seconds in r["median"].items():
            print(f"  {name:24s} {seconds:8.2f} s")
        ratio = r["ratio"]
        print(
            f"  to first step / import lightning: {ratio:.2f} {verdict(ratio <= STARTUP_TARGET, '<= 1.3')}"
        )
    if "allocator" in sections:
        report["allocator"] = r = allocator(args.repeats)
        print(f"3. Freed memory kept or returned (keep_freed_memory), medians of {args.repeats}")
        for keep, m in r["median"].items():
            print(
                f"  {'kept' if keep else 'returned':9s} {m['seconds']:7.2f} s"
                f"  {m['faults_per_step']:8.0f} faults/step  {m['peak_mb']:6.0f} MB peak"
            )
        print(f"  speed-up from keeping it: {r['speedup']:.2f}x")
    if "compiled" in sections:
        report["compiled"] = r = compiled(args.repeats)
        print(
            f"4. Compiled steps or torch operations (compiled_kernels), medians of {args.repeats}"
        )
        for name, result in r.items():
            on, off = result["median"][True]["seconds"], result["median"][False]["seconds"]
            print(f"  {name:28s} {on:7.2f} s compiled, {off:7.2f} s not: {result['speedup']:.2f}x")
    print(f"load average at end {[round(v, 2) for v in os.getloadavg()]}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
