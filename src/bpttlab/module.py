"""SequenceModule: a LightningModule that trains a RecurrentNet on a Task with full or
truncated BPTT and gradient clipping, by manual optimisation (Lightning 2.x has no TBPTT).

Batches come from a BatchSource (a pure function of seed and step, so a run is reproducible and
resumable); the windows of the BPTT schedule are run by ``bptt.run_windows``. A callback can
hand the module probes for the next step (``trace_next_step``): that step is then traced and
the probes read the gradient flowing into every state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader

from bpttlab.bptt import BPTT, TraceHook, Window, run_windows
from bpttlab.checks import integer
from bpttlab.clipping import Clipping
from bpttlab.model import RecurrentNet
from bpttlab.tasks import Batch, BatchSource, Task

OptimizerFactory = Callable[..., torch.optim.Optimizer]
VALIDATION_CHUNK = 256
"""Timesteps per forward call in validation: its transient memory (outputs, the kernel's
workspace) is freed and reused chunk after chunk; at 1024 steps it made the peak of a long
sequence's validation 120 MB higher than at 256 (copy, gap 10000, batch 64, hidden 128)."""


class SequenceModule(L.LightningModule):
    """Train ``model`` on ``task``.

    Args:
        model: the network (its fast and unrolled paths share weights).
        task: the sequence task that generates batches and scores outputs.
        optimizer: a factory ``params -> Optimizer`` (a Hydra ``_partial_``).
        bptt: full or truncated BPTT schedule.
        clipping: gradient clipping.
        batch_size: sequences per training batch.
        val_batches: fixed validation batches of ``batch_size`` sequences.
        seed: seeds the batches (weights are seeded by the caller).
        stop_when_solved: stop training at the first validation that solves the task.
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
        self.windows = self.bptt.windows(task.seq_len)
        self._next_hooks: list[TraceHook] = []
        self.batches = 0
        self.updates = 0
        self.clipped_updates = 0
        self.val_metrics: dict[str, float] = {}
        self.progress: dict[str, str] = {}  # what the progress bar shows of training
        self.val_step: int | None = None
        self.solved_at_step: int | None = None
        self.diverged_at_step: int | None = None

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
        """Trace the next training step, with ``probe`` (reading gradients only) on every
        Trace."""
        self._next_hooks.append(probe)

    def window_losses(self, batch: Batch, windows: list[Window], probes=()) -> Iterator[Tensor]:
        """``run_windows`` with this module's loss, backward and per-timestep clipping."""
        return run_windows(
            self.model,
            batch,
            windows,
            self.task.position_losses,
            probes=probes,
            hooks=self.clipping.trace_hooks(self.batch_size),
            backward=self.manual_backward,
        )

    def training_step(self, _index: int, _batch_idx: int) -> None:
        step = self.global_step
        batch = self.train_batch(step)
        hooks, self._next_hooks = self._next_hooks, []
        optimizer = self.optimizers()
        loss_sum, norm_sum, clipped, updates = 0.0, 0.0, 0, 0
        for loss in self.window_losses(batch, self.windows, hooks):
            norm, was_clipped = self.clipping.clip_parameters(self.model.parameters())
            if not (torch.isfinite(loss) and torch.isfinite(norm)):
                self._diverge(step)
                return
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            norm_sum += norm
            clipped += was_clipped
            updates += 1
        self.batches += 1
        self.updates += updates
        self.clipped_updates += clipped
        if self.batches % self.trainer.log_every_n_steps == 0:  # the batches Lightning writes
            self._log_training(loss_sum, norm_sum / updates, clipped / updates)

    def full_gradient_reference(self, step: int, hook: TraceHook) -> float:
        """On the batch of ``step`` at the current weights, run full BPTT with ``hook`` on its
        traces; return the cosine similarity of the full and the truncated parameter gradients.
        Leaves no gradient and no clipping count behind."""
        batch = self.train_batch(step)
        clipping = dataclasses.replace(self.clipping)  # its own count of clipped deltas
        parameters = list(self.model.parameters())

        def flat_gradient(windows: list[Window], probes: list[TraceHook]) -> Tensor:
            hooks = clipping.trace_hooks(self.batch_size)
            losses = self.task.position_losses
            for _ in run_windows(self.model, batch, windows, losses, probes, hooks):
                pass
            flat = torch.cat([p.grad.flatten() for p in parameters if p.grad is not None])
            self.model.zero_grad(set_to_none=True)
            return flat

        full = flat_gradient(BPTT().windows(self.task.seq_len), [hook])
        truncated = flat_gradient(self.windows, [])
        return torch.nn.functional.cosine_similarity(full, truncated, dim=0).item()

    def _log_training(self, loss: Tensor, grad_norm: Tensor, clipped: float) -> None:
        loss = loss.item()
        scalars = {
            "train/loss": loss,
            "train/normalized_loss": loss / self.task.baseline_loss,
            "train/grad_norm": grad_norm.item(),
            "train/clipped": clipped,
            "train/clipped_fraction": self.clipped_updates / self.updates,
        }
        self.progress = {
            "loss": f"{loss:.4g}",
            "norm_loss": f"{loss / self.task.baseline_loss:.3g}",
        }
        writer = tensorboard_writer(self._trainer)
        if writer is None:  # another logger: through Lightning, at the optimiser step
            self.log_dict(scalars | {"step": float(self.global_step)})
            return
        # Straight to TensorBoard: each key logged through Lightning costs about a millisecond
        # per logging batch, a few percent of training.
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, self.global_step)

    def _diverge(self, step: int) -> None:
        """A non-finite loss or gradient ends the run as a result, not a crash."""
        self.optimizers().zero_grad(set_to_none=True)
        self.diverged_at_step = step
        self.log_dict({"train/diverged": 1.0, "step": float(step)})
        self.trainer.should_stop = True

    # -- validation --------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums: Tensor | int = 0

    def validation_step(self, index: int, _batch_idx: int) -> None:
        self._val_sums = self._val_sums + self.metric_sums(self.data.validation(index, self.device))

    def metric_sums(self, batch: Batch) -> Tensor:
        """The task's ``metric_sums`` over ``batch``, the model run ``VALIDATION_CHUNK`` steps at
        a time with its state carried: memory does not grow with the sequence."""
        sums, state = 0, None
        for start in range(0, batch.inputs.shape[1], VALIDATION_CHUNK):
            end = start + VALIDATION_CHUNK
            outputs, state, _ = self.model(batch.inputs[:, start:end], state)
            sums = sums + self.task.metric_sums(outputs, batch.slice(start, end))
        return sums

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
        checkpoint["bpttlab"] = {
            "batches": self.batches,
            "updates": self.updates,
            "clipped_updates": self.clipped_updates,
            "solved_at_step": self.solved_at_step,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("bpttlab", {})
        self.batches = saved.get("batches", 0)
        self.updates = saved.get("updates", 0)
        self.clipped_updates = saved.get("clipped_updates", 0)
        self.solved_at_step = saved.get("solved_at_step")


def tensorboard_writer(trainer: L.Trainer | None):
    """The SummaryWriter of ``trainer``'s TensorBoardLogger, or None without one."""
    loggers = trainer.loggers if trainer is not None else []
    return next((lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
