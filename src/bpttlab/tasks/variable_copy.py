"""Selective (variable) copying, after Gu & Dao (2023, Mamba), a variant of the copy task.

Inputs: the first ``gap`` steps are blanks (0) except ``recall`` symbols drawn from
{1..num_symbols}, placed at distinct positions drawn uniformly at random; then a marker
(num_symbols + 1); then ``recall`` blanks. Length gap + 1 + recall. Targets: the symbols in
their order of appearance, at the ``recall`` steps after the marker; cross-entropy and
accuracy there only. Output classes are input tokens (0..num_symbols; blank is never a target).
A memoryless model guesses a symbol uniformly: loss ln(num_symbols).

    gap=8, recall=3:  input   0 5 0 0 2 0 7 0 9 0 0 0
                      target  . . . . . . . . . 5 2 7     (.: not in the loss)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bpttlab import checks
from bpttlab.tasks.base import Batch, Task

BLANK = 0


@dataclass
class VariableCopyTask(Task):
    """Recall, in order, ``recall`` symbols scattered among blanks in the first ``gap`` steps."""

    gap: int = 100  # steps that hold the scattered symbols (before the marker), >= recall
    num_symbols: int = 8  # data symbols 1..num_symbols, >= 2
    recall: int = 10  # symbols to remember and reproduce, >= 1

    name = "variable_copy"

    def __post_init__(self) -> None:
        checks.integer("num_symbols", self.num_symbols, 2)
        checks.integer("recall", self.recall, 1)
        checks.integer("gap", self.gap, self.recall)

    @property
    def marker(self) -> int:
        return self.num_symbols + 1

    @property
    def seq_len(self) -> int:
        return self.gap + 1 + self.recall

    @property
    def input_size(self) -> int:
        return self.num_symbols + 2

    @property
    def output_size(self) -> int:
        return self.num_symbols + 1

    @property
    def baseline_loss(self) -> float:
        return math.log(self.num_symbols)

    def generate(self, batch_size: int, generator: torch.Generator) -> Batch:
        device, R = generator.device, self.recall
        symbols = torch.randint(
            1, self.num_symbols + 1, (batch_size, R), generator=generator, device=device
        )
        noise = torch.rand(batch_size, self.gap, generator=generator, device=device)
        positions = noise.argsort(dim=1, stable=True)[:, :R].sort(dim=1).values
        inputs = torch.full((batch_size, self.seq_len), BLANK, dtype=torch.long, device=device)
        inputs.scatter_(1, positions, symbols)
        inputs[:, self.gap] = self.marker
        return Batch.answered_at_end(inputs, symbols)  # blanks (0) before the recall

    def landmarks(self) -> dict[str, tuple[int, int]]:
        return {
            "symbols": (0, self.gap),
            "marker": (self.gap, self.gap + 1),
            "recall": (self.gap + 1, self.seq_len),
        }
