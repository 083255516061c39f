"""The full-BPTT reference of a truncated run's step: the gradient that full BPTT would give on
the same batch at the same weights, for GradientFlow's ``full_reference``."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from bpttlab.bptt import BPTT, TraceHook, Window, run_windows
from bpttlab.module import SequenceModule


def full_gradient_reference(module: SequenceModule, step: int, hook: TraceHook) -> float:
    """On the batch of ``step`` at ``module``'s current weights, run full BPTT with ``hook`` on
    its traces; return the cosine similarity of the full and the truncated parameter gradients.
    Leaves no gradient and no clipping count behind."""
    batch = module.train_batch(step)
    clipping = dataclasses.replace(module.clipping)  # its own count of clipped deltas
    parameters = list(module.model.parameters())

    def flat_gradient(windows: list[Window], probes: list[TraceHook]) -> Tensor:
        hooks = clipping.trace_hooks(module.batch_size)
        position_losses = module.task.position_losses
        losses = run_windows(module.model, batch, windows, position_losses, probes, hooks)
        for _ in losses:
            pass
        flat = torch.cat([p.grad.flatten() for p in parameters if p.grad is not None])
        module.model.zero_grad(set_to_none=True)
        return flat

    full = flat_gradient(BPTT().windows(module.task.seq_len), [hook])
    truncated = flat_gradient(module.windows, [])
    return torch.nn.functional.cosine_similarity(full, truncated, dim=0).item()
