"""Shared builders: small real modules and real Lightning Trainers writing into tmp dirs."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bpttlab import BPTT, Clipping, RecurrentNet, SequenceModule, Task

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def small_module(
    task: Task,
    kind: str = "rnn",
    hidden_size: int = 6,
    num_layers: int = 1,
    truncation: int | None = None,
    clip: Clipping | None = None,
    lr: float = 1e-2,
    batch_size: int = 4,
    seed: int = 0,
    **model_args,
) -> SequenceModule:
    """A tiny SequenceModule on ``task`` with seeded weights."""
    torch.manual_seed(seed)
    model = RecurrentNet(
        task.input_size,
        task.output_size,
        token_input=task.token_input,
        kind=kind,
        hidden_size=hidden_size,
        num_layers=num_layers,
        embedding_dim=5,
        t_max=task.seq_len,
        **model_args,
    )
    return SequenceModule(
        model,
        task,
        functools.partial(torch.optim.SGD, lr=lr),
        bptt=BPTT(truncation=truncation),
        clipping=clip or Clipping(mode="none"),
        batch_size=batch_size,
        val_batches=1,
        seed=seed,
        stop_when_solved=False,
    )


def fit(
    module: SequenceModule,
    root: Path,
    steps: int,
    callbacks: list[L.Callback] | None = None,
    precision: str = "32-true",
    val_every: int = 10**6,
    accelerator: str = "cpu",
) -> L.Trainer:
    """Fit ``module`` for ``steps`` optimiser steps with a real Trainer and TensorBoard logger."""
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=steps,
        max_epochs=-1,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(str(root), name="tensorboard", version=""),
        callbacks=callbacks or [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        log_every_n_steps=1,
    )
    trainer.fit(module)
    return trainer


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
