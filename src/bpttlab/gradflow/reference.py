"""The full-BPTT reference of a truncated run's step: the gradient that full BPTT would give on
the same batch at the same weights, for GradientFlow's ``full_reference``."""

from __future__ import annotations

import dataclasses

import torch

from bpttlab.bptt import BPTT, TraceHook, parameter_gradient
from bpttlab.module import SequenceModule


def full_gradient_reference(module: SequenceModule, step: int, hook: TraceHook) -> float:
    """On the batch of ``step`` at ``module``'s current weights, run full BPTT with ``hook`` on
    its traces; return the cosine similarity of the full and the truncated parameter gradients.
    Leaves no gradient and no clipping count behind."""
    batch = module.train_batch(step)
    clipping = dataclasses.replace(module.clipping)  # its own count of clipped deltas
    model, losses = module.model, module.task.position_losses
    full_windows = BPTT().windows(module.task.seq_len)
    hooks = clipping.trace_hooks(module.batch_size)
    full = parameter_gradient(model, batch, full_windows, losses, [hook], hooks)
    hooks = clipping.trace_hooks(module.batch_size)
    truncated = parameter_gradient(model, batch, module.windows, losses, [], hooks)
    return torch.nn.functional.cosine_similarity(full, truncated, dim=0).item()
