"""The Elman RNN: h_t = g(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), g = tanh or relu."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bpttlab import checks
from bpttlab.cells import kernels
from bpttlab.cells.base import LayerState, register
from bpttlab.cells.torch_recurrence import TorchRecurrence

NONLINEARITIES = ("tanh", "relu")


@register("rnn")
class RNNCell(TorchRecurrence):
    """Elman RNN. ``init="identity"`` sets W_hh = I and zero biases (the IRNN of Le et al. 2015,
    with ``nonlinearity="relu"``)."""

    module = nn.RNN
    step_source = "rnn_step"
    gates = 1
    inits = ("default", "orthogonal", "identity")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        t_max: int | None = None,
        init: str = "default",
        nonlinearity: str = "tanh",
        onednn: bool = False,
        kernel: str = "bpttlab",
    ):
        checks.choice("nonlinearity", nonlinearity, NONLINEARITIES)
        super().__init__(
            input_size, hidden_size, t_max, init, onednn, kernel, nonlinearity=nonlinearity
        )
        self.nonlinearity = nonlinearity

    def initialise(self, init: str, t_max: int | None) -> None:
        if init == "identity":
            self.rnn.weight_hh_l0.copy_(torch.eye(self.hidden_size))
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.zero_()

    def kernel_function(
        self, x: Tensor, state: LayerState, sinks: tuple[Tensor, ...], compiled_steps: bool
    ) -> tuple[Tensor, ...]:
        return kernels.rnn(
            x, *state, *self.weights, self.nonlinearity, *sinks, compiled_steps=compiled_steps
        )

    def step(self, x_term: Tensor, state: LayerState, w_hh: Tensor, b_hh: Tensor) -> LayerState:
        pre = F.linear(state[0], w_hh, b_hh).add_(x_term)
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre),)
