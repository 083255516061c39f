"""LastCheckpoint: ``<dirpath>/last.ckpt`` whenever the optimiser step count crosses a multiple
of the interval (TBPTT makes several steps per batch, so the count can jump past an exact
multiple); ``StopOnSignal`` has it save the batch a signal stops the run after.

A Checkpoint subclass, so Lightning runs it after every other callback of the batch; the file
is written next to the old one and renamed over it, so a kill never leaves half a checkpoint.
Every file is sealed (``bpttlab.runs.seal``) with the run's ``identity`` and a checksum.
A batch that Lightning validates after is saved after that validation: Lightning resumes from
such a checkpoint without validating again, but skips the validation of a checkpoint taken
before it, which would lose that validation's points and what it decided (``solved_at_step``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from bpttlab import checks
from bpttlab.runs.seal import sealed

LAST = "last.ckpt"


def save_atomically(trainer: L.Trainer, path: Path, identity: dict[str, Any] | None = None) -> None:
    """What ``trainer.save_checkpoint`` writes, sealed with ``identity`` and its checksum, to a
    temporary name, then renamed to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    trainer.strategy.save_checkpoint(sealed(checkpoint, identity), partial)
    os.replace(partial, path)


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the training batch now ending (ask from
    ``on_train_batch_end``): the very test its training loop makes after the batch."""
    return trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


class LastCheckpoint(Checkpoint):
    """Keep ``<dirpath>/last.ckpt`` at most ``every_n_train_steps`` optimiser steps old, sealed
    with ``identity`` (the run's; set by whoever runs it, None for none)."""

    def __init__(self, dirpath: str | None, every_n_train_steps: int = 200):
        self.dirpath = Path(dirpath or "checkpoints")
        self.every_n_train_steps = checks.integer("every_n_train_steps", every_n_train_steps, 1)
        self.identity: dict[str, Any] | None = None
        self.saved_at_step: int | None = None
        self._after_validation = False

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.saved_at_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *_args: object) -> None:
        step, last = trainer.global_step, self.saved_at_step or 0
        crossed = step // self.every_n_train_steps > last // self.every_n_train_steps
        if crossed and validation_follows(trainer):
            self._after_validation = True
        elif crossed:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._after_validation and not trainer.sanity_checking:
            self._after_validation = False
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Save now, unless this step is saved already."""
        if self.saved_at_step != trainer.global_step or not self.path.exists():
            save_atomically(trainer, self.path, self.identity)
            self.saved_at_step = trainer.global_step
