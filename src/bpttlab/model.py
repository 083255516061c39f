"""RecurrentNet: input encoder -> a stack of recurrent cells -> linear readout at every step.

The cells come from the registry in ``bpttlab.cells``. Every call runs each layer on the path
``cells.paths.choose_path`` picks for it (recorded in ``RecurrentNet.paths``); a traced call
returns a Trace of every state of every layer, so that callers can read or clip the gradient
flowing into each one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor, nn

from bpttlab import checks
from bpttlab.cells import CELLS, LayerState
from bpttlab.cells.paths import LayerPath, Tracing

State = tuple[LayerState, ...]
"""Recurrent state of the network: one LayerState per layer."""

CARRY_CHUNK = 256
"""Timesteps per call in ``RecurrentNet.carry``: a long span without targets runs chunk after
chunk, so that its transient memory (outputs, a kernel's workspace) does not grow with it."""


@dataclass
class Trace:
    """Every state of a traced run, by state name and layer.

    ``steps[name][layer][t]`` (B, state_size): the states of a layer that ran its step loop,
    each a tensor of the graph, so a hook on it may also change the gradient flowing back.
    ``sinks[(name, layer)]`` (T, B, state_size): for a layer that ran a kernel instead (its
    ``steps`` are empty), a tensor whose gradient is dL/d(state at t) for every t, read only.
    """

    steps: dict[str, list[list[Tensor]]]
    sinks: dict[tuple[str, int], Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> list[list[Tensor]]:
        return self.steps[name]

    def add(self, layer: int, path: LayerPath, states: dict[str, Tensor | list[Tensor]]) -> None:
        """Add the next layer's states: a step loop's every state, or a kernel's sinks."""
        for name, values in states.items():
            if path is LayerPath.STEP_LOOP:
                self.steps[name].append(values)
            else:
                self.steps[name].append([])
                self.sinks[(name, layer)] = values

    def states(self) -> Iterator[tuple[str, int, int, Tensor]]:
        """Yield (name, layer, t, tensor) for every state of the step loops."""
        for name, per_layer in self.steps.items():
            for layer, steps in enumerate(per_layer):
                for t, state in enumerate(steps):
                    yield name, layer, t, state


class Run(NamedTuple):
    """What RecurrentNet returns: outputs (B, T, output_size), the final state, and the Trace
    of every state (unrolled runs only, else None)."""

    outputs: Tensor
    state: State
    trace: Trace | None


def detach_state(state: State | None) -> State | None:
    """Cut the graph at ``state``: the value is carried forward, its gradient is not."""
    if state is None:
        return None
    return tuple(tuple(s.detach() for s in layer) for layer in state)


class RecurrentNet(nn.Module):
    """Encoder -> ``num_layers`` cells of kind ``kind`` -> linear readout at every timestep.

    Args:
        input_size: vocabulary size for token inputs, number of channels for real ones.
        output_size: number of classes (or regression outputs) per timestep.
        token_input: embed integer tokens (True) or project real-valued inputs (False).
        kind: a registered cell name (``bpttlab.cells.CELLS``).
        hidden_size: units per layer.
        num_layers: stacked cells.
        embedding_dim: width of the token embedding / input projection.
        t_max: the task's sequence length, for initialisations that use it.
        **cell_options: passed to every cell (its ``init`` and the like).

    ``paths`` records, per layer (``"layer0"``, ...) and per kind of call (a ``Tracing`` value:
    "untraced", "probed", "hooked"), the ``LayerPath`` the layer last ran.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        token_input: bool = True,
        kind: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        embedding_dim: int = 32,
        t_max: int | None = None,
        **cell_options,
    ):
        super().__init__()
        cell = CELLS[checks.choice("kind", kind, sorted(CELLS))]
        options = set(inspect.signature(cell).parameters) - {"input_size", "hidden_size", "t_max"}
        for key, value in cell_options.items():
            if key not in options:
                raise checks.ConfigError(
                    key, value, f"nothing for cell {kind}: it takes {', '.join(sorted(options))}"
                )
        self.kind = kind
        self.hidden_size = checks.integer("hidden_size", hidden_size, 1)
        self.num_layers = checks.integer("num_layers", num_layers, 1)
        checks.integer("embedding_dim", embedding_dim, 1)
        self.token_input = token_input
        if token_input:
            self.encoder: nn.Module = nn.Embedding(input_size, embedding_dim)
        else:
            self.encoder = nn.Linear(input_size, embedding_dim)
        widths = [embedding_dim] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(
            cell(n_in, hidden_size, t_max=t_max, **cell_options) for n_in in widths[:-1]
        )
        self.readout = nn.Linear(hidden_size, output_size)
        self.paths: dict[str, dict[str, str]] = {}

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.layers[0].state_names

    def optimizer_groups(self) -> list[dict]:
        """Parameter groups for the optimiser, in the order of ``parameters()``: the encoder,
        each cell's groups, the readout."""
        groups = [{"params": list(self.encoder.parameters())}]
        for cell in self.layers:
            groups += cell.optimizer_groups()
        return groups + [{"params": list(self.readout.parameters())}]

    def forward(
        self,
        inputs: Tensor,
        state: State | None = None,
        unrolled: bool = False,
        traced: bool = False,
    ) -> Run:
        """Run a batch of sequences.

        Args:
            inputs: (B, T) integer tokens or (B, T, C) real values.
            state: initial state (see ``State``); zeros when None.
            unrolled: return a Trace of every state whose gradients hooks may change (every
                layer runs its step loop: ``Tracing.WRITE``).
            traced: return a Trace whose gradients are only to be read (a kernel's sinks where
                the layer's path is a kernel: ``Tracing.READ``).
        """
        tracing = Tracing.WRITE if unrolled else Tracing.READ if traced else Tracing.NONE
        x, finals, trace = self.recur(inputs, state, tracing)
        return Run(self.readout(x), finals, trace)

    def carry(self, inputs: Tensor, state: State | None = None) -> State | None:
        """The state after ``inputs``, without the readout (windows with no targets in them),
        ``CARRY_CHUNK`` steps at a time; ``state`` itself after no steps."""
        for start in range(0, inputs.shape[1], CARRY_CHUNK):
            state = self.recur(inputs[:, start : start + CARRY_CHUNK], state)[1]
        return state

    def recur(
        self, inputs: Tensor, state: State | None, tracing: Tracing = Tracing.NONE
    ) -> tuple[Tensor, State, Trace | None]:
        """Encoder and cells (``forward`` without the readout): the last layer's outputs, the
        final state and the trace."""
        x = self.encoder(inputs)
        finals = []
        traced = tracing is not Tracing.NONE
        trace = Trace({name: [] for name in self.state_names}) if traced else None
        for layer, cell in enumerate(self.layers):
            start = cell.default_state(x) if state is None else state[layer]
            path = cell.path(x, tracing)
            self.paths.setdefault(f"layer{layer}", {})[tracing.value] = path.value
            x, final, states = cell.run(path, x, start, sinks=tracing is Tracing.READ)
            if trace is not None:
                trace.add(layer, path, states)
            finals.append(final)
        return x, tuple(finals), trace
