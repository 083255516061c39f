"""The GRU (Cho et al. 2014), torch's form: gates r, z, n;
n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h_t = (1 - z) n + z h_{t-1}."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bpttlab.cells import kernels
from bpttlab.cells.base import LayerState, register
from bpttlab.cells.torch_recurrence import TorchRecurrence, chrono_bias

RESET, UPDATE, NEW = range(3)  # torch's gate order


@register("gru")
class GRUCell(TorchRecurrence):
    """GRU. ``init="chrono"`` draws the update-gate bias b_z = log U[1, t_max - 1] (z keeps the
    old state, the role of the LSTM's forget gate), every other bias zero."""

    module = nn.GRU
    step_source = "gru_step"
    gates = 3
    inits = ("default", "orthogonal", "chrono")

    def initialise(self, init: str, t_max: int | None) -> None:
        if init == "chrono":
            bias = chrono_bias(self.hidden_size, t_max)
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.zero_()
            self.gate_bias(UPDATE).copy_(bias)

    def kernel_function(
        self, x: Tensor, state: LayerState, sinks: tuple[Tensor, ...], compiled_steps: bool
    ) -> tuple[Tensor, ...]:
        return kernels.gru(x, *state, *self.weights, *sinks, compiled_steps=compiled_steps)

    def step(self, x_term: Tensor, state: LayerState, w_hh: Tensor, b_hh: Tensor) -> LayerState:
        (h,) = state
        x_r, x_z, x_n = x_term.unsafe_chunk(3, 1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).unsafe_chunk(3, 1)
        r = h_r.add_(x_r).sigmoid_()
        z = h_z.add_(x_z).sigmoid_()
        n = x_n.add(h_n.mul_(r)).tanh_()
        return ((h - n).mul_(z).add_(n),)
