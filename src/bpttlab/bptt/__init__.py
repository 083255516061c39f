"""Full and truncated backpropagation through time as a schedule of windows.

TBPTT(k1, k2) as Williams & Peng (1990) and Sutskever (2013) define it: every k1 = update_every
steps, backpropagate the losses of those k1 steps through the last k2 = truncation steps and
take one optimiser step (the last window of a sequence may hold fewer than k1 steps). The state entering a window is carried forward from the previous
window with its graph cut (detached), so no gradient flows back more than k2 steps. With
k1 = k2 the windows are disjoint chunks; with k1 < k2 they overlap and the overlapping steps
are run again. ``truncation=None`` is full BPTT: one window over the whole sequence.
``truncation="auto"`` leaves k2 = k1 to be chosen during training from the measured gradient
(``adaptive.AdaptiveTruncation``, made by ``BPTT.adaptive``).

``run_windows`` runs such a schedule over a batch: for training, and for any caller that wants
a gradient at fixed weights (``parameter_gradient``: the full-BPTT reference of gradient flow,
the measurements of ``truncation="auto"``, the bench).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bpttlab import checks
from bpttlab.cells.paths import Tracing
from bpttlab.model import RecurrentNet, State, Trace, detach_state
from bpttlab.tasks import Batch


@dataclass(frozen=True)
class Window:
    """Run steps [start, end) from the detached state at ``start``; carry the state at ``carry``
    into the next window; backpropagate the losses in [loss_start, end)."""

    start: int
    carry: int
    loss_start: int
    end: int


AUTO = "auto"
"""``BPTT.truncation`` that chooses k2 during training (``adaptive.AdaptiveTruncation``)."""


@dataclass
class BPTT:
    """How far gradients flow back in time, and how often the optimiser steps. The last four
    fields are read only under ``truncation="auto"`` (see ``adaptive.AdaptiveTruncation``)."""

    truncation: int | str | None = None  # k2; None: full BPTT; "auto": chosen in training
    update_every: int | None = None  # k1 <= k2; None: the truncation
    max_bias: float = 0.1  # auto: the largest relative error of the truncated gradient
    min_truncation: int = 1  # auto: the smallest k2 it may choose
    max_truncation: int | None = None  # auto: the largest; None: the sequence length
    adapt_every_n_steps: int = 100  # auto: optimiser steps between choices

    def __post_init__(self) -> None:
        if self.truncation != AUTO and not _is_truncation(self.truncation):
            raise checks.ConfigError("truncation", self.truncation, "an integer >= 1, auto or null")
        checks.integer("update_every", self.update_every, 1, optional=True)
        check_adaptive(
            self.max_bias, self.min_truncation, self.max_truncation, self.adapt_every_n_steps
        )
        if self.update_every is not None:
            if self.truncation in (None, AUTO):
                raise checks.ConfigError(
                    "update_every",
                    self.update_every,
                    f"null when truncation is {self.truncation or 'null'}",
                )
            if self.update_every > self.truncation:
                raise checks.ConfigError(
                    "update_every",
                    self.update_every,
                    f"an integer from 1 to truncation={self.truncation}, or null",
                )

    def adaptive(self, seq_len: int):
        """The ``AdaptiveTruncation`` that chooses k2 for ``seq_len``-step sequences under
        ``truncation="auto"``, else None."""
        from bpttlab.bptt.adaptive import AdaptiveTruncation  # it runs windows: imports this

        if self.truncation != AUTO:
            return None
        return AdaptiveTruncation(
            seq_len,
            self.max_bias,
            self.min_truncation,
            self.max_truncation,
            self.adapt_every_n_steps,
        )

    @property
    def k1(self) -> int | None:
        return self.update_every or self.truncation

    def windows(self, seq_len: int) -> list[Window]:
        """The windows covering a sequence of ``seq_len`` steps, in order; under
        ``truncation="auto"`` those of the longest truncation it may choose (the fewest
        optimiser steps per batch)."""
        if self.truncation == AUTO:
            return BPTT(self.max_truncation).windows(seq_len)
        if self.truncation is None:
            return [Window(0, seq_len, 0, seq_len)]
        k1, k2 = self.k1, self.truncation
        loss_starts = list(range(0, seq_len, k1))
        ends = [min(s + k1, seq_len) for s in loss_starts]
        starts = [max(s - (k2 - k1), 0) for s in loss_starts]  # k2 steps back from a full k1
        carries = starts[1:] + [ends[-1]]
        return [Window(*w) for w in zip(starts, carries, loss_starts, ends, strict=True)]


def _is_truncation(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def check_adaptive(
    max_bias: float, min_truncation: int, max_truncation: int | None, adapt_every_n_steps: int
) -> None:
    """The settings of ``truncation="auto"``: ConfigError naming the first one out of range."""
    checks.positive("max_bias", max_bias)
    low = checks.integer("min_truncation", min_truncation, 1)
    checks.integer("max_truncation", max_truncation, low, optional=True)
    checks.integer("adapt_every_n_steps", adapt_every_n_steps, 1)


def shared_timesteps(windows: Sequence[Window]) -> frozenset[int]:
    """The timesteps that more than one window runs (TBPTT with update_every < truncation)."""
    return frozenset(
        t for before, after in itertools.pairwise(windows) for t in range(after.start, before.end)
    )


TraceHook = Callable[[Trace, int], None]
"""Called with the Trace of every traced run and the timestep of its first state; registers
tensor hooks on the states: a probe that reads their gradients, or a hook that changes them
(per-timestep clipping). ``run_windows`` takes the two apart, since a kernel's trace serves
the first and only a step loop's the second (``cells.paths.choose_path``)."""


