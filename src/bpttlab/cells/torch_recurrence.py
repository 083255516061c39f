"""Cells backed by PyTorch's fused ``nn.RNN``/``nn.LSTM``/``nn.GRU`` kernels.

The fused path calls the torch module; the unrolled path runs a Python step loop over the very
same parameters. On CPU the fused path runs PyTorch's native kernel rather than oneDNN's and
each subclass's ``step`` repeats that kernel's operations in the same order
(aten/src/ATen/native/RNN.cpp), so on CPU both paths give bitwise-equal outputs and gradients:
probing a training step through the unrolled path never changes the result. With
``kernel="bpttlab"`` the fused path on CPU is bpttlab's own kernel (``bpttlab.cells.kernels``)
instead, equal to the unrolled path up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bpttlab import checks
from bpttlab.cells.base import Cell, LayerState, Sinks, StepStates


@contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    """Run the block with PyTorch's oneDNN (mkldnn) CPU kernels enabled or disabled."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


class TorchRecurrence(Cell):
    """A one-layer torch RNN module as a Cell. Subclasses set ``module``, ``gates`` and
    ``inits`` and define ``step`` and ``initialise``.

    Args:
        init: a name from the subclass's ``inits``; "orthogonal" makes every H x H gate block
            of W_hh orthogonal.
        onednn: run the fused path with oneDNN's CPU kernel (faster for LSTM) instead of the
            native one; the unrolled path is then equal to it up to rounding, not bitwise.
        kernel: "torch" runs torch's module on the fused path; "bpttlab" runs bpttlab's own
            kernel on CPU (ignoring ``onednn``; on GPU the fused path stays cuDNN's).
    """

    module: ClassVar[type[nn.RNNBase]]
    gates: ClassVar[int]
    inits: ClassVar[tuple[str, ...]] = ("default", "orthogonal")
    kernels: ClassVar[tuple[str, ...]] = ("torch", "bpttlab")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        t_max: int | None = None,
        init: str = "default",
        onednn: bool = False,
        kernel: str = "torch",
        **module_args,
    ):
        super().__init__(input_size, hidden_size, t_max)
        self.init = checks.choice("init", init, self.inits)
        self.onednn = onednn
        self.kernel = checks.choice("kernel", kernel, self.kernels)
        self.rnn = self.module(input_size, hidden_size, 1, batch_first=True, **module_args)
        with torch.no_grad():
            if init == "orthogonal":
                for block in self.rnn.weight_hh_l0.split(hidden_size):
                    nn.init.orthogonal_(block)
            self.initialise(init, t_max)

    def initialise(self, init: str, t_max: int | None) -> None:
        """Apply the subclass's own initialisations (called under no_grad)."""

    @property
    def weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(W_ih, W_hh, b_ih, b_hh) in torch's gate layout."""
        rnn = self.rnn
        return rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        if self.kernel == "bpttlab" and x.device.type == "cpu":
            y, *final = self.run_kernel(x, state)
            return y, tuple(final)
        packed = tuple(s.unsqueeze(0) for s in state)
        with onednn(enabled=self.onednn or x.device.type != "cpu"):
            y, final = self.rnn(x, packed if len(packed) > 1 else packed[0])
        final = final if isinstance(final, tuple) else (final,)
        return y, tuple(s.squeeze(0) for s in final)

    def unrolled(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState, StepStates]:
        w_ih, w_hh, b_ih, b_hh = self.weights
        projected = F.linear(x.transpose(0, 1), w_ih, b_ih)  # input term of every step at once
        steps: StepStates = {name: [] for name in self.state_names}
        for x_term in projected.unbind(0):  # unbind: its backward does not pad every step
            state = self.step(x_term, state, w_hh, b_hh)
            for name, value in zip(self.state_names, state, strict=True):
                steps[name].append(value)
        return torch.stack(steps["h"], dim=1), state, steps

    def traced(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState, Sinks] | None:
        """bpttlab's kernel with sinks, on CPU when the fast path is bpttlab's kernel (then a
        traced step runs the very same operations) or oneDNN's (then it differs by rounding,
        as the unrolled path does); None for torch's native kernel, whose probes stay on the
        unrolled path, bitwise equal to it."""
        if x.device.type != "cpu" or not (self.kernel == "bpttlab" or self.onednn):
            return None
        zero = x.new_zeros(1, 1, 1, requires_grad=True)
        shape = (x.shape[1], x.shape[0], self.hidden_size)
        sinks = {name: zero.expand(shape) for name in self.state_names}
        y, *final = self.run_kernel(x, state, tuple(sinks.values()))
        return y, tuple(final), sinks

    def run_kernel(self, x: Tensor, state: LayerState, sinks: tuple[Tensor, ...] = ()):
        """bpttlab's CPU kernel for this cell: (outputs, *final state); ``sinks`` as in
        ``traced``, one per state name."""
        raise NotImplementedError

    def step(self, x_term: Tensor, state: LayerState, w_hh: Tensor, b_hh: Tensor) -> LayerState:
        """One timestep from the input term W_ih x_t + b_ih, in the native kernel's op order."""
        raise NotImplementedError

    def gate_bias(self, gate: int) -> Tensor:
        """The ih bias rows of gate number ``gate`` (torch's gate order)."""
        H = self.hidden_size
        return self.rnn.bias_ih_l0[gate * H : (gate + 1) * H]


def chrono_bias(hidden_size: int, t_max: int | None) -> Tensor:
    """log U[1, t_max - 1] per unit: gate time constants spread up to the task's length
    (Tallec & Ollivier 2018)."""
    t_max = checks.integer("t_max", t_max, 3)
    return torch.log(torch.empty(hidden_size).uniform_(1, t_max - 1))
