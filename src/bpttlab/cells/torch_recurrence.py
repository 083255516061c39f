"""Cells backed by PyTorch's fused ``nn.RNN``/``nn.LSTM``/``nn.GRU`` modules and by bpttlab's own
kernels (``bpttlab.cells.kernels``), over the same parameters.

A call runs the path ``paths.choose_path`` picks from the cell's ``kernel`` and ``onednn``
settings, the device, the dtype and what the call needs of the states' gradients: bpttlab's
kernel (with sinks for a probe), torch's module (native kernel, oneDNN or cuDNN), or the step
loop (``step``), which repeats the native kernel's operations in the same order
(aten/src/ATen/native/RNN.cpp), so on CPU the two are bitwise equal, and lays its outputs out in
memory as the fused kernels do (time-major), so that the layers above run the same operations
on either.
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
from bpttlab.cells.kernels import compiled
from bpttlab.cells.paths import LayerPath, Tracing, choose_path


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
    """A one-layer torch RNN module as a Cell. Subclasses set ``module``, ``gates``, ``inits``
    and ``step_source`` and define ``step``, ``kernel_function`` and ``initialise``; each sets
    the defaults of ``kernel`` and ``onednn`` to its fastest path on CPU.

    Args:
        init: a name from the subclass's ``inits``; "orthogonal" makes every H x H gate block
            of W_hh orthogonal.
        onednn: with kernel "torch", run torch's module with oneDNN's CPU kernel (float32)
            instead of the native one where torch has one (``torch_has_onednn``: the LSTM);
            probes then run bpttlab's kernel, equal to it to rounding.
        kernel: "bpttlab" runs bpttlab's own kernel on CPU, "torch" torch's module (on a GPU
            both run cuDNN).
    """

    module: ClassVar[type[nn.RNNBase]]
    gates: ClassVar[int]
    step_source: ClassVar[str]  # the C file of its kernel's step loops (``kernels.compiled``)
    torch_has_onednn: ClassVar[bool] = False  # torch runs it with oneDNN (2.x: the LSTM only)
    inits: ClassVar[tuple[str, ...]] = ("default", "orthogonal")
    kernels: ClassVar[tuple[str, ...]] = ("torch", "bpttlab")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        t_max: int | None = None,
        init: str = "default",
        onednn: bool = False,
        kernel: str = "bpttlab",
        **module_args,
    ):
        super().__init__(input_size, hidden_size, t_max)
        self.init = checks.choice("init", init, self.inits)
        self.onednn = checks.boolean("onednn", onednn)
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

    def path(self, x: Tensor, tracing: Tracing) -> LayerPath:
        onednn = self.onednn and self.torch_has_onednn and torch.backends.mkldnn.is_available()
        return choose_path(
            self.kernel, onednn, x.device.type, x.dtype, tracing, self.steps_compiled
        )

    def steps_compiled(self) -> bool:
        """Whether its kernel's C step loops are built (building them at the first call)."""
        return compiled.library(self.step_source) is not None

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        y, final, _ = self.run(self.path(x, Tracing.NONE), x, state)
        return y, final

    def run(
        self, path: LayerPath, x: Tensor, state: LayerState, sinks: bool = False
    ) -> tuple[Tensor, LayerState, StepStates | Sinks]:
        if path.is_kernel:
            return self.run_kernel(x, state, path is LayerPath.KERNEL, sinks)
        if path not in (LayerPath.TORCH, LayerPath.ONEDNN):
            return super().run(path, x, state, sinks)
        packed = tuple(s.unsqueeze(0) for s in state)
        with onednn(enabled=path is LayerPath.ONEDNN or x.device.type != "cpu"):
            y, final = self.rnn(x, packed if len(packed) > 1 else packed[0])
        final = final if isinstance(final, tuple) else (final,)
        return y, tuple(s.squeeze(0) for s in final), {}

    def unrolled(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState, StepStates]:
        w_ih, w_hh, b_ih, b_hh = self.weights
        projected = F.linear(x.transpose(0, 1), w_ih, b_ih)  # input term of every step at once
        steps: StepStates = {name: [] for name in self.state_names}
        for x_term in projected.unbind(0):  # unbind: its backward does not pad every step
            state = self.step(x_term, state, w_hh, b_hh)
            for name, value in zip(self.state_names, state, strict=True):
                steps[name].append(value)
        # time-major in memory, as the fused kernels' outputs: a readout or a layer above then
        # runs the same operations on the outputs of either path (else rounding differs)
        return torch.stack(steps["h"]).transpose(0, 1), state, steps

    def run_kernel(
        self, x: Tensor, state: LayerState, compiled_steps: bool, sinks: bool
    ) -> tuple[Tensor, LayerState, Sinks]:
        """bpttlab's kernel, its step loops compiled or as torch operations; with ``sinks``,
        tensors whose gradient ``sinks[name]`` (T, B, state_size) is dL/d(that state at t)."""
        zero = x.new_zeros(1, 1, 1, requires_grad=True)
        shape = (x.shape[1], x.shape[0], self.hidden_size)
        traced = {name: zero.expand(shape) for name in self.state_names} if sinks else {}
        y, *final = self.kernel_function(x, state, tuple(traced.values()), compiled_steps)
        return y, tuple(final), traced

    def kernel_function(
        self, x: Tensor, state: LayerState, sinks: tuple[Tensor, ...], compiled_steps: bool
    ) -> tuple[Tensor, ...]:
        """The cell's kernel in ``bpttlab.cells.kernels``: (outputs, *final state)."""
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
