"""Adding problem (Hochreiter & Schmidhuber 1997), in the convention of Arjovsky et al. (2016).

Input: T = ``gap`` steps of two channels, a value drawn uniformly from [0, 1] and a marker
that is 1 at exactly one step in each half of the sequence. Target: the sum of the two marked
values, read at the last step (mean squared error). Always predicting 1 scores 1/6, the
variance of the sum.

    gap=8:  values  .41 .93 .05 .62 .77 .18 .35 .90
            marker   0   1   0   0   0   0   1   0     target .93 + .35 = 1.28
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bpttlab import checks
from bpttlab.tasks.base import Batch, Task


@dataclass
class AddingTask(Task):
    """Add the two values marked one in each half of a length-``gap`` sequence."""

    gap: int = 100  # T: sequence length, >= 2 (one marker per half)

    name = "adding"
    classification = False
    token_input = False

    def __post_init__(self) -> None:
        checks.integer("gap", self.gap, 2)

    @property
    def seq_len(self) -> int:
        return self.gap

    @property
    def input_size(self) -> int:
        return 2

    @property
    def output_size(self) -> int:
        return 1

    @property
    def baseline_loss(self) -> float:
        return 1 / 6

    def generate(self, batch_size: int, generator: torch.Generator) -> Batch:
        device, T, half = generator.device, self.gap, self.gap // 2
        values = torch.rand(batch_size, T, generator=generator, device=device)
        first = torch.randint(0, half, (batch_size,), generator=generator, device=device)
        second = torch.randint(half, T, (batch_size,), generator=generator, device=device)
        rows = torch.arange(batch_size, device=device)
        markers = torch.zeros_like(values)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        answer = (values[rows, first] + values[rows, second])[:, None]
        return Batch.answered_at_end(torch.stack([values, markers], dim=-1), answer, scored=False)

    def solved(self, metrics: dict[str, float]) -> bool:
        return metrics["loss"] <= 0.01

    def landmarks(self) -> dict[str, tuple[int, int]]:
        return {"first marker": (0, self.gap // 2), "second marker": (self.gap // 2, self.gap)}
