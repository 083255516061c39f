"""What every task shares: the batch format, seeding, losses, metrics and the solved test.

A task is a small dataclass (its config) whose ``generate`` is a pure function of the batch
size and a ``torch.Generator``: the same seed gives the same batch, on the generator's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bpttlab import checks

TRAIN, VALIDATION = 0, 1
SEED_LIMIT = 2**30  # run seeds accepted: 0 .. SEED_LIMIT - 1


def batch_generator(
    seed: int, split: int, index: int, device: torch.device | str
) -> torch.Generator:
    """A generator for batch ``index`` of ``split`` (TRAIN or VALIDATION) of run ``seed``.

    The CPU generator keeps only the low 32 bits of a seed, so the seed is packed into 32 bits:
    the top bit is the split, so training and validation seeds never overlap; the other 31 bits
    are ``index`` under a bijection keyed by ``seed``, so the batches of one run never repeat.
    """
    if not 0 <= index < 2**31:
        raise ValueError(f"batch index {index} out of range")
    key = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**31
    generator = torch.Generator(device=device)
    generator.manual_seed((split << 31) | ((index * 0x5851F42D + key) % 2**31))
    return generator


@dataclass
class Batch:
    """A batch of sequences.

    inputs: (B, T) int64 tokens, or (B, T, C) float values.
    targets: (B, T) int64 classes, or (B, T) float values.
    mask: (B, T) bool, where the loss is taken; every example has the same count.
    scored: (B, T) bool, where accuracy is measured (classification tasks), else None.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    scored: Tensor | None = None

    def slice(self, start: int, end: int) -> Batch:
        """Timesteps [start, end) of every sequence."""
        scored = None if self.scored is None else self.scored[:, start:end]
        return Batch(
            self.inputs[:, start:end], self.targets[:, start:end], self.mask[:, start:end], scored
        )

    @staticmethod
    def answered_at_end(inputs: Tensor, answers: Tensor, scored: bool = True) -> Batch:
        """A batch whose targets are ``answers`` (B, n) at its last n steps, where the loss (and,
        if ``scored``, accuracy) is taken; zero targets elsewhere."""
        n = answers.shape[1]
        targets = answers.new_zeros(inputs.shape[:2])
        targets[:, -n:] = answers
        mask = torch.zeros(inputs.shape[:2], dtype=torch.bool, device=inputs.device)
        mask[:, -n:] = True
        return Batch(inputs, targets, mask, mask.clone() if scored else None)


@dataclass
class Task:
    """Base class. Subclasses are dataclasses that set the class attributes and ``generate``."""

    gap: int = 100

    name = "task"
    classification = True  # cross-entropy over classes; False: mean squared error
    token_input = True  # integer tokens; False: real-valued channels

    def __post_init__(self) -> None:
        checks.integer("gap", self.gap, 1)

    # -- what a subclass defines -------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        """Vocabulary size (token input) or number of channels."""
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        raise NotImplementedError

    @property
    def baseline_loss(self) -> float:
        """Loss of the best predictor that remembers nothing across the gap."""
        raise NotImplementedError

    def generate(self, batch_size: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def solved(self, metrics: dict[str, float]) -> bool:
        """Classification tasks: accuracy >= 0.99 where it is scored. Regression tasks override."""
        return metrics["accuracy"] >= 0.99

    def landmarks(self) -> dict[str, tuple[int, int]]:
        """Spans [start, end) of timesteps where the task puts its information."""
        return {}

    # -- shared ------------------------------------------------------------------------------
    def position_losses(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Loss at every (example, timestep), zero outside the mask: (B, T)."""
        if self.classification:
            losses = F.cross_entropy(outputs.transpose(1, 2), batch.targets, reduction="none")
        else:
            losses = (outputs[..., 0] - batch.targets).square()
        return losses * batch.mask

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Mean loss over the masked positions of the batch."""
        return self.position_losses(outputs, batch).sum() / batch.mask.sum()

    @torch.no_grad()
    def metric_sums(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Sums that add up over batches and over chunks of time, in float64: the loss over
        the masked positions, their count and, for classification, the correct and scored
        positions. ``metrics_from`` turns their total into metrics."""
        sums = [self.position_losses(outputs, batch).sum(), batch.mask.sum()]
        if self.classification and batch.scored is not None:
            correct = (outputs.argmax(-1) == batch.targets) & batch.scored
            sums += [correct.sum(), batch.scored.sum()]
        return torch.stack([s.double() for s in sums])

    def metrics_from(self, sums: Tensor) -> dict[str, float]:
        """loss, normalized_loss (loss / baseline), accuracy (classification), solved."""
        loss = (sums[0] / sums[1]).item()
        metrics = {"loss": loss, "normalized_loss": loss / self.baseline_loss}
        if len(sums) == 4:
            metrics["accuracy"] = (sums[2] / sums[3]).item()
        metrics["solved"] = float(math.isfinite(loss) and self.solved(metrics))
        return metrics

    def metrics(self, outputs: Tensor, batch: Batch) -> dict[str, float]:
        """``metrics_from`` the ``metric_sums`` of one batch."""
        return self.metrics_from(self.metric_sums(outputs, batch))
