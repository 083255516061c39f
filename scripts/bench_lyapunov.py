"""What Lyapunov spectra and gradient flossing cost: a spectrum measurement (the callback's
work, top 8 of every layer along a validation batch) and a flossing step (loss and backward,
top 8) against a training step (forward, backward and Adam step of the same batch), full BPTT
on copy.

    python scripts/bench_lyapunov.py --threads 1 --write-docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from bench_frame import run
from bench_protocol import median, progress
from bench_report import Section

from bpttlab import CopyTask, RecurrentNet
from bpttlab.gradflow.lyapunov import network_spectra
from bpttlab.module.flossing import Flossing
from bpttlab.tasks import TRAIN, batch_generator

CELL_KINDS = ("rnn", "gru", "lstm")
EVERY = 50  # the callback's cadence the overhead is stated for


def timed(work, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``work`` after one untimed call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return median(times)


def cell_times(kind: str, task: CopyTask, inputs: torch.Tensor, hidden: int, repeats: int):
    """Seconds of a training step, a spectrum and a flossing step of a fresh ``kind`` net."""
    torch.manual_seed(0)
    model = RecurrentNet(task.input_size, task.output_size, kind=kind, hidden_size=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    flossing = Flossing(k=8)

    def train_step():
        optimizer.zero_grad()
        model(inputs).outputs.square().mean().backward()
        optimizer.step()

    def spectrum():
        with torch.no_grad():
            network_spectra(model, inputs, k=8, warmup=10)

    def flossing_step():
        optimizer.zero_grad()
        flossing.loss(model, inputs).backward()

    return tuple(timed(work, repeats) for work in (train_step, spectrum, flossing_step))


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    gap, hidden, batch = (10, 16, 8) if args.quick else (100, 128, 64)
    repeats = args.repeats or (1 if args.quick else 3)
    task = CopyTask(gap=gap)
    inputs = task.generate(batch, batch_generator(0, TRAIN, 0, "cpu")).inputs
    rows, results = [], {}
    for kind in CELL_KINDS:
        progress(f"{kind}: hidden {hidden}, copy gap {gap} ({task.seq_len} steps), batch {batch}")
        step, spec, floss = cell_times(kind, task, inputs, hidden, repeats)
        results[kind] = {"train_step_s": step, "spectrum_s": spec, "flossing_step_s": floss}
        overhead = spec / (EVERY * step)
        rows.append(
            [
                kind,
                f"{step * 1e3:.0f}",
                f"{spec:.2f}",
                f"{overhead:.2f}",
                f"{floss:.2f}",
                f"{floss / step:.0f}",
            ]
        )
    headers = [
        "cell",
        "train step ms",
        "spectrum s",
        f"overhead every {EVERY}",
        "flossing step s",
        "flossing / train step",
    ]
    notes = [
        f"Hidden {hidden}, copy gap {gap}, batch {batch}, top 8 exponents, a QR every step; "
        f"overhead every {EVERY} = spectrum / ({EVERY} training steps). Medians of {repeats} "
        "runs after one untimed run."
    ]
    section = Section(
        "lyapunov", "Lyapunov spectra and flossing against a training step", headers, rows, notes
    )
    print(section.text())
    return results, [section]


if __name__ == "__main__":
    run(__doc__, ("lyapunov",), measure, sys.argv[1:])
