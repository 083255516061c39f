"""How a SequenceModule under ``bptt.truncation=auto`` has its truncation chosen: the measurement
(``bptt.adaptive.AdaptiveTruncation``) at the module's weights, on its batches, with its
per-timestep clipping, and what it found written to every logger."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from bpttlab.module.scalars import log_scalars
from bpttlab.tasks import Batch

if TYPE_CHECKING:
    from bpttlab.module import SequenceModule


def adapt_truncation(module: SequenceModule, step: int, batch: Batch) -> None:
    """Choose K on ``batch``, the batch of optimiser step ``step``, check it on the next step's
    batch, run the module's windows with it from now on, and log the measurement at ``step``."""
    clipping = dataclasses.replace(module.clipping)  # its own count of clipped deltas
    hooks = functools.partial(clipping.trace_hooks, module.batch_size)
    held_out = module.train_batch(step + 1)
    losses = module.task.position_losses
    found = module.adaptive.adapt(module.model, batch, held_out, losses, step, hooks)
    module.windows = module.adaptive.windows()
    log_scalars(module.loggers, found.scalars(), step)
