"""Full and truncated backpropagation through time as a schedule of windows.

TBPTT(k1, k2) as Williams & Peng (1990) and Sutskever (2013) define it: every k1 = update_every
steps, backpropagate the losses of those k1 steps through the last k2 = truncation steps and
take one optimiser step (the last window of a sequence may hold fewer than k1 steps). The state entering a window is carried forward from the previous
window with its graph cut (detached), so no gradient flows back more than k2 steps. With
k1 = k2 the windows are disjoint chunks; with k1 < k2 they overlap and the overlapping steps
are run again. ``truncation=None`` is full BPTT: one window over the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpttlab import validation


@dataclass(frozen=True)
class Window:
    """Run steps [start, end) from the detached state at ``start``; carry the state at ``carry``
    into the next window; backpropagate the losses in [loss_start, end)."""

    start: int
    carry: int
    loss_start: int
    end: int


@dataclass
class BPTT:
    """How far gradients flow back in time, and how often the optimiser steps."""

    truncation: int | None = None  # k2; None: full BPTT
    update_every: int | None = None  # k1 <= k2; None: the truncation

    def __post_init__(self) -> None:
        validation.integer("bptt.truncation", self.truncation, 1, optional=True)
        validation.integer("bptt.update_every", self.update_every, 1, optional=True)
        if self.update_every is not None:
            if self.truncation is None:
                raise validation.ConfigError(
                    "bptt.update_every", self.update_every, "null when bptt.truncation is null"
                )
            if self.update_every > self.truncation:
                raise validation.ConfigError(
                    "bptt.update_every",
                    self.update_every,
                    f"an integer from 1 to bptt.truncation={self.truncation}, or null",
                )

    @property
    def k1(self) -> int | None:
        return self.update_every or self.truncation

    def windows(self, seq_len: int) -> list[Window]:
        """The windows covering a sequence of ``seq_len`` steps, in order."""
        if self.truncation is None:
            return [Window(0, seq_len, 0, seq_len)]
        k1, k2 = self.k1, self.truncation
        loss_starts = list(range(0, seq_len, k1))
        ends = [min(s + k1, seq_len) for s in loss_starts]
        starts = [max(s - (k2 - k1), 0) for s in loss_starts]  # k2 steps back from a full k1
        carries = starts[1:] + [ends[-1]]
        return [Window(*w) for w in zip(starts, carries, loss_starts, ends, strict=True)]
