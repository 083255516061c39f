"""SIGINT (Ctrl-C) and SIGTERM (what SLURM sends on pre-emption) end a run at a batch
boundary, as an interruption that can be resumed, instead of killing it mid-step."""

from __future__ import annotations

import signal
from types import FrameType

import lightning as L

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(L.Callback):
    """Record the first SIGINT or SIGTERM and stop training after the batch in flight.

    ``install`` takes over both signals (train() does so before building anything);
    ``on_train_start`` takes them over again, after Lightning put its own SIGTERM handler in
    (which would raise mid-loop). A second signal raises KeyboardInterrupt: the impatient way out.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopped_at_step: int | None = None
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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, *_args: object) -> None:
        if self.received is not None and self.stopped_at_step is None:
            self.stopped_at_step = trainer.global_step
            trainer.should_stop = True
