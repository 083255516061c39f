"""Delayed recall: the plainest long-term dependency, a class token to be named ``gap`` steps on.

As in "I grew up in Spain ... [many words later] ... I speak fluent Spanish": the one fact
that decides the answer comes first and everything between is irrelevant.

Inputs: a class token (0..num_classes - 1) at step 0, then ``gap`` distractor tokens drawn
uniformly from ``distractors`` symbols (num_classes..num_classes + distractors - 1), then a
query marker (num_classes + distractors) at the last step. Length gap + 2. Target: the class,
at the last step only (cross-entropy). A memoryless model guesses uniformly: loss
ln(num_classes).

    gap=6, num_classes=4, distractors=8:
            input   2 9 4 11 6 4 7 12
            target  . . . .  . . . 2     (.: not scored)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bpttlab import checks
from bpttlab.tasks.base import Batch, Task


@dataclass
class DelayedRecallTask(Task):
    """Name, at the query marker, the class token seen ``gap`` distractors earlier."""

    gap: int = 100  # distractor steps between the class token and the query marker, >= 1
    num_classes: int = 4  # class tokens 0..num_classes - 1, >= 2
    distractors: int = 8  # distractor vocabulary size, >= 1

    name = "delayed_recall"

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.integer("num_classes", self.num_classes, 2)
        checks.integer("distractors", self.distractors, 1)

    @property
    def marker(self) -> int:
        return self.num_classes + self.distractors

    @property
    def seq_len(self) -> int:
        return self.gap + 2

    @property
    def input_size(self) -> int:
        return self.num_classes + self.distractors + 1

    @property
    def output_size(self) -> int:
        return self.num_classes

    @property
    def baseline_loss(self) -> float:
        return math.log(self.num_classes)

    def generate(self, batch_size: int, generator: torch.Generator) -> Batch:
        device, C = generator.device, self.num_classes
        classes = torch.randint(0, C, (batch_size,), generator=generator, device=device)
        inputs = torch.randint(
            C, self.marker, (batch_size, self.seq_len), generator=generator, device=device
        )
        inputs[:, 0] = classes
        inputs[:, -1] = self.marker
        return Batch.answered_at_end(inputs, classes[:, None])

    def landmarks(self) -> dict[str, tuple[int, int]]:
        return {
            "class": (0, 1),
            "distractors": (1, self.gap + 1),
            "query": (self.gap + 1, self.seq_len),
        }
