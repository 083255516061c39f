"""SequenceModule: a LightningModule that trains a RecurrentNet on a Task with full or
truncated BPTT and gradient clipping, by manual optimisation (Lightning 2.x has no TBPTT).

Batches come from a BatchSource (a pure function of seed and step, so a run is reproducible and
resumable); the windows of the BPTT schedule are run by ``bptt.run_windows``. A callback can
hand the module probes for the next step (``trace_next_step``): that step is then traced and
the probes read the gradient flowing into every state.
Training scalars reach the Trainer's loggers and callbacks through ``scalars.TrainingScalars``;
the hyperparameters a fit logs are summarised by ``hparams.hyperparameters``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bpttlab.bptt import BPTT, TraceHook, Window, run_windows
from bpttlab.checks import integer
from bpttlab.clipping import Clipping
from bpttlab.model import RecurrentNet
from bpttlab.module.flossing import Flossing
from bpttlab.module.hparams import hyperparameters
from bpttlab.module.scalars import TrainingScalars
from bpttlab.module.truncation import load_truncation, save_truncation, windows_for
from bpttlab.tasks import Batch, BatchSource, Task

OptimizerFactory = Callable[..., torch.optim.Optimizer]
VALIDATION_CHUNK = 256
"""Timesteps per forward call in validation: its transient memory (outputs, the kernel's
workspace) is freed and reused chunk after chunk; at 1024 steps it made the peak of a long
sequence's validation 120 MB higher than at 256 (copy, gap 10000, batch 64, hidden 128)."""

CHECKPOINTED = ("batches", "updates", "clipped_updates", "solved_at_step", "flossed_before")
"""The module's counters that a checkpoint keeps (under ``"bpttlab"``)."""


