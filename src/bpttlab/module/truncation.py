"""How a SequenceModule under ``bptt.truncation=auto`` has its truncation chosen: the measurement
(``bptt.adaptive.AdaptiveTruncation``) at the module's weights, on its batches, with its
per-timestep clipping; what it found written to every logger; its history in checkpoints.

The windows a module starts with are those of the longest K it may choose (``BPTT.windows``):
they size its data loader (the fewest optimiser steps per batch), also in a resumed fit, whose
first batch then sets the windows of the K in force."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from bpttlab.bptt import Window
from bpttlab.module.scalars import log_scalars
from bpttlab.tasks import Batch

if TYPE_CHECKING:
    from bpttlab.module import SequenceModule

CHECKPOINT_KEY = "bpttlab_truncation"


def windows_for(module: SequenceModule, step: int, batch: Batch) -> list[Window]:
    """The windows to train ``batch``, the batch of optimiser step ``step``, with: under auto,
    of the K in force, chosen first when a choice is due (``adapt``); else the module's."""
    if module.adaptive is not None:
        if module.adaptive.due(step):
            adapt(module, step, batch)
        module.windows = module.adaptive.windows()
    return module.windows


def adapt(module: SequenceModule, step: int, batch: Batch) -> None:
    """Choose K on ``batch``, check it on the next step's batch, and log the measurement at
    ``step`` to every logger of the module."""
    clipping = dataclasses.replace(module.clipping)  # its own count of clipped deltas
    hooks = functools.partial(clipping.trace_hooks, module.batch_size)
    held_out = module.train_batch(step + 1)
    losses = module.task.position_losses
    found = module.adaptive.adapt(module.model, batch, held_out, losses, step, hooks)
    log_scalars(module.loggers, found.scalars(), step)


def save_truncation(module: SequenceModule, checkpoint: dict) -> None:
    if module.adaptive is not None:
        checkpoint[CHECKPOINT_KEY] = module.adaptive.state_dict()


def load_truncation(module: SequenceModule, checkpoint: dict) -> None:
    if module.adaptive is not None and CHECKPOINT_KEY in checkpoint:
        module.adaptive.load_state_dict(checkpoint[CHECKPOINT_KEY])
