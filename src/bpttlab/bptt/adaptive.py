"""The truncation length chosen from the measured gradient (``bptt.truncation=auto``).

The truncated gradient g_K of a batch is what TBPTT(K, K) computes over it at fixed weights:
the gradients of its windows of K steps added up. Its relative bias is

    bias(K) = ||g_K - g_full|| / ||g_full||

against the full-BPTT gradient g_full of the same batch at the same weights. Every
``adapt_every_n_steps`` optimiser steps, on that step's batch, ``AdaptiveTruncation`` measures
g_full, then g_K for the candidate K in increasing order, and takes the first K whose bias is
at most ``max_bias`` (the largest candidate, the sequence length at most, when none is). The
candidates are the integers from ``min_truncation`` to ``max_truncation`` on a grid spaced by a
factor 2^(1/4) (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, 19, ...), so a choice costs at most a
few tens of forward and backward passes whatever the range. The measurement is exact for the
batch it is made on; it is checked on another batch (the one of the next step): the relative
error and cosine of g_K against g_full there. The full pass also gives the profile of
||dL/dh_k|| over the sequence (``gradflow.profile``) and its decay per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from bpttlab.bptt import BPTT, TraceHook, Window, check_adaptive, parameter_gradient
from bpttlab.gradflow.profile import Probe, profile_summary
from bpttlab.model import RecurrentNet
from bpttlab.tasks import Batch

GRID_RATIO = 2**0.25
"""The candidate truncations grow by this factor (rounded to integers)."""


@dataclass(frozen=True)
class Adaptation:
    """One choice of K: at optimiser step ``step``, ``truncation`` with relative ``bias`` on the
    batch measured; ``relative_error`` and ``cosine`` of g_K against g_full on the next step's
    batch; the decay per step (log10) of the full pass's ||dL/dh_k|| (first layer); how many
    truncations were measured and the seconds all of it took."""

    step: int
    truncation: int
    bias: float
    relative_error: float
    cosine: float
    decay_per_step: float
    measured: int
    seconds: float

    def scalars(self) -> dict[str, float]:
        """What every logger records of it, under ``bptt/``."""
        return {f"bptt/{k}": float(v) for k, v in asdict(self).items() if k != "step"}


class AdaptiveTruncation:
    """Chooses TBPTT's truncation K for ``seq_len``-step sequences from the measured bias of the
    truncated gradient, and keeps the history of its choices (see the module docstring).

    Args:
        seq_len: T; a truncation of T or more is full BPTT.
        max_bias: the largest relative bias accepted, > 0.
        min_truncation, max_truncation: the range of K (``max_truncation`` None: T; both
            capped at T).
        adapt_every_n_steps: optimiser steps between choices, the first at step 0.
    """

    def __init__(
        self,
        seq_len: int,
        max_bias: float = 0.1,
        min_truncation: int = 1,
        max_truncation: int | None = None,
        adapt_every_n_steps: int = 100,
    ):
        check_adaptive(max_bias, min_truncation, max_truncation, adapt_every_n_steps)
        self.seq_len = seq_len
        self.max_bias = max_bias
        self.candidates = truncation_grid(min_truncation, max_truncation or seq_len, seq_len)
        self.adapt_every_n_steps = adapt_every_n_steps
        self.history: list[Adaptation] = []

    @property
    def truncation(self) -> int:
        """The K in use: the last chosen (the longest candidate before the first choice)."""
        return self.history[-1].truncation if self.history else self.candidates[-1]

    def windows(self) -> list[Window]:
        return BPTT(self.truncation).windows(self.seq_len)

    def due(self, step: int) -> bool:
        """Whether the batch starting at optimiser step ``step`` chooses K first."""
        return not self.history or step - self.history[-1].step >= self.adapt_every_n_steps

    def choose(self, gradient: Callable[[int], Tensor]) -> tuple[int, float, int]:
        """(K, its bias, truncations measured), ``gradient(K)`` being g_K of one batch (K = T:
        g_full)."""
        full = gradient(self.seq_len).double()
        for k in self.candidates:
            bias = 0.0 if k >= self.seq_len else relative_error(gradient(k).double(), full)
            if bias <= self.max_bias:
                break
        return k, bias, self.candidates.index(k) + 1

    def adapt(
        self,
        model: RecurrentNet,
        batch: Batch,
        held_out: Batch,
        position_losses: Callable[[Tensor, Batch], Tensor],
        step: int,
        hooks: Callable[[], Sequence[TraceHook]] = tuple,
    ) -> Adaptation:
        """Choose K on ``batch`` at the model's current weights, check it on ``held_out``, and
        use it from now on. ``hooks`` makes the trace hooks that change gradients in training
        (per-timestep clipping), for every measured gradient. Leaves no gradient behind."""
        start = time.perf_counter()
        probe = Probe(step, batch.inputs.shape[0], self.seq_len)

        def gradient(k: int, on: Batch = batch) -> Tensor:
            probes = [probe] if k >= self.seq_len and on is batch else []
            windows = BPTT(k).windows(self.seq_len)
            return parameter_gradient(model, on, windows, position_losses, probes, hooks())

        k, bias, measured = self.choose(gradient)
        full = gradient(self.seq_len, held_out).double()
        truncated = full if k >= self.seq_len else gradient(k, held_out).double()
        profile = probe.profiles()[f"{model.state_names[0]}_layer0"]
        adaptation = Adaptation(
            step=step,
            truncation=k,
            bias=bias,
            relative_error=relative_error(truncated, full),
            cosine=torch.nn.functional.cosine_similarity(full, truncated, dim=0).item(),
            decay_per_step=profile_summary(profile, 1e-3)["decay_per_step"],
            measured=measured,
            seconds=time.perf_counter() - start,
        )
        self.history.append(adaptation)
        return adaptation

    def records(self) -> list[dict[str, float | None]]:
        """The history as plain values, a non-finite one as None (metrics.json's
        ``truncation_history``)."""
        return [{k: finite_or_none(v) for k, v in asdict(a).items()} for a in self.history]

    def state_dict(self) -> dict[str, list[dict[str, float]]]:
        return {"history": [asdict(a) for a in self.history]}

    def load_state_dict(self, state: dict[str, list[dict[str, float]]]) -> None:
        self.history = [Adaptation(**record) for record in state["history"]]


def truncation_grid(low: int, high: int, seq_len: int) -> list[int]:
    """The candidate K from ``low`` to ``high`` (both capped at ``seq_len``), each about
    ``GRID_RATIO`` times the one before, the integers below 8 all included."""
    high = min(high, seq_len)
    grid, k = [], float(min(low, high))
    while round(k) < high:
        if not grid or round(k) > grid[-1]:
            grid.append(round(k))
        k *= GRID_RATIO
    return [*grid, high]


def relative_error(estimate: Tensor, exact: Tensor) -> float:
    """||estimate - exact|| / ||exact|| (0 where both are zero)."""
    norm = torch.linalg.vector_norm(exact)
    error = torch.linalg.vector_norm(estimate - exact)
    if norm == 0:
        return 0.0 if error == 0 else math.inf
    return (error / norm).item()


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