class SequenceModule(L.LightningModule):
    """Train ``model`` on ``task``.

    Args:
        model: the network (its fast and unrolled paths share weights).
        task: the sequence task that generates batches and scores outputs.
        optimizer: a factory ``params -> Optimizer`` (e.g. a ``functools.partial``).
        bptt: full or truncated BPTT schedule, or one whose truncation is chosen in training.
        clipping: gradient clipping.
        batch_size: sequences per training batch.
        val_batches: fixed validation batches of ``batch_size`` sequences.
        seed: seeds the batches (weights are seeded by the caller).
        stop_when_solved: stop training at the first validation that solves the task.
        flossing: gradient flossing before or during training (``module.flossing``); None: off.
    """

    def __init__(
        self,
        model: RecurrentNet,
        task: Task,
        optimizer: OptimizerFactory,
        bptt: BPTT | None = None,
        clipping: Clipping | None = None,
        batch_size: int = 64,
        val_batches: int = 4,
        seed: int = 0,
        stop_when_solved: bool = True,
        flossing: Flossing | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.task = task
        self.optimizer_factory = optimizer
        self.bptt = bptt or BPTT()
        self.clipping = clipping or Clipping(mode="none")
        self.batch_size = integer("batch_size", batch_size, 1)
        self.data = BatchSource(task, seed, self.batch_size, integer("val_batches", val_batches, 1))
        self.stop_when_solved = stop_when_solved
        self.flossing = flossing or Flossing()
        self.flossed_before = 0  # flossing-only steps taken before training
        self.windows = self.bptt.windows(task.seq_len)
        self.adaptive = self.bptt.adaptive(task.seq_len)  # under auto: chooses the windows
        self.save_hyperparameters(
            hyperparameters(model, task, optimizer, self.bptt, self.clipping)
            | {"batch_size": batch_size, "val_batches": val_batches, "seed": seed}
        )
        self._next_hooks: list[TraceHook] = []
        self.scalars = TrainingScalars(task.baseline_loss)
        self.progress = self.scalars.progress  # what the progress bar shows of training
        self.batches = self.updates = self.clipped_updates = 0
        self.val_metrics: dict[str, float] = {}
        self.val_step = self.solved_at_step = self.diverged_at_step = None  # steps, once known

    # -- data --------------------------------------------------------------------------------
    def train_batch(self, step: int) -> Batch:
        """The training batch of optimiser step ``step``, on the module's device."""
        return self.data.train(step, self.device)

    def updates_per_batch(self) -> int:
        """Optimiser steps per batch: one per window that holds targets."""
        mask = self.data.loss_mask()
        return sum(bool(mask[w.loss_start : w.end].any()) for w in self.windows)

    def train_dataloader(self) -> DataLoader:
        # Batches are made on the device in training_step; the loader only paces the loop.
        max_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else 10**6
        return DataLoader(range(math.ceil(max_steps / self.updates_per_batch())), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(range(self.data.val_batches), batch_size=None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.optimizer_groups())

    # -- training ----------------------------------------------------------------------------
    def trace_next_step(self, probe: TraceHook) -> None:
        """Trace the next training step, with ``probe`` (reading gradients only) on each Trace."""
        self._next_hooks.append(probe)

    def window_losses(self, batch: Batch, windows: list[Window], probes=()) -> Iterator[Tensor]:
        """``run_windows`` with this module's loss, backward and per-timestep clipping."""
        hooks, losses = self.clipping.trace_hooks(self.batch_size), self.task.position_losses
        return run_windows(self.model, batch, windows, losses, probes, hooks, self.manual_backward)

    def training_step(self, _index: int, _batch_idx: int) -> None:
        step = self.global_step
        hooks, self._next_hooks = self._next_hooks, []
        batch = self.train_batch(step)
        windows = windows_for(self, step, batch)
        self.flossing.add_gradient(self, step, batch.inputs)  # joins the first window's update
        losses = self.window_losses(batch, windows, hooks)
        updates = BatchUpdates.run(losses, self.optimizers(), self.clipping, self.model)
        if updates.diverged:
            self._diverge(step)
            return
        self.batches += 1
        self.updates += updates.count
        self.clipped_updates += updates.clipped
        clipped_fraction = self.clipped_updates / self.updates
        self.scalars.add(self.trainer, self.batches, *updates.scalars(), clipped_fraction)

    def on_train_start(self) -> None:
        self.flossed_before += len(self.flossing.before_training(self))
        self.scalars.start(self.trainer)

    def on_train_end(self) -> None:
        self.scalars.log_unlogged(self.loggers)  # a fit shorter than log_every_n_steps too

    def _diverge(self, step: int) -> None:
        """A non-finite loss or gradient ends the run as a result, not a crash."""
        self.optimizers().zero_grad(set_to_none=True)
        self.diverged_at_step = step
        self.log_dict({"train/diverged": 1.0, "step": float(step)})
        self.trainer.should_stop = True

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, index: int, batch_idx: int) -> None:
        sums = self.metric_sums(self.data.validation(index, self.device))
        self._val_sums = sums if batch_idx == 0 else self._val_sums + sums

    def metric_sums(self, batch: Batch) -> Tensor:
        return chunked_metric_sums(self.model, self.task, batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self.task.metrics_from(self._val_sums)
        self.val_metrics = metrics
        self.val_step = self.global_step
        self.log_dict(
            {f"val/{k}": v for k, v in metrics.items()} | {"step": float(self.global_step)}
        )
        if self.trainer.sanity_checking:
            return
        if metrics["solved"] and self.solved_at_step is None:
            self.solved_at_step = self.global_step
        if metrics["solved"] and self.stop_when_solved:
            self.trainer.should_stop = True

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bpttlab"] = {key: getattr(self, key) for key in CHECKPOINTED}
        save_truncation(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for key, value in checkpoint.get("bpttlab", {}).items():
            setattr(self, key, value)
        load_truncation(self, checkpoint)


def chunked_metric_sums(model: RecurrentNet, task: Task, batch: Batch) -> Tensor:
    """The task's ``metric_sums`` over ``batch``, the model run ``VALIDATION_CHUNK`` steps at a
    time with its state carried: memory does not grow with the sequence."""
    sums, state = 0, None
    for start in range(0, batch.inputs.shape[1], VALIDATION_CHUNK):
        end = start + VALIDATION_CHUNK
        outputs, state, _ = model(batch.inputs[:, start:end], state)
        sums = sums + task.metric_sums(outputs, batch.slice(start, end))
    return sums


@dataclass
class BatchUpdates:
    """The optimiser steps of one batch, one per window: their summed loss and gradient norm
    (before clipping), how many there were and how many were clipped."""

    loss: Tensor | float = 0.0
    grad_norm: Tensor | float = 0.0
    count: int = 0
    clipped: int = 0
    diverged: bool = False

    @classmethod
    def run(cls, losses: Iterator[Tensor], optimizer, clipping: Clipping, model) -> BatchUpdates:
        """After each window's backward (``losses``), clip and step. A non-finite loss or
        gradient stops the batch before its step (``diverged``)."""
        done = cls()
        for loss in losses:
            norm, was_clipped = clipping.clip_parameters(model.parameters())
            if not (torch.isfinite(loss) and torch.isfinite(norm)):
                done.diverged = True
                return done
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done.loss += loss.detach()
            done.grad_norm += norm
            done.count += 1
            done.clipped += was_clipped
        return done

    def scalars(self) -> tuple[Tensor, Tensor, float]:
        """The batch's loss, its mean gradient norm and the fraction of its steps clipped."""
        return self.loss, self.grad_norm / self.count, self.clipped / self.count
