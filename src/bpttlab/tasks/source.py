"""Which batch a run trains on at each step: a pure function of (seed, step).

Training batch k is generated from seed and k, so a run is reproducible and resumable without
saving any data state, and validation batches (a fixed set) never share a seed with training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bpttlab.tasks.base import TRAIN, VALIDATION, Batch, Task, batch_generator


@dataclass
class BatchSource:
    """Batches of ``task`` for run ``seed``: ``train(step)`` and the fixed ``validation(i)``."""

    task: Task
    seed: int
    batch_size: int
    val_batches: int
    _val_cache: list[Batch] = field(default_factory=list, init=False, repr=False)

    def train(self, step: int, device: torch.device | str) -> Batch:
        """The training batch drawn at optimiser step ``step``."""
        return self.task.generate(self.batch_size, batch_generator(self.seed, TRAIN, step, device))

    def validation(self, index: int, device: torch.device | str) -> Batch:
        """Fixed validation batch ``index``, generated once per device."""
        cache = self._val_cache
        if len(cache) <= index or cache[index].inputs.device != torch.device(device):
            self._val_cache = [
                self.task.generate(
                    self.batch_size, batch_generator(self.seed, VALIDATION, i, device)
                )
                for i in range(self.val_batches)
            ]
        return self._val_cache[index]

    def loss_mask(self) -> Tensor:
        """(T,) where the loss is taken in one sequence (the same for every sequence)."""
        return self.task.generate(1, batch_generator(self.seed, TRAIN, 0, "cpu")).mask[0]
