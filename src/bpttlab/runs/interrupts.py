"""SIGINT (Ctrl-C) and SIGTERM (what SLURM sends on pre-emption) end a run at a batch
boundary (after the validation the batch triggers, if any), with a checkpoint of that point,
as an interruption that can be resumed."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from bpttlab.runs.checkpoint import LastCheckpoint, validation_follows

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped after a batch because a signal asked it to."""


def ends_after_this_batch(trainer: L.Trainer) -> bool:
    """Whether the run ends after the batch now ending: asked to stop (diverged, solved) or
    at ``max_steps``; such a run is left to end, with nothing to resume."""
    at_budget = 0 <= trainer.max_steps <= trainer.global_step
    return trainer.should_stop or at_budget


class StopOnSignal(Checkpoint):
    """Record the first SIGINT or SIGTERM; after the batch in flight and the validation that
    batch triggers, checkpoint and stop.

    A Checkpoint subclass, so that Lightning runs it after every other callback of the batch
    (the probes, the LastCheckpoint) and of the validation (its log line): the checkpoint then
    holds exactly the state a run never interrupted has at that point, and resuming it neither
    repeats nor skips a validation. It stops by raising Interrupted, not by ``should_stop``,
    which would make Lightning run one more validation than the uninterrupted run. A run that
    ends after this batch anyway (its last step, diverged, solved) is left to end as it would
    have.

    ``install`` takes over both signals (train() does so before building anything);
    ``on_train_start`` and ``on_validation_start`` take them over again, after Lightning put its
    own SIGTERM handler in for ``fit`` or ``validate`` (it would end the run with a
    SIGTERMException, a SystemExit). A second signal raises KeyboardInterrupt: the impatient way
    out. A signal during the validation after training (``trainer.validate``, which may be long)
    drops it at once and saves the trained state, which a resume validates.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopped_at_step: int | None = None
        self._after_validation = False
        self._validating: L.Trainer | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in SIGNALS:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(
            f"bpttlab-train: {self.received}: stopping after the batch or validation in flight "
            "(again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        if self._validating is not None:  # the last validation may be long: dropped at once
            self.stopped_at_step = self._validating.global_step
            raise Interrupted(f"{self.received} in the validation at step {self.stopped_at_step}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over()

    def _take_over(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, *_args: object) -> None:
        if self.received is None or ends_after_this_batch(trainer):
            return
        if validation_follows(trainer):
            self._after_validation = True
        else:
            self._stop(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over()
        if self.received is None and trainer.state.fn == TrainerFn.VALIDATING:
            self._validating = trainer  # the validation after training: nothing left to train

    def on_exception(self, trainer: L.Trainer, pl_module: object, exception: BaseException) -> None:
        if isinstance(exception, Interrupted) and self._validating is not None:
            self._validating = None
            self._save(trainer)  # the trained weights, which a resume validates

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validating = None
        if self._after_validation and not trainer.sanity_checking:
            self._after_validation = False
            if not trainer.should_stop:
                self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        self.stopped_here(trainer)
        raise Interrupted(f"{self.received} at step {trainer.global_step}")

    def stopped_here(self, trainer: L.Trainer) -> None:
        """Record that the run stopped at this step, and checkpoint it there."""
        self.stopped_at_step = trainer.global_step
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, LastCheckpoint):
                callback.save(trainer)