def run_windows(
    model: RecurrentNet,
    batch: Batch,
    windows: list[Window],
    position_losses: Callable[[Tensor, Batch], Tensor],
    probes: Sequence[TraceHook] = (),
    hooks: Sequence[TraceHook] = (),
    backward: Callable[[Tensor], None] = Tensor.backward,
) -> Iterator[Tensor]:
    """Run ``windows`` over ``batch`` in order, backpropagating each window's loss.

    Yields each window's loss after its backward, so the caller can clip and step before the
    next window runs (TBPTT) or let the gradients add up (a gradient at fixed weights). Window
    losses are normalised by the whole batch's target count, so they add up to the task's loss.
    With ``probes`` (trace hooks that only read gradients) or ``hooks`` (trace hooks that may
    change them) the windows are traced (``Tracing.READ``, or ``Tracing.WRITE`` with any
    ``hooks``) and every probe and hook sees every Trace. A non-finite loss is yielded without
    a backward. Consecutive windows without targets only carry the state to the next window
    with targets, without a graph: they run as one.
    """
    tracing = Tracing.WRITE if hooks else Tracing.READ if probes else Tracing.NONE
    total_weight = batch.mask.sum()
    has_targets = batch.mask.any(dim=0).tolist()  # at each timestep; read once, not per window
    state: State | None = None
    carry_from: int | None = None  # where the windows without targets since the last one start
    for window in windows:
        if not any(has_targets[window.loss_start : window.end]):  # carry the state only, below
            carry_from = window.start if carry_from is None else carry_from
            continue
        if carry_from is not None:  # each carries to the next one's start: run them as one
            with torch.no_grad():
                state = model.carry(batch.inputs[:, carry_from : window.start], detach_state(state))
            carry_from = None
        outputs, carried, traces = run_window(model, batch.inputs, state, window, tracing)
        for offset, trace in traces:
            for hook in [*probes, *hooks]:
                hook(trace, offset)
        outputs = outputs[:, window.loss_start - window.start :]
        targets = batch.slice(window.loss_start, window.end)
        loss = position_losses(outputs, targets).sum() / total_weight
        if torch.isfinite(loss):
            backward(loss)
        yield loss
        state = carried


def run_window(
    model: RecurrentNet,
    inputs: Tensor,
    state: State | None,
    window: Window,
    tracing: Tracing = Tracing.NONE,
) -> tuple[Tensor, State | None, list[tuple[int, Trace]]]:
    """Run ``window`` from the detached ``state``: (outputs, state at ``carry``, traces with the
    timestep of their first state), traced as ``tracing`` asks."""
    state = detach_state(state)
    outputs, traces, carried = [], [], state
    for start, end in ((window.start, window.carry), (window.carry, window.end)):
        if end <= start:
            continue
        write, read = tracing is Tracing.WRITE, tracing is Tracing.READ
        out, state, trace = model(inputs[:, start:end], state, unrolled=write, traced=read)
        outputs.append(out)
        if trace is not None:
            traces.append((start, trace))
        if end == window.carry:
            carried = state
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0], carried, traces


def parameter_gradient(
    model: RecurrentNet,
    batch: Batch,
    windows: list[Window],
    position_losses: Callable[[Tensor, Batch], Tensor],
    probes: Sequence[TraceHook] = (),
    hooks: Sequence[TraceHook] = (),
) -> Tensor:
    """The gradient of ``windows``' losses over ``batch`` at the model's current weights (the
    windows' gradients added up, no optimiser step between them), flat, in the order of
    ``model.parameters()``; a parameter no gradient reaches counts as zeros. Leaves no
    gradient behind."""
    for _ in run_windows(model, batch, windows, position_losses, probes, hooks):
        pass
    parameters = list(model.parameters())
    flat = torch.cat(
        [p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in parameters]
    )
    model.zero_grad(set_to_none=True)
    return flat
