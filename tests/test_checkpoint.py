"""LastCheckpoint under TBPTT: a batch makes several optimiser steps, so the step count can
jump over a multiple of the interval; a checkpoint is still taken at every multiple crossed."""

from __future__ import annotations

import lightning as L
import torch
from conftest import small_module

from bpttlab.checkpoint import LastCheckpoint
from bpttlab.tasks import CopyTask


class Recording(LastCheckpoint):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[int] = []

    def save(self, trainer: L.Trainer) -> None:
        super().save(trainer)
        self.steps.append(trainer.global_step)


def test_a_checkpoint_whenever_a_multiple_is_crossed(tmp_path):
    module = small_module(CopyTask(gap=2), truncation=8)
    assert module.updates_per_batch() == 3  # optimiser steps per batch
    checkpoint = Recording(str(tmp_path / "checkpoints"), every_n_train_steps=5)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=30,
        max_epochs=-1,
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module)
    # steps after each batch: 3, 6, 9, ..., 30; multiples of 5 are crossed at 6, 12, 15, 21, 27, 30
    assert checkpoint.steps == [6, 12, 15, 21, 27, 30]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 30
