"""LastCheckpoint: ``<dirpath>/last.ckpt`` whenever the optimiser step count crosses a multiple
of the interval (TBPTT makes several steps per batch, so the count can jump past an exact
multiple); ``StopOnSignal`` has it save the batch a signal stops the run after.

A Checkpoint subclass, so Lightning runs it after every other callback of the batch; the file
is written next to the old one and renamed over it, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from bpttlab import validation

LAST = "last.ckpt"


def save_atomically(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary name, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    trainer.save_checkpoint(partial, weights_only=False)
    os.replace(partial, path)


class LastCheckpoint(Checkpoint):
    """Keep ``<dirpath>/last.ckpt`` at most ``every_n_train_steps`` optimiser steps old."""

    def __init__(self, dirpath: str | None, every_n_train_steps: int = 200):
        self.dirpath = Path(dirpath or "checkpoints")
        self.every_n_train_steps = validation.integer("every_n_train_steps", every_n_train_steps, 1)
        self.saved_at_step: int | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.saved_at_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *_args: object) -> None:
        step, last = trainer.global_step, self.saved_at_step or 0
        crossed = step // self.every_n_train_steps > last // self.every_n_train_steps
        if crossed:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Save now, unless this step is saved already."""
        if self.saved_at_step != trainer.global_step or not self.path.exists():
            save_atomically(trainer, self.path)
            self.saved_at_step = trainer.global_step
