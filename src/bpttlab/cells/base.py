"""The contract every recurrent cell meets, and the registry that finds a cell by name.

A cell is one recurrent layer. It owns its parameters and initialisations and runs a sequence
two ways over the same weights:

- ``forward(x, state) -> (y, state)``: the fast path (a fused kernel or a parallel scan);
- ``unrolled(x, state) -> (y, state, steps)``: a step loop that also returns every state of
  every timestep, so that callers can read or clip the gradient flowing into each one;
- ``path(x, tracing)`` and ``run(path, x, state, sinks)``: which of its implementations a call
  runs (decided by ``paths.choose_path``), and running it; a cell with a choice of kernels
  overrides both, the others run ``forward`` or ``unrolled``.

``x`` is (B, T, input_size), ``y`` is (B, T, hidden_size). A state is a tuple of tensors named by
``state_names`` (("h",) or ("h", "c")); ``steps[name]`` lists that state at every timestep.
Register a new cell with ``@register("name")``; RecurrentNet, the training loop, clipping and
gradient flow need nothing else.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from bpttlab.cells.paths import LayerPath, Tracing, choose_path

LayerState = tuple[Tensor, ...]
"""The state of one layer: one (B, state_size) tensor per name in ``Cell.state_names``."""

StepStates = dict[str, list[Tensor]]
"""Every state of an unrolled run of one layer: ``steps[name][t]``."""

Sinks = dict[str, Tensor]
"""Per state name, a (T, B, state_size) tensor that the forward does not read and whose gradient
is the backward's dL/d(state at t) for every t: a hook on it reads them without a step loop."""

CELLS: dict[str, type[Cell]] = {}


def register(name: str):
    """Class decorator: make a Cell subclass available as ``cell=<name>``."""

    def add(cls: type[Cell]) -> type[Cell]:
        CELLS[name] = cls
        cls.name = name
        return cls

    return add


class Cell(nn.Module):
    """One recurrent layer (see the module docstring for the contract).

    Args:
        input_size: width of the layer's input at each timestep.
        hidden_size: width of its output (and of its state, unless a cell says otherwise).
        t_max: the longest dependency the task can ask for (its sequence length), for
            initialisations that use it; cells that do not need it ignore it.
    """

    name: ClassVar[str]
    state_names: ClassVar[tuple[str, ...]] = ("h",)

    def __init__(self, input_size: int, hidden_size: int, t_max: int | None = None):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size

    def default_state(self, like: Tensor) -> LayerState:
        """Zero state for a batch of inputs ``like`` (B, T, input_size)."""
        zeros = like.new_zeros(like.shape[0], self.hidden_size)
        return tuple(zeros.clone() for _ in self.state_names)

    def optimizer_groups(self) -> list[dict]:
        """Parameter groups for the optimiser; a cell whose method needs its own learning rate
        for some parameters returns a group with ``lr`` set for them."""
        return [{"params": list(self.parameters())}]

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        raise NotImplementedError

    def unrolled(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState, StepStates]:
        raise NotImplementedError

    def path(self, x: Tensor, tracing: Tracing) -> LayerPath:
        """The path this layer runs ``x`` on when a call needs ``tracing`` (``choose_path``)."""
        return choose_path(None, False, x.device.type, x.dtype, tracing, lambda: False)

    def run(
        self, path: LayerPath, x: Tensor, state: LayerState, sinks: bool = False
    ) -> tuple[Tensor, LayerState, StepStates | Sinks]:
        """Run ``path``: ``(y, state, states)``, where ``states`` holds every state of a step loop
        (``StepStates``), or with ``sinks`` on a kernel path its ``Sinks``, else nothing."""
        if path is LayerPath.STEP_LOOP:
            return self.unrolled(x, state)
        if path is not LayerPath.FAST:
            raise ValueError(f"{type(self).__name__} has no path {path.value!r}")
        y, final = self(x, state)
        return y, final, {}
