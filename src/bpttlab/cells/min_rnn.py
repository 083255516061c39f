"""What minGRU and minLSTM share (Feng et al. 2024, "Were RNNs all we needed?"): gates that
read only x_t, a positive state h_t = a_t h_{t-1} + b_t, trained by the log-space scan, and the
residual block that the paper's stacked models put around each recurrence.

Between layers the paper's models (the authors' code, after lucidrains' minGRU-pytorch) run

    x <- x + W_out minRNN(RMSNorm(x))          (the recurrence in a pre-norm residual branch)
    x <- x + MLP(RMSNorm(x))                   (MLP: Linear(H, m H), GELU, Linear(m H, H))

and read the last layer out through one more RMSNorm. RecurrentNet only stacks cells, so each
cell here is one such block (``block=true``): layer 0 first maps its input width to
``hidden_size`` with a Linear when they differ (the authors' input layer; for token inputs,
an embedding followed by a Linear is an embedding of width ``hidden_size``). Left out: the
final RMSNorm before the readout (a cell does not know that it is the last), the optional
causal convolution, dropout and the learned initial state. ``block=false`` is the bare
recurrence of the paper's equations, y_t = h_t (through W_out only when ``expansion != 1``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from bpttlab import checks
from bpttlab.cells.base import Cell, LayerState, StepStates
from bpttlab.cells.log_scan import log_space_scan

NORM_EPS = 1e-6  # RMSNorm's epsilon, fixed so that float32 and float64 runs compute the same


class MinRecurrence(Cell):
    """A minimal RNN layer: one Linear gives every gate and the candidate from x_t; subclasses
    turn them into the coefficients of h_t = a_t h_{t-1} + b_t (``coefficients``, and
    ``log_coefficients`` for the scan).

    Args:
        expansion: the state has ``int(expansion * hidden_size)`` units (the paper's expansion
            factor); read out to ``hidden_size`` by a Linear W_out.
        block: wrap the recurrence in the paper's pre-norm residual block with an MLP (see the
            module docstring); false: y_t = h_t.
        ff_mult: the block's MLP has ``ff_mult * hidden_size`` hidden units; 0 leaves the MLP out.
    """

    pre_activations: ClassVar[int]  # gate pre-activations per state unit, the candidate included

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        t_max: int | None = None,
        expansion: float = 1.0,
        block: bool = True,
        ff_mult: int = 4,
    ):
        super().__init__(input_size, hidden_size, t_max)
        checks.positive("expansion", expansion)
        self.state_size = int(expansion * hidden_size)
        if self.state_size < 1:
            raise checks.ConfigError(
                "expansion", expansion, f"a number >= 1/{hidden_size} (one state unit at least)"
            )
        self.block = checks.boolean("block", block)
        self.ff_mult = checks.integer("ff_mult", ff_mult, 0)
        width = input_size
        if block:
            self.proj_in = nn.Linear(input_size, hidden_size) if input_size != hidden_size else None
            self.norm = nn.RMSNorm(hidden_size, eps=NORM_EPS)
            width = hidden_size
        self.linear = nn.Linear(width, self.pre_activations * self.state_size)
        if block or self.state_size != hidden_size:
            self.out = nn.Linear(self.state_size, hidden_size)
        else:
            self.out = None
        if block and ff_mult > 0:
            self.ff_norm = nn.RMSNorm(hidden_size, eps=NORM_EPS)
            self.ff = nn.Sequential(
                nn.Linear(hidden_size, ff_mult * hidden_size),
                nn.GELU(),
                nn.Linear(ff_mult * hidden_size, hidden_size),
            )
        else:
            self.ff = None

    def default_state(self, like: Tensor) -> LayerState:
        return (like.new_zeros(like.shape[0], self.state_size),)

    def coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b) of every step from the pre-activations ``pre`` (B, T, k * state_size)."""
        raise NotImplementedError

    def log_coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """(log a, log b) of every step, computed stably (never as the log of a or b)."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        stream, pre = self._enter(x)
        h = log_space_scan(*self.log_coefficients(pre), state[0])
        return self._leave(stream, h), (h[:, -1],)

    def unrolled(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState, StepStates]:
        stream, pre = self._enter(x)
        a, b = self.coefficients(pre)
        (h,) = state
        steps = []
        for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):
            h = a_t * h + b_t
            steps.append(h)
        return self._leave(stream, torch.stack(steps, dim=1)), (h,), {"h": steps}

    def _enter(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(residual stream, pre-activations of every step)."""
        if not self.block:
            return x, self.linear(x)
        stream = x if self.proj_in is None else self.proj_in(x)
        return stream, self.linear(self.norm(stream))

    def _leave(self, stream: Tensor, h: Tensor) -> Tensor:
        """The layer's output from the residual stream and every state h (B, T, state_size)."""
        y = h if self.out is None else self.out(h)
        if not self.block:
            return y
        y = stream + y
        return y if self.ff is None else y + self.ff(self.ff_norm(y))
