"""Multi-query associative recall, in the style of Zoology's MQAR (Arora et al. 2023).

Inputs: ``num_pairs`` key-value pairs, key then value (keys distinct, drawn from ``num_keys``
key tokens; values drawn independently from ``num_values`` value tokens), then ``gap`` blanks,
then every key again, in a random order. Target at each query step: the value paired with that
key; cross-entropy and accuracy on the query steps only. Length 3 num_pairs + gap. Tokens:
blank 0, keys 1..num_keys, values num_keys + 1..num_keys + num_values; output classes are value
indices 0..num_values - 1 (value token - num_keys - 1). A memoryless model guesses a value
uniformly: loss ln(num_values).

    gap=3, num_pairs=2 (keys k1..k16, values v0..v15, output class i for v_i):
            input   k3 v7 k12 v0 _ _ _ k12 k3
            target   .  .   .  . . . .   0  7     (_: blank; .: not in the loss)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bpttlab import checks
from bpttlab.tasks.base import Batch, Task

BLANK = 0


@dataclass
class AssociativeRecallTask(Task):
    """Show key-value pairs, wait ``gap`` steps, then answer each key with its value."""

    gap: int = 100  # blanks between the last pair and the first query, >= 1
    num_pairs: int = 4  # key-value pairs shown, and queried, per sequence, >= 1
    num_keys: int = 16  # key vocabulary size, >= num_pairs (keys are distinct)
    num_values: int = 16  # value vocabulary size, >= 2

    name = "associative_recall"

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.integer("num_pairs", self.num_pairs, 1)
        checks.integer("num_keys", self.num_keys, self.num_pairs)
        checks.integer("num_values", self.num_values, 2)

    @property
    def query_start(self) -> int:
        return 2 * self.num_pairs + self.gap

    @property
    def seq_len(self) -> int:
        return self.query_start + self.num_pairs

    @property
    def input_size(self) -> int:
        return 1 + self.num_keys + self.num_values

    @property
    def output_size(self) -> int:
        return self.num_values

    @property
    def baseline_loss(self) -> float:
        return math.log(self.num_values)

    def generate(self, batch_size: int, generator: torch.Generator) -> Batch:
        device, P = generator.device, self.num_pairs
        noise = torch.rand(batch_size, self.num_keys, generator=generator, device=device)
        keys = noise.argsort(dim=1, stable=True)[:, :P]  # distinct key indices
        values = torch.randint(
            0, self.num_values, (batch_size, P), generator=generator, device=device
        )
        noise = torch.rand(batch_size, P, generator=generator, device=device)
        order = noise.argsort(dim=1, stable=True)  # query order: a random permutation
        inputs = torch.full((batch_size, self.seq_len), BLANK, dtype=torch.long, device=device)
        inputs[:, 0 : 2 * P : 2] = 1 + keys
        inputs[:, 1 : 2 * P : 2] = 1 + self.num_keys + values
        inputs[:, self.query_start :] = 1 + keys.gather(1, order)
        return Batch.answered_at_end(inputs, values.gather(1, order))

    def landmarks(self) -> dict[str, tuple[int, int]]:
        return {"pairs": (0, 2 * self.num_pairs), "queries": (self.query_start, self.seq_len)}
