"""``<run_dir>/train.log``: what a run says about itself (its config, every validation, the
final line), appended to across resumes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import lightning as L


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[logging.Logger]:
    """The ``bpttlab.run`` logger, writing to ``<run_dir>/train.log`` while the block runs."""
    log = logging.getLogger("bpttlab.run")
    log.setLevel(logging.INFO)
    log.propagate = False  # the console gets the final line by print, once
    handler = QuietFileHandler(Path(run_dir) / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        with contextlib.suppress(OSError):  # the last flush, on a full disk
            handler.close()


class QuietFileHandler(logging.FileHandler):
    """A FileHandler that says nothing when its file cannot be written (a full disk): the
    run's outcome reaches the console anyway, once, instead of a traceback per record."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class ValidationLog(L.Callback):
    """One line per validation: the step and the task's metrics."""

    def __init__(self, log: logging.Logger):
        self.run_log = log

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = getattr(pl_module, "val_metrics", {})
        text = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
        self.run_log.info("validation at step %d: %s", trainer.global_step, text)
