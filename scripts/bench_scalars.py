"""Benchmark what reporting a training batch's scalars costs: bpttlab's TrainingScalars against
Lightning's ``self.log`` of the same five keys.

    python scripts/bench_scalars.py [--quick] [--repeats N] [--threads N] [--json PATH]
        [--write-docs PATH]

Each round fits a small GRU on adding (real Trainer, TensorBoard logger, logging every 50
batches) twice: once reporting through ``TrainingScalars.add`` (every batch into
``trainer.callback_metrics``, every 50th to the loggers) and once through
``LightningModule.log_dict(..., on_step=True)`` of the same five tensors, the way a module
would without TrainingScalars. Only the reporting call is timed (``time.perf_counter_ns``
around it), over every batch of the fit; the fits alternate (A B A B ...), and the table gives
the medians over rounds of the mean cost per batch, beside a batch's whole time.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from dataclasses import dataclass

import lightning as L
import torch
from bench_frame import run
from bench_protocol import SEED, alternate, median, progress
from bench_report import Section
from lightning.pytorch.loggers import TensorBoardLogger

from bpttlab import AddingTask, RecurrentNet, SequenceModule
from bpttlab.module.scalars import TrainingScalars

SECTIONS = ("scalars",)


@dataclass(frozen=True)
class Config:
    batches: int = 1000  # per fit
    repeats: int = 5  # fits per reporting path
    gap: int = 20
    hidden: int = 16
    batch: int = 16


class TimedScalars(TrainingScalars):
    """TrainingScalars, timing each call of ``add``."""

    def __init__(self, baseline_loss: float):
        super().__init__(baseline_loss)
        self.ns = 0

    def add(self, trainer, batches, loss, grad_norm, clipped, clipped_fraction) -> None:
        start = time.perf_counter_ns()
        super().add(trainer, batches, loss, grad_norm, clipped, clipped_fraction)
        self.ns += time.perf_counter_ns() - start


class TimedSelfLog(TimedScalars):
    """The same five scalars through the module's ``log_dict``, timed the same way."""

    def __init__(self, module: SequenceModule):
        super().__init__(module.task.baseline_loss)
        self.module = module

    def add(self, trainer, batches, loss, grad_norm, clipped, clipped_fraction) -> None:
        start = time.perf_counter_ns()
        scalars = {
            "train/loss": loss,
            "train/normalized_loss": loss / self.baseline_loss,
            "train/grad_norm": grad_norm,
            "train/clipped": clipped,
            "train/clipped_fraction": clipped_fraction,
        }
        self.module.log_dict(scalars, on_step=True)
        self.ns += time.perf_counter_ns() - start


def fit(cfg: Config, self_log: bool) -> dict:
    """One fit; the mean reporting cost and the mean whole time per batch, in µs."""
    task = AddingTask(gap=cfg.gap)
    L.seed_everything(SEED, verbose=False)
    model = RecurrentNet(task.input_size, task.output_size, task.token_input, "gru", cfg.hidden)
    optimizer = functools.partial(torch.optim.Adam, lr=1e-3)
    module = SequenceModule(model, task, optimizer, batch_size=cfg.batch, seed=SEED)
    module.scalars = TimedSelfLog(module) if self_log else TimedScalars(task.baseline_loss)
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=cfg.batches,
            limit_val_batches=0,
            logger=TensorBoardLogger(logs, name="", version=""),
            log_every_n_steps=50,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        start = time.perf_counter()
        trainer.fit(module)
        seconds = time.perf_counter() - start
    return {
        "report_us": module.scalars.ns / 1e3 / cfg.batches,
        "batch_us": seconds * 1e6 / cfg.batches,
    }


def scalars_section(times: dict[str, list[dict]], cfg: Config) -> Section:
    rows = []
    for name, fits in times.items():
        report = median([f["report_us"] for f in fits])
        batch = median([f["batch_us"] for f in fits])
        rows.append([name, f"{report:.1f}", f"{batch:.0f}", f"{100 * report / batch:.2f} %"])
    ours, lightning = (median([f["report_us"] for f in fits]) for fits in times.values())
    return Section(
        "scalars",
        f"Reporting a batch's training scalars: GRU, hidden {cfg.hidden}, adding gap {cfg.gap}, "
        f"batch {cfg.batch}",
        ["reporting path", "µs per batch", "batch µs", "share of a batch"],
        rows,
        notes=[
            f"self.log of the same keys costs {lightning / ours:.0f}x what TrainingScalars does."
        ],
        counts=f"Medians over {cfg.repeats} fits of {cfg.batches} batches each, alternating",
    )


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    cfg = Config(batches=100, repeats=2) if args.quick else Config()
    if args.repeats:
        cfg = Config(cfg.batches, args.repeats)
    runs = {
        "TrainingScalars (bpttlab)": functools.partial(fit, cfg, False),
        "self.log_dict, on_step": functools.partial(fit, cfg, True),
    }
    progress(f"scalars: one warm-up round, then {cfg.repeats} rounds")
    alternate(runs, 1)
    times = alternate(runs, cfg.repeats)
    table = scalars_section(times, cfg)
    print(table.text())
    return {"scalars": times}, [table]


def main(argv: list[str] | None = None) -> None:
    run(__doc__, SECTIONS, measure, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
