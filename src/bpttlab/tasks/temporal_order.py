"""Temporal order problem (Hochreiter & Schmidhuber 1997, task 6a; Pascanu et al. 2013).

Input: L = ``gap`` tokens, each a distractor drawn uniformly from ``distractors`` symbols,
except two relevant symbols, each A or B: the first at a step drawn uniformly from
[floor(0.1 L), floor(0.2 L)), the second from [floor(0.5 L), floor(0.6 L)). Target: the order
of the two, one of 4 classes AA=0, AB=1, BA=2, BB=3, read at the last step only
(cross-entropy). Tokens: distractors 0..d-1, A = d, B = d + 1. The original's start and end
markers (E ... B) are left out: the length is fixed and the answer is always read at the last
step. A memoryless model guesses uniformly: accuracy 1/4, loss ln 4.

    gap=20, distractors=4 (a b c d = 0 1 2 3, A = 4, B = 5):
            input   c a B d b c a d d c A b d a c b d c a b
            target  . . . . . . . . . . . . . . . . . . . 2     (BA; .: not scored)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bpttlab import checks
from bpttlab.tasks.base import Batch, Task

CLASSES = 4  # AA, AB, BA, BB


@dataclass
class TemporalOrderTask(Task):
    """Classify the order of two A/B symbols placed at 10-20% and 50-60% of the sequence."""

    gap: int = 100  # L: sequence length, >= 10 (so each relevant range is non-empty)
    distractors: int = 4  # number of distractor symbols, >= 1

    name = "temporal_order"

    def __post_init__(self) -> None:
        checks.integer("gap", self.gap, 10)
        checks.integer("distractors", self.distractors, 1)

    @property
    def seq_len(self) -> int:
        return self.gap

    @property
    def input_size(self) -> int:
        return self.distractors + 2

    @property
    def output_size(self) -> int:
        return CLASSES

    @property
    def baseline_loss(self) -> float:
        return math.log(CLASSES)

    def ranges(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """[start, end) of the steps that may hold the first and the second relevant symbol."""
        L = self.gap  # integer arithmetic: floor(0.1 L) etc. without rounding error
        return (L // 10, 2 * L // 10), (5 * L // 10, 6 * L // 10)

    def generate(self, batch_size: int, generator: torch.Generator) -> Batch:
        device, d = generator.device, self.distractors
        (lo1, hi1), (lo2, hi2) = self.ranges()
        inputs = torch.randint(0, d, (batch_size, self.gap), generator=generator, device=device)
        symbols = torch.randint(0, 2, (batch_size, 2), generator=generator, device=device)
        first = torch.randint(lo1, hi1, (batch_size,), generator=generator, device=device)
        second = torch.randint(lo2, hi2, (batch_size,), generator=generator, device=device)
        rows = torch.arange(batch_size, device=device)
        inputs[rows, first] = d + symbols[:, 0]
        inputs[rows, second] = d + symbols[:, 1]
        return Batch.answered_at_end(inputs, (2 * symbols[:, 0] + symbols[:, 1])[:, None])

    def landmarks(self) -> dict[str, tuple[int, int]]:
        first, second = self.ranges()
        return {"first symbol": first, "second symbol": second}
