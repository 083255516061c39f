"""LastCheckpoint under TBPTT: a batch makes several optimiser steps, so the step count can
jump over a multiple of the interval; a checkpoint is still taken at every multiple crossed."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from conftest import small_module

from bpttlab.runs.checkpoint import LastCheckpoint
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


class ValidationSteps(L.Callback):
    def __init__(self):
        self.steps: list[int] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


def validating_trainer(root: Path, max_steps: int, *callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, LastCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=5,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
    )


def test_a_checkpoint_at_a_validation_step_is_taken_after_that_validation(tmp_path):
    """Validations at 5 and 10, checkpoints every 5 steps: the file of step 10 holds both
    validations (Lightning's own record), and a run resumed from it validates at 15 and 20,
    neither repeating nor skipping one, as a run never stopped does."""
    whole = ValidationSteps()
    validating_trainer(tmp_path / "whole", 20, whole).fit(small_module(CopyTask(gap=2)))
    assert whole.steps == [5, 10, 15, 20]

    checkpoint = LastCheckpoint(str(tmp_path / "checkpoints"), every_n_train_steps=5)
    validating_trainer(tmp_path, 12, checkpoint).fit(small_module(CopyTask(gap=2)))
    saved = torch.load(checkpoint.path, weights_only=True)
    assert saved["global_step"] == 10
    validated = saved["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]
    assert validated["completed"] == 2  # a checkpoint taken before the validation holds 1

    resumed = ValidationSteps()
    trainer = validating_trainer(tmp_path, 20, resumed)
    trainer.fit(small_module(CopyTask(gap=2)), ckpt_path=checkpoint.path, weights_only=True)
    assert whole.steps == [5, 10] + resumed.steps
