"""TrainingScalars: how SequenceModule reports what each training batch did, to the Trainer's
loggers (whichever they are) and to the callbacks that monitor it."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor


class TrainingScalars:
    """The scalars of each training batch, at the optimiser step after it:

    - ``train/loss``: the sum of its windows' losses; ``train/normalized_loss``: over the task's
      baseline loss;
    - ``train/grad_norm``: the mean over its optimiser steps of the gradient norm before clipping;
    - ``train/clipped``: the fraction of its steps clipped; ``train/clipped_fraction``: that of
      every step so far.

    Every batch they enter ``trainer.callback_metrics`` as tensors, without a device sync, for
    callbacks that monitor them (ModelCheckpoint, EarlyStopping). ``start`` takes that dict once
    a fit's training starts, after the last of Lightning's resets of it (around the sanity
    check): reading the property every batch cost more than the rest of the reporting. Every ``log_every_n_steps``
    batches, and at the end of the fit, they are written to every logger of the Trainer. They
    go to the loggers directly, as Lightning's own LearningRateMonitor does, not by ``self.log``:
    that costs time per key and per batch, and logs at Lightning's count of batches, not at the
    optimiser step (several per batch under truncated BPTT).
    """

    def __init__(self, baseline_loss: float):
        self.baseline_loss = baseline_loss
        self.progress: dict[str, str] = {}  # the last logged loss, for the progress bar
        self._unlogged: tuple[int, Tensor, Tensor, float, float] | None = None
        self._callback_metrics: dict = {}
        self._log_every = 0

    def start(self, trainer) -> None:
        """Report to ``trainer`` from now on; called as its training starts."""
        self._callback_metrics = trainer.callback_metrics
        self._log_every = trainer.log_every_n_steps

    def add(
        self,
        trainer,
        batches: int,
        loss: Tensor,
        grad_norm: Tensor,
        clipped: float,
        clipped_fraction: float,
    ) -> None:
        """The scalars of the batch that just ran, the ``batches``-th of the run."""
        self._callback_metrics.update(
            {
                "train/loss": loss,
                "train/normalized_loss": loss / self.baseline_loss,
                "train/grad_norm": grad_norm,
                "train/clipped": torch.scalar_tensor(clipped),
                "train/clipped_fraction": torch.scalar_tensor(clipped_fraction),
            }
        )
        self._unlogged = trainer.global_step, loss, grad_norm, clipped, clipped_fraction
        every = self._log_every
        if every > 0 and batches % every == 0:
            self.log_unlogged(trainer.loggers)

    def log_unlogged(self, loggers: Iterable[Logger]) -> None:
        """Write the last batch's scalars to ``loggers``, unless they were already."""
        if self._unlogged is None:
            return
        step, loss, grad_norm, clipped, clipped_fraction = self._unlogged
        self._unlogged = None
        loss = loss.item()
        scalars = {
            "train/loss": loss,
            "train/normalized_loss": loss / self.baseline_loss,
            "train/grad_norm": grad_norm.item(),
            "train/clipped": clipped,
            "train/clipped_fraction": clipped_fraction,
        }
        log_scalars(loggers, scalars, step)
        self.progress.update(loss=f"{loss:.4g}", norm_loss=f"{loss / self.baseline_loss:.3g}")


def log_scalars(loggers: Iterable[Logger], scalars: dict[str, float], step: int) -> None:
    """Write ``scalars`` at ``step`` to each of ``loggers``."""
    for logger in loggers:
        logger.log_metrics(scalars, step)
