"""Copy memory task, in the convention of Arjovsky, Shah & Bengio (2016).

Inputs: 10 symbols drawn from {1..8}, then ``gap`` - 1 blanks (0), a marker (9), 10 blanks;
length T + 20 for T = gap. Targets: blanks for T + 10 steps, then the 10 symbols. The loss is
cross-entropy over all T + 20 steps; a memoryless model that outputs blanks and then a uniform
guess scores 10 ln 8 / (T + 20). With ``recall_loss_only`` the loss covers the 10 recalled
symbols alone (baseline ln 8), so that dL/dh_k is purely the recall error flowing back.

    gap=5:  input   3 1 8 8 2 6 4 7 5 1 0 0 0 0 9 0 0 0 0 0 0 0 0 0 0
            target  0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 3 1 8 8 2 6 4 7 5 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bpttlab.tasks.base import Batch, Task

SYMBOLS = 8
BLANK, MARKER = 0, SYMBOLS + 1
RECALL = 10


@dataclass
class CopyTask(Task):
    """Remember 10 symbols over ``gap`` steps and reproduce them after the marker."""

    gap: int = 100  # T: steps from the end of the symbols to the marker (inclusive), >= 1
    recall_loss_only: bool = False  # True: loss on the 10 recalled symbols only (baseline ln 8)

    name = "copy"

    @property
    def seq_len(self) -> int:
        return self.gap + 2 * RECALL

    @property
    def input_size(self) -> int:
        return SYMBOLS + 2

    @property
    def output_size(self) -> int:
        return SYMBOLS + 1

    @property
    def baseline_loss(self) -> float:
        if self.recall_loss_only:
            return math.log(SYMBOLS)
        return RECALL * math.log(SYMBOLS) / self.seq_len

    def generate(self, batch_size: int, generator: torch.Generator) -> Batch:
        device = generator.device
        symbols = torch.randint(
            1, SYMBOLS + 1, (batch_size, RECALL), generator=generator, device=device
        )
        inputs = torch.full((batch_size, self.seq_len), BLANK, dtype=torch.long, device=device)
        inputs[:, :RECALL] = symbols
        inputs[:, self.gap + RECALL - 1] = MARKER
        targets = torch.full_like(inputs, BLANK)
        targets[:, -RECALL:] = symbols
        scored = torch.zeros_like(inputs, dtype=torch.bool)
        scored[:, -RECALL:] = True
        mask = scored.clone() if self.recall_loss_only else torch.ones_like(scored)
        return Batch(inputs, targets, mask, scored)

    def landmarks(self) -> dict[str, tuple[int, int]]:
        marker = self.gap + RECALL - 1
        return {
            "symbols": (0, RECALL),
            "marker": (marker, marker + 1),
            "recall": (marker + 1, self.seq_len),
        }
