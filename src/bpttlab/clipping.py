"""Gradient clipping: by global norm, by value, or per timestep on the backpropagated delta.

- ``norm`` (Pascanu et al. 2013): if the L2 norm of all parameter gradients exceeds the
  threshold, rescale them so that it equals the threshold.
- ``value``: clamp every gradient element to [-threshold, threshold] (the clipping of
  Arjovsky et al.'s baselines).
- ``timestep``: during the backward pass, at every timestep k, if the delta flowing back into
  h_k (and c_k for LSTM) has a norm above the threshold, rescale it to the threshold before it
  flows further back. Norms are per example, of the gradient of the batch-*sum* loss, the same
  quantity GradientFlow logs. Needs the unrolled path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bpttlab import checks
from bpttlab.model import Trace

MODES = ("none", "norm", "value", "timestep")


@dataclass
class Clipping:
    """Clip gradients by ``mode`` at ``threshold``; see the module docstring."""

    mode: str = "norm"  # none | norm | value | timestep
    threshold: float = 1.0  # > 0
    clipped_deltas: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        checks.choice("mode", self.mode, MODES)
        self.threshold = checks.positive("threshold", self.threshold)

    def trace_hooks(self, batch_size: int) -> list[Callable[[Trace, int], None]]:
        """The trace hooks that clip per timestep (none unless mode is ``timestep``).

        ``batch_size`` turns the gradient of the batch-mean loss into that of the batch sum.
        """
        if self.mode != "timestep":
            return []
        limit = self.threshold / batch_size

        def clip_every_state(trace: Trace, offset: int) -> None:
            for _, _, _, state in trace.states():
                state.register_hook(lambda grad: self._clip_delta(grad, limit))

        return [clip_every_state]

    def _clip_delta(self, grad: Tensor, limit: float) -> Tensor:
        norms = grad.norm(dim=-1, keepdim=True)
        over = norms > limit
        self.clipped_deltas += int(over.any())
        return torch.where(over, grad * (limit / norms), grad)

    def clip_parameters(self, parameters: Iterable[Tensor]) -> tuple[Tensor, bool]:
        """Clip the gradients of ``parameters`` in place.

        Returns the global L2 norm of the gradients before clipping, and whether this update
        was clipped (for ``timestep``: whether any delta was clipped since the last call).
        """
        parameters = [p for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        if self.mode == "norm":
            clipped = bool(norm > self.threshold)
            torch.nn.utils.clip_grads_with_norm_(parameters, self.threshold, norm)
        elif self.mode == "value":
            clipped = any(bool(p.grad.abs().max() > self.threshold) for p in parameters)
            torch.nn.utils.clip_grad_value_(parameters, self.threshold)
        else:
            clipped = self.clipped_deltas > 0
        self.clipped_deltas = 0
        return norm, clipped
