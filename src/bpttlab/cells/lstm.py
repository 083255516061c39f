"""The LSTM (Hochreiter & Schmidhuber 1997, with forget gate): gates i, f, g, o;
c_t = f c_{t-1} + i g, h_t = o tanh(c_t)."""

from __future__ import annotations

from torch import Tensor, nn

from bpttlab import checks
from bpttlab.cells import kernels
from bpttlab.cells.base import LayerState, register
from bpttlab.cells.torch_recurrence import TorchRecurrence, chrono_bias

INPUT, FORGET, CELL, OUTPUT = range(4)  # torch's gate order


@register("lstm")
class LSTMCell(TorchRecurrence):
    """LSTM. ``init="chrono"`` draws b_f = log U[1, t_max - 1] and sets b_i = -b_f, every other
    bias zero; ``forget_bias`` is added to the forget-gate bias after any init. By default torch's
    module with oneDNN on CPU: faster than bpttlab's LSTM kernel, which serves its probes."""

    module = nn.LSTM
    step_source = "lstm_step"
    torch_has_onednn = True
    gates = 4
    inits = ("default", "orthogonal", "chrono")
    state_names = ("h", "c")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        t_max: int | None = None,
        init: str = "default",
        forget_bias: float | None = None,
        onednn: bool = True,
        kernel: str = "torch",
    ):
        if forget_bias is not None and not isinstance(forget_bias, int | float):
            raise checks.ConfigError("forget_bias", forget_bias, "a number or null")
        self.forget_bias = forget_bias
        super().__init__(input_size, hidden_size, t_max, init, onednn, kernel)

    def initialise(self, init: str, t_max: int | None) -> None:
        if init == "chrono":
            bias = chrono_bias(self.hidden_size, t_max)
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.zero_()
            self.gate_bias(FORGET).copy_(bias)
            self.gate_bias(INPUT).copy_(-bias)
        if self.forget_bias is not None:
            self.gate_bias(FORGET).add_(self.forget_bias)

    def kernel_function(
        self, x: Tensor, state: LayerState, sinks: tuple[Tensor, ...], compiled_steps: bool
    ) -> tuple[Tensor, ...]:
        return kernels.lstm(x, *state, *self.weights, *sinks, compiled_steps=compiled_steps)

    def step(self, x_term: Tensor, state: LayerState, w_hh: Tensor, b_hh: Tensor) -> LayerState:
        h, c = state
        i, f, g, o = nn.functional.linear(h, w_hh, b_hh).add_(x_term).unsafe_chunk(4, 1)
        c = f.sigmoid().mul(c).add_(i.sigmoid().mul(g.tanh()))
        return o.sigmoid().mul(c.tanh()), c
