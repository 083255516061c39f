"""Shared builders: small real modules and real Lightning Trainers writing into tmp dirs."""

from __future__ import annotations

import functools
import logging
import subprocess
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bpttlab import BPTT, Batch, Clipping, RecurrentNet, SequenceModule, Task

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def small_module(
    task: Task,
    kind: str = "rnn",
    hidden_size: int = 6,
    num_layers: int = 1,
    truncation: int | None = None,
    clip: Clipping | None = None,
    update_every: int | None = None,
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
        bptt=BPTT(truncation=truncation, update_every=update_every),
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


class RecordingSGD(torch.optim.SGD):
    """Plain SGD with lr=0 (so the weights never change) that keeps a copy of the gradient
    of every update it is asked to make."""

    def __init__(self, params, record: list):
        super().__init__(params, lr=0.0)
        self.record = record

    def step(self, closure=None):
        self.record.append(
            [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]
        )
        return super().step(closure)


class RecordingModule(SequenceModule):
    """SequenceModule that keeps every training batch it draws, for a reference to reuse."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drawn: list[Batch] = []

    def train_batch(self, index: int) -> Batch:
        batch = super().train_batch(index)
        self.drawn.append(batch)
        return batch


def fit_one_batch(module: SequenceModule, root) -> L.Trainer:
    """One real training step in float64 (inside training_step, so batches are float64 too)."""
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        precision="64-true",
        default_root_dir=root,
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


def signal_after_first_checkpoint(
    command: list[str], cwd: Path, run_dir: Path, sig: int, delay: float = 0.0
) -> tuple[int, str, str]:
    """Start ``command``, send it ``sig`` ``delay`` seconds after ``run_dir`` holds its first
    checkpoint, and wait: (return code, stdout, stderr)."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with slow tests first, each in its own order, then the others: ``make test``
    hands whole modules to its workers (``--dist loadfile``, so that a module-scoped fixture,
    a sweep or every documented command, is made once), the long ones while the workers are
    fresh, the quick ones to fill their last minutes so that both finish together."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_modules)
